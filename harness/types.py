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
    Every value must be plain JSON (str, int, float, bool, None, lists, dicts): the store writes it as is,
    after converting NumPy scalars and arrays.
    """

    label: str | None = None
    fields: dict[str, Any] | None = None
    scores: dict[str, float] | None = None
    raw: str | None = None
    truncated: bool = False  # the input was cut to fit the model: the table counts these
    generated_tokens: int | None = None  # tokens a generating approach wrote for this answer (tokens/s)
    prompt_tokens: int | None = None  # tokens of the prompt, where a server reports its usage
    error: str | None = None  # no answer could be had (a request that failed after its retries): counted, wrong


@dataclass(frozen=True)
class Prompt:
    """How a prompted approach asks. Templates use ``{text}`` (the example) and ``{options}`` (the lettered
    option list of a classification task, or the field names of an extraction task).

    ``system`` and ``user`` are the messages of a chat model; ``raw`` is the whole prompt for a model without
    a chat template (None: the system and user texts, joined by a blank line).
    """

    user: str
    system: str | None = None
    raw: str | None = None

    def plain(self) -> str:
        """The template for a model without a chat template."""
        if self.raw is not None:
            return self.raw
        return f"{self.system}\n\n{self.user}" if self.system else self.user


@dataclass(frozen=True)
class Task:
    """What is asked: the task type, its label names (classification) or field names (extraction), and the
    prompt (the spec's, with this approach's overrides applied)."""

    type: TaskType
    labels: tuple[str, ...] = ()
    fields: tuple[str, ...] = ()
    prompt: Prompt | None = None
    option_labels: tuple[str, ...] = ()
    # Extraction: compare field values after Unicode NFKC and trimming (harness.metrics.normalise).
    normalize: bool = True


@dataclass
class Artifact:
    """What train returns; load and predict receive it.

    The core keeps the typed fields in the run's ``artifact.json`` and serves a stored run by rebuilding
    the Artifact from them with an empty ``state``: load and predict must work from ``path`` alone.
    Training and measuring run in separate processes, so they always do.

    - ``path``: the trained model, a file or directory inside ``workdir`` (None when nothing was trained,
      as for a zero-shot approach, which then loads its base model from its settings).
    - ``state``: in-memory objects (a loaded model, a tokenizer) so that repeated predict calls load nothing
      twice. Never recorded.
    - ``train_samples``: examples processed by the training loop (examples x epochs): samples/s comes
      from it and the loop's own time.
    - ``parameters``, ``model`` (the base model's name), ``dtype`` and ``device`` (of training).
    - ``notes``: lines for the table's notes ("articles cut in 12 of 5,040 training prompts").
    - ``info``: anything else worth recording (plain JSON values): best checkpoint, final loss, ...
    """

    path: Path | None = None
    state: dict[str, Any] = field(default_factory=dict, repr=False)
    train_samples: float = 0
    parameters: int | None = None
    model: str = ""
    dtype: str = ""
    device: str = ""
    notes: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Serving:
    """What ``harness_load`` reports about the model it made ready to serve.

    ``batch_size`` is the batch predict uses when the settings ask for none (``predict_batch_size: 0``):
    the core then asks for exactly this batch, and the table shows it.
    """

    device: str
    dtype: str = ""
    batch_size: int | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class ApproachInfo:
    """What an approach declares about itself through ``harness_describe``.

    - ``settings``: every key a spec or ``--set`` may set, with its default (whose type is enforced).
    - ``predict_settings``: the settings that change only how predict runs (batch size, scoring); changing
      them measures the stored trained model again instead of training a new one.
    - ``choices``: the allowed values of enumerated settings, checked before anything runs.
    - ``serves``: for an engine, the approach whose trained model it serves (``bert-onnx`` serves ``bert``).
      An engine has no train hook: the core trains the served approach once (or reuses its stored
      training) and the engine loads and predicts from that artifact. All its own settings are predict settings.
    - ``limits``: the range of numeric settings, as ``(low, high)`` with None for no bound and a bound
      written ``(">", 0)`` when it is excluded: ``{"max_new_tokens": (1, None), "temperature": ((">", 0), 2)}``.
      The Trainer's settings (batch sizes >= 1, learning_rate > 0, ...), ``max_length`` and
      ``predict_batch_size`` get the ranges every approach gives them (``harness.settings.shared_ranges``),
      and no float setting may be NaN or infinite.
    - ``model_settings``: the settings that name a model (a hub id, a local directory or file). A run's
      training identity holds each one's resolved hub revision or the content hash of the local files.
    """

    task_types: tuple[TaskType, ...]
    settings: dict[str, Any]
    description: str = ""
    predict_settings: tuple[str, ...] = ()
    choices: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    serves: str | None = None
    model_settings: tuple[str, ...] = ("model", "tokenizer")
    limits: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    secret_settings: tuple[str, ...] = ()  # accepted, never written to a record, a log or an error message


@dataclass
class RunRecord:
    """Everything measured about one approach on one spec: what the table and the JSON show.

    ``status`` is ``running`` while it runs, then ``ok``, ``failed`` (``error`` says why) or ``reused``
    (the whole row taken from the store: the same training and measurement identities). A reused row keeps the
    stored run's ``run_id`` and shows the current row's ``approach`` (its name in the table) and ``seed``; the
    stored ``record.json`` keeps the name of the row that made it (harness.store.comparisons.shown_as).

    ``training``: ``key`` and ``identity`` (what was trained: harness.identity), ``trained_in`` (the run
    whose ``artifact/`` holds the model: this run, or the earlier run whose training it reused) and
    ``reason``: why this run trained (``--rerun``, what changed in the training identity since the newest model
    this row trained with this seed, or ``no model of this row stored yet``: harness.run_identity.training_reason), or,
    where it measured a model trained earlier, ``re-measured`` and what changed in the measurement.
    ``measurement``: ``key`` and ``identity`` (how it was measured). ``serving``: what ``harness_load`` reported.
    """

    run_id: str
    approach: str
    spec: str
    task_type: str
    status: str = "running"
    error: str | None = None
    seed: int = 0  # the training seed: Python, NumPy and torch are seeded with it, and settings["seed"] is it
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
    training: dict[str, Any] = field(default_factory=dict)
    measurement: dict[str, Any] = field(default_factory=dict)
    serving: dict[str, Any] = field(default_factory=dict)
    # What the plan estimated before the run (harness.estimate): its fate, steps, train and serve seconds, peak RSS
    # and where the figures came from, kept beside what was measured.
    estimate: dict[str, Any] = field(default_factory=dict)
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
    # harness.stats_analysis.analyse: intervals, seed spreads, pairwise tests; computed from the stored predictions
    # whenever the comparison is shown (not stored: it follows the scorers and statistics installed now).
    statistics: dict[str, Any] = field(default_factory=dict)


@dataclass
class Parity:
    """What an approach's parity check found (:meth:`harness.approach.Approach.parity`): how often what
    serves gave the same answer as the model it was derived from, and the largest difference in their
    outputs. ``ok`` False fails the row with ``message``."""

    against: str  # what it was compared with, in words: "the unmerged adapter", "PyTorch"
    n: int
    agreement: float  # the share of the n examples with the same answer
    max_abs_diff: float | None = None  # the largest |difference| of the compared logits or probabilities
    ok: bool = True
    message: str = ""
