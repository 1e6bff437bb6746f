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

import ast
import importlib.util
import inspect
import math
import random
import sys
from pathlib import Path
from typing import Any, Iterator

from harness.approach import Approach
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


TINY_EXTRACTION = Task(type="extraction", fields=("name", "city"))
_NAMES = "Ana Ben Chen Dara Emil Farah Goran Hana Ivo Jun".split()
_CITIES = "Oslo Lima Perth Kyiv Quito Hanoi Dakar Riga Bern Suva".split()


def tiny_extraction(n_train: int = 48, n_test: int = 24, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """Short shipping notes naming a recipient and a city, each note's fields the gold record, seeded."""
    rng = random.Random(seed)
    shapes = ["ship to {name} in {city}", "{name}, {city}: handle with care", "deliver to {city} for {name} today"]

    def make(n: int, prefix: str) -> list[Example]:
        examples = []
        for i in range(n):
            fields = {"name": rng.choice(_NAMES), "city": rng.choice(_CITIES)}
            examples.append(Example(id=f"{prefix}{i}", text=rng.choice(shapes).format(**fields), fields=fields))
        return examples

    return make(n_train, "train-"), make(n_test, "test-")


class ConformanceError(AssertionError):
    """A plugin broke a contract of the hooks; the message says which."""


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise ConformanceError(message)


def _same(a: list[Prediction], b: list[Prediction], tolerance: float = 1e-4) -> bool:
    """The same answers: labels and fields equal, each score within ``tolerance`` (batching and packing
    change float rounding, never an answer)."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        x_scores, y_scores = x.scores or {}, y.scores or {}
        if x.label != y.label or x.fields != y.fields or set(x_scores) != set(y_scores):
            return False
        if any(abs(x_scores[k] - y_scores[k]) > tolerance for k in x_scores):
            return False
    return True


def check_plugin(
    plugin: Any,
    *,
    tmp_path: Path,
    name: str = "candidate",
    settings: dict[str, Any] | None = None,
    task: Task = TINY_TASK,
    train: list[Example] | None = None,
    test: list[Example] | None = None,
    serves: Any = None,
    launcher: str = "process",
) -> RunRecord:
    """Check ``plugin`` (a module with a file that registers approaches, or one Approach, or a hook-style
    plugin) against everything the core and ``harness bench`` (``--run``, ``--random-weights``) do with an
    approach. ``name`` says
    which approach to check where the module registers several.

    Checks: describe returns an ApproachInfo for the task's type whose predict settings and choices name
    declared settings; ``settings`` pass the same type checks as a spec and ``--set``; the whole run goes
    through the real runner, each unit in its own process, and the store (train returns an Artifact whose
    fields are plain JSON; predictions are stored); the stored run is served again from disk as ``bench
    --run`` serves it (empty state, ``harness_load``, then predict): the same answers (labels, extracted
    fields, and every score within 1e-4), one Prediction per example in order (also for reversed input and
    one at a time), labels from the task, scores that are probabilities, fields that are a record of the
    task's fields (an extraction task, ``task=TINY_EXTRACTION``, gets shipping notes to read); changing only
    the latency options re-measures the stored model without training; an edit of each helper that train
    calls through ``self`` or by name in its own file (made in a copy of the file) changes the training
    identity, so compare trains again; ``harness bench --random-weights`` works:
    train with no examples and ``random_weights: True, num_train_epochs: 0`` (:func:`harness.bench.untrained`,
    what bench calls), then predict; the report renders the row. An engine (``ApproachInfo.serves``) is
    checked over ``serves``, the plugin it serves. Returns the first run's record, whose ``metrics`` you can
    hold to your own bar. Raises :class:`ConformanceError` on the first broken contract.
    """
    from dataclasses import asdict, replace

    from harness.bench import UNTRAINED, untrained
    from harness.data_load import Datasets
    from harness.errors import UserError
    from harness.load_cache import load_for_serving
    from harness.planning import CompareOptions, plan_settings
    from harness.plugins import load_plugins
    from harness.progress import SILENT
    from harness.report_terminal import comparison_table
    from harness.runner import run_approach
    from harness.spec import Spec
    from harness.store import Store
    from harness.store.records import jsonable, load_artifact, read_predictions
    from harness.types import Comparison
    from harness.units import without_answers

    if train is None or test is None:
        train, test = tiny_extraction() if task.type == "extraction" else tiny_dataset()
    plugins = load_plugins(entry_points=False)
    plugins.register(plugin, "kit-candidate" if not isinstance(plugin, Approach) else name)
    if isinstance(plugin, Approach):
        name = plugin.name
    elif name not in plugins.approaches():
        mine = [n for n, owner in plugins.registered_by.items() if owner.startswith("kit-candidate")] or [
            "kit-candidate"
        ]
        _expect(len(mine) == 1, f"the plugin registers {', '.join(sorted(mine))}: pass name= to say which to check")
        name = mine[0]

    info = plugins.approach(name).describe()
    _expect(isinstance(info, ApproachInfo), f"harness_describe must return ApproachInfo, got {type(info).__name__}")
    _expect(task.type in info.task_types, f"plugin declares task types {info.task_types}, not {task.type!r}")
    for field_name in ("predict_settings", "choices", "model_settings", "limits"):
        stray = (
            set(getattr(info, field_name))
            - set(info.settings)
            - ({"model", "tokenizer"} if field_name == "model_settings" else set())
        )
        _expect(not stray, f"ApproachInfo.{field_name} names {sorted(stray)}, which are not among its settings")
    for key, allowed in info.choices.items():
        _expect(
            info.settings[key] in allowed,
            f"the default {key}={info.settings[key]!r} is not one of its choices {allowed}",
        )
    if info.serves and info.serves not in plugins.approaches():
        _expect(serves is not None, f"plugin serves {info.serves!r}: pass that plugin as serves=")
        plugins.register(serves, info.serves)

    cut = max(1, len(train) // 8)
    train, validation = train[:-cut], train[-cut:]
    spec = Spec.model_validate(
        {
            "name": "conformance",
            "task": {"type": task.type, "labels": list(task.labels), "fields": list(task.fields)},
            "dataset": {"train": "train.jsonl", "test": "test.jsonl"},
            "plugins": {name: settings or {}},
        }
    )
    try:
        plan = plan_settings(plugins, spec, [name], {})[name]
    except UserError as exc:
        raise ConformanceError(f"settings rejected as a spec would reject them: {exc}") from None
    data = Datasets(train=train, validation=validation, test=test, validation_source="train")
    options = CompareOptions(latency_samples=min(8, len(test)), warmup_examples=4, rerun=True, launcher=launcher)
    store = Store(tmp_path / "conformance-store")
    record = run_approach(plugins, spec, data, plan, store, options)
    detail = store.run_dir(record.run_id) / "error.txt"
    _expect(
        record.status == "ok",
        f"the runner failed the plugin: {record.error}" + (f"\n{detail.read_text()}" if detail.is_file() else ""),
    )
    headline = "accuracy" if task.type == "classification" else "exact_match"
    _expect(0.0 <= record.metrics.get(headline, -1) <= 1.0, f"score produced no {headline} in [0, 1]")
    stored = read_predictions(store.run_dir(record.run_id) / "predictions.jsonl")

    # Served again as `harness bench --run` serves a stored run: from disk, empty state.
    artifact = load_artifact(store.artifact_file(record.training["trained_in"]))
    call_settings = {**plan.settings, "random_weights": False}
    try:
        _, call_settings = load_for_serving(plugins, name, task, artifact, call_settings)
    except TypeError as exc:
        raise ConformanceError(str(exc)) from None

    def predict(
        examples: list[Example], artifact: Any = artifact, settings: dict[str, Any] = call_settings
    ) -> list[Prediction]:
        result = plugins.configured(name, settings, progress=SILENT).predict(task, artifact, examples)
        _expect(isinstance(result, list), f"harness_predict must return a list, got {type(result).__name__}")
        _expect(
            len(result) == len(examples),
            f"harness_predict returned {len(result)} predictions for {len(examples)} examples",
        )
        for i, prediction in enumerate(result):
            _expect(
                isinstance(prediction, Prediction),
                f"harness_predict returned a {type(prediction).__name__}, not a Prediction",
            )
            try:
                jsonable(asdict(prediction), f"prediction {i}")
            except TypeError as exc:
                raise ConformanceError(str(exc)) from None
        return result

    test = without_answers(test)
    forward = predict(test)
    _expect(
        _same(forward, stored),
        "the stored run served from disk answers differently from the run that stored it"
        " (labels, fields, or scores beyond 1e-4)",
    )
    for prediction in forward:
        if task.type == "extraction":
            _expect(
                prediction.fields is None
                or (
                    set(prediction.fields) <= set(task.fields)
                    and all(isinstance(v, str) for v in prediction.fields.values())
                ),
                f"fields {prediction.fields!r} are not a record of the task's fields {task.fields} with text values",
            )
            continue
        _expect(
            prediction.label is None or prediction.label in task.labels,
            f"label {prediction.label!r} is not one of {task.labels}",
        )
        for label, score in (prediction.scores or {}).items():
            _expect(label in task.labels, f"scores name {label!r}, which is not a label")
            _expect(
                0.0 <= score <= 1.0 and not math.isnan(score), f"score {score!r} for {label!r} is not a probability"
            )
    backward = predict(list(reversed(test)))
    _expect(
        _same(list(reversed(backward)), forward),
        "predictions depend on the order of the examples: batching must restore the input order",
    )
    singles = [predict([example])[0] for example in test[:8]]
    _expect(_same(singles, forward[:8]), "one-at-a-time predictions differ from batched predictions")

    # A measurement-only change measures the stored model again, in a fresh process, without training.
    again = run_approach(
        plugins, spec, data, plan, store, replace(options, rerun=False, latency_samples=options.latency_samples + 1)
    )
    _expect(again.status == "ok", f"measuring the stored model again failed: {again.error}")
    _expect(
        again.training.get("trained_in") == record.run_id, "a latency-only change trained again instead of re-measuring"
    )
    # An edit of a helper that train calls trains again: it changes the training identity.
    for helper, before, after in _edited_helpers(plugins.code_roots(plan.trainer, ("train",)), tmp_path / "edited"):
        _expect(
            before != after,
            f"editing {helper}, which train calls, leaves the training identity as it was: "
            "compare would reuse the model trained before the edit (harness.identity follows the functions and "
            "methods train names; a wrapper without functools.wraps hides what it wraps)",
        )

    # `harness bench --random-weights` times an untrained model: train with no examples, then predict.
    scratch = tmp_path / "random-weights"
    scratch.mkdir(exist_ok=True)
    try:
        built, built_settings = untrained(plugins, plan, task, scratch)
        _expect(isinstance(built, Artifact), f"harness_train must return an Artifact, got {type(built).__name__}")
        predict(test[:4], built, built_settings)
    except ConformanceError:
        raise
    except Exception as exc:
        message = (
            f"`harness bench --random-weights` failed: train gets no examples and {UNTRAINED} in its settings "
            f"(context.random_weights), and must build an untrained model that predicts: {type(exc).__name__}: {exc}"
        )
        raise ConformanceError(message.splitlines()[0]) from exc
    from io import StringIO

    from rich.console import Console

    Console(file=StringIO(), width=200).print(
        comparison_table(Comparison("conformance", "conformance", record.created, [record, again]))
    )
    return record


def _edited_helpers(roots: list[Any], folder: Path) -> Iterator[tuple[str, dict[str, str], dict[str, str]]]:
    """For each helper that train (``roots``: its function, as the runner fingerprints it) calls through
    ``self`` or by name, defined in train's own file (outside harness): its name, the training code of train,
    and that of train in a copy of the file with a statement added to the helper's body."""
    from harness import identity

    for root in roots:
        train = inspect.unwrap(getattr(root, "__func__", root))
        module, qualname = train.__module__, train.__qualname__
        try:
            path = Path(inspect.getsourcefile(train) or "")
            source = path.read_text(encoding="utf-8")
        except (OSError, TypeError):
            continue
        if module.split(".")[0] == "harness" or "<locals>" in qualname:
            continue
        tree = ast.parse(source)
        node = _find(tree, qualname)
        owner = identity.defining_class(train)
        classes = {cls.__name__ for cls in (owner.__mro__ if owner else ()) if cls.__module__ == module}
        if node is None:
            continue
        parameters = node.args.posonlyargs + node.args.args
        self_name = parameters[0].arg if owner and parameters else None
        called = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
        through_self = {
            n.attr
            for n in ast.walk(node)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == self_name
        }
        helpers = [(f.name, f) for f in tree.body if isinstance(f, ast.FunctionDef) and f.name in called]
        helpers += [
            (f"{c.name}.{f.name}", f)
            for c in tree.body
            if isinstance(c, ast.ClassDef) and c.name in classes
            for f in c.body
            if isinstance(f, ast.FunctionDef) and f.name in through_self and f is not node
        ]
        before = identity.training_code([train]) if helpers else {}
        for i, (helper, definition) in enumerate(helpers):
            first = definition.body[0]
            if first.lineno == definition.lineno:
                continue  # a one-line def: no line to add
            lines = source.splitlines(keepends=True)
            lines.insert(first.lineno - 1, " " * first.col_offset + "pass\n")
            copy = folder / str(i) / path.name
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_text("".join(lines), encoding="utf-8")
            name = f"{module}_kit_edited_{i}"  # beside the original, so that its relative imports resolve
            spec = importlib.util.spec_from_file_location(name, copy)
            assert spec is not None and spec.loader is not None  # a .py file's path always gets both
            edited = importlib.util.module_from_spec(spec)
            sys.modules[name] = edited
            try:
                spec.loader.exec_module(edited)
                after = identity.training_code([_find(edited, qualname)])
            finally:
                sys.modules.pop(name, None)
            yield f"{module}.{helper}", before, {k.replace(f"{name}.", f"{module}.", 1): v for k, v in after.items()}


def _find(scope: Any, qualname: str) -> Any:
    """What ``qualname`` names in a module object, or its definition in a module's syntax tree."""
    for part in qualname.split("."):
        if isinstance(scope, (ast.Module, ast.ClassDef, ast.FunctionDef)):  # a syntax tree: a module, class or function
            scope = next(
                (n for n in scope.body if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and n.name == part), None
            )
        else:
            scope = getattr(scope, part, None)
        if scope is None:
            return None
    return scope
