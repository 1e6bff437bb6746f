"""A conformance kit for plugin authors: run your approach through train, predict and score on a tiny
dataset and check the contracts the core relies on.

In your plugin's tests::

    import my_plugin
    from harness.testing import check_plugin

    def test_conformance(tmp_path):
        record = check_plugin(my_plugin, tmp_path=tmp_path)
        assert record.metrics["accuracy"] > 0.5   # your own quality bar
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

from harness import hookimpl
from harness.types import ApproachInfo, Artifact, Example, Prediction, RunRecord, Task

TINY_TASK = Task(type="classification", labels=("sport", "weather", "food"))

_WORDS = {
    "sport": "match goal team score league coach player win season final",
    "weather": "rain storm sunny wind cloud forecast cold snow heat temperature",
    "food": "recipe bread cheese soup dinner taste kitchen bake spice salad",
}
_FILLER = "the a today people said new report after before local".split()


def tiny_dataset(n_train: int = 48, n_test: int = 24, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """Short English sentences for three easily separable labels, balanced, seeded."""
    rng = random.Random(seed)

    def make(n: int, prefix: str) -> list[Example]:
        examples = []
        for i in range(n):
            label = TINY_TASK.labels[i % len(TINY_TASK.labels)]
            words = rng.sample(_WORDS[label].split(), 3) + rng.sample(_FILLER, rng.randint(1, 6))
            rng.shuffle(words)
            examples.append(Example(id=f"{prefix}{i}", text=" ".join(words), label=label))
        return examples

    return make(n_train, "train-"), make(n_test, "test-")


class ConformanceError(AssertionError):
    """A plugin broke a contract of the hooks; the message says which."""


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise ConformanceError(message)


def check_plugin(
    plugin: Any,
    *,
    tmp_path: Path,
    name: str = "candidate",
    settings: dict[str, Any] | None = None,
    task: Task = TINY_TASK,
    train: list[Example] | None = None,
    test: list[Example] | None = None,
) -> RunRecord:
    """Check ``plugin`` (a module or object with hook implementations) against the hook contracts.

    Checks: describe returns an ApproachInfo for the task's type; settings overrides are known keys;
    train returns an Artifact; predict returns one Prediction per example, in order (also for reversed
    input and for one example at a time), with labels from the task and scores in [0, 1]; and the
    whole run goes through the real runner and store. Returns the run's record, whose ``metrics``
    you can hold to your own bar. Raises :class:`ConformanceError` on the first broken contract.
    """
    from harness.data import Datasets
    from harness.plugins import load_plugins
    from harness.progress import SILENT
    from harness.runner import CompareOptions, run_approach, without_answers
    from harness.spec import Spec
    from harness.store import Store

    if train is None or test is None:
        train, test = tiny_dataset()
    plugins = load_plugins(entry_points=False)
    plugins.register(plugin, name)

    info = plugins.call(name, "harness_describe")
    _expect(isinstance(info, ApproachInfo), f"harness_describe must return ApproachInfo, got {type(info).__name__}")
    _expect(task.type in info.task_types, f"plugin declares task types {info.task_types}, not {task.type!r}")
    unknown = set(settings or {}) - set(info.settings)
    _expect(not unknown, f"settings {sorted(unknown)} are not among the plugin's declared settings")
    merged = {**info.settings, **(settings or {}), "random_weights": False}

    cut = max(1, len(train) // 8)
    train, validation = train[:-cut], train[-cut:]

    class Capture:
        """Keeps the artifact the runner's train call returns, so the plugin is trained only once."""

        def __init__(self) -> None:
            self.artifacts: list[Any] = []

        @hookimpl(wrapper=True)
        def harness_train(self):  # type: ignore[no-untyped-def]
            artifact = yield
            self.artifacts.append(artifact)
            return artifact

    capture = Capture()
    plugins.pm.register(capture, name="conformance-capture")
    spec = Spec.model_validate(
        {"name": "conformance", "task": {"type": task.type, "labels": list(task.labels), "fields": list(task.fields)},
         "dataset": {"train": "train.jsonl", "test": "test.jsonl"}, "plugins": {name: settings or {}}}
    )
    data = Datasets(train=train, validation=validation, test=test, validation_source="train")
    options = CompareOptions(latency_samples=min(8, len(test)), warmup_examples=4, rerun=True)
    store = Store(tmp_path / "conformance-store")
    record = run_approach(plugins, spec, data, name, {**info.settings, **(settings or {})}, store, options)
    _expect(record.status == "ok", f"the runner failed the plugin: {record.error}")
    artifact = capture.artifacts[0] if capture.artifacts else None
    _expect(isinstance(artifact, Artifact), f"harness_train must return an Artifact, got {type(artifact).__name__}")
    _expect(0.0 <= record.metrics.get("accuracy", -1) <= 1.0, "score produced no accuracy in [0, 1]")

    def predict(examples: list[Example]) -> list[Prediction]:
        result = plugins.call(
            name, "harness_predict", task=task, artifact=artifact, examples=examples, settings=merged, progress=SILENT
        )
        _expect(isinstance(result, list), f"harness_predict must return a list, got {type(result).__name__}")
        _expect(len(result) == len(examples), f"harness_predict returned {len(result)} predictions for {len(examples)} examples")
        for prediction in result:
            _expect(isinstance(prediction, Prediction), f"harness_predict returned a {type(prediction).__name__}, not a Prediction")
        return result

    test = without_answers(test)
    forward = predict(test)
    for prediction in forward:
        _expect(prediction.label is None or prediction.label in task.labels, f"label {prediction.label!r} is not one of {task.labels}")
        for label, score in (prediction.scores or {}).items():
            _expect(label in task.labels, f"scores name {label!r}, which is not a label")
            _expect(0.0 <= score <= 1.0 and not math.isnan(score), f"score {score!r} for {label!r} is not a probability")
    backward = predict(list(reversed(test)))
    _expect(
        [p.label for p in reversed(backward)] == [p.label for p in forward],
        "predictions depend on the order of the examples: batching must restore the input order",
    )
    singles = [predict([example])[0].label for example in test[:8]]
    _expect(singles == [p.label for p in forward[:8]], "one-at-a-time predictions differ from batched predictions")
    return record
