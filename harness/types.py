"""The contract between the core and every approach: what goes into the hooks and what comes out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

TaskType = Literal["classification", "extraction"]


@dataclass(frozen=True)
class Example:
    """One input, identical for every approach in a comparison.

    ``label`` is the gold label name for classification; ``fields`` the gold record for extraction.
    """

    id: str
    text: str
    label: str | None = None
    fields: dict[str, str] | None = None


@dataclass
class Prediction:
    """One approach's answer for one example.

    ``label`` is None when the approach produced no valid label (counted as wrong).
    ``scores`` maps label names to probabilities where the approach has them.
    ``raw`` is the generated text, for approaches that generate.
    """

    label: str | None = None
    fields: dict[str, str] | None = None
    scores: dict[str, float] | None = None
    raw: str | None = None


@dataclass(frozen=True)
class Task:
    """What is asked: the task type, its label names (classification) or field names (extraction), and prompts."""

    type: TaskType
    labels: tuple[str, ...] = ()
    fields: tuple[str, ...] = ()
    prompt: str | None = None
    option_labels: tuple[str, ...] = ()


@dataclass
class Artifact:
    """What train returns and predict receives.

    ``path`` is where the trained model lives on disk (None for zero-shot approaches).
    ``state`` holds in-memory objects (a loaded model, a tokenizer) so that repeated predict calls,
    as the latency measurement makes, load nothing twice. ``info`` is what the approach wants recorded:
    ``parameters`` (int), ``model`` (str), ``dtype`` (str), ``device`` (str), ``notes`` (list of str).
    """

    path: Path | None = None
    state: dict[str, Any] = field(default_factory=dict, repr=False)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class ApproachInfo:
    """What an approach declares about itself through ``harness_describe``."""

    task_types: tuple[TaskType, ...]
    settings: dict[str, Any]
    description: str = ""


@dataclass
class RunRecord:
    """Everything measured about one approach on one spec: what the table and the JSON show.

    ``status`` is ``running`` while it runs, then ``ok``, ``failed`` (``error`` says why) or ``reused``
    (taken from the store: same approach, settings, data and code).
    """

    run_id: str
    approach: str
    spec: str
    task_type: str
    status: str = "running"
    error: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    random_weights: bool = False
    train_hash: str = ""
    test_hash: str = ""
    n_train: int = 0
    n_validation: int = 0
    n_test: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    speed: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    reuse_key: str = ""
    created: str = ""
    train_log: list[dict[str, Any]] = field(default_factory=list, repr=False)


@dataclass
class Comparison:
    """One ``harness compare`` invocation: its runs, in the order the approaches were asked for."""

    comparison_id: str
    spec: str
    created: str
    runs: list[RunRecord]
    metrics: list[str] = field(default_factory=lambda: ["f1_weighted", "accuracy"])
