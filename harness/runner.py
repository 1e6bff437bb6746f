"""The comparison runner: for each approach, train -> predict -> score, measured like a benchmark."""

from __future__ import annotations

import hashlib
import json
import secrets
import sys
import traceback
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

from harness import __version__, measure
from harness.data import Datasets, dataset_hash
from harness.errors import UserError
from harness.plugins import Plugins
from harness.progress import SILENT, RunProgress
from harness.spec import Spec, resolve_settings
from harness.store import Store
from harness.types import Artifact, Comparison, Example, Prediction, RunRecord, Task


@dataclass
class CompareOptions:
    random_weights: bool = False
    rerun: bool = False
    latency_samples: int = 100
    warmup_examples: int = 64


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_id(prefix: str) -> str:
    return f"{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}-{prefix}-{secrets.token_hex(3)}"


def plan_settings(
    plugins: Plugins, spec: Spec, approaches: list[str], overrides: dict[str, dict[str, str]]
) -> dict[str, dict[str, Any]]:
    """Validate every selected approach's settings and task support before anything runs."""
    plugins.require(approaches)
    unknown = sorted(set(overrides) - set(approaches))
    if unknown:
        raise UserError(f"{unknown[0]!r} is not among --plugins ({', '.join(approaches)})", where="--set")
    planned = {}
    for name in approaches:
        try:
            info = plugins.describe(name)
        except Exception as exc:  # a plugin bug, but the user needs to know which plugin
            raise UserError(f"plugin {name!r} cannot describe itself: {type(exc).__name__}: {exc}".splitlines()[0],
                            where="--plugins") from None
        if spec.task.type not in info.task_types:
            raise UserError(
                f"plugin {name!r} does not support {spec.task.type} (it supports {', '.join(info.task_types)})",
                where=spec.where,
            )
        planned[name] = resolve_settings(name, info.settings, spec, overrides.get(name, {}))
    return planned


def compare(
    plugins: Plugins,
    spec: Spec,
    data: Datasets,
    settings: dict[str, dict[str, Any]],
    store: Store,
    options: CompareOptions,
    console: Any = None,
) -> Comparison:
    """Run every approach in ``settings`` (from :func:`plan_settings`) in order; failures become failed rows."""
    comparison = Comparison(comparison_id=new_id(spec.name), spec=spec.name, created=now(), runs=[], metrics=spec.metrics)
    for name, approach_settings in settings.items():
        comparison.runs.append(run_approach(plugins, spec, data, name, approach_settings, store, options, console))
    store.save_comparison(comparison)
    notify(plugins, "harness_compare_finished", comparison=comparison)
    return comparison


def reuse_key(plugins: Plugins, spec: Spec, data: Datasets, name: str, settings: dict[str, Any], options: CompareOptions) -> str:
    meta = plugins.meta.get(name)
    identity = {
        "approach": name,
        "plugin_version": meta.version if meta else "",
        "harness": __version__,
        "task": spec.task.model_dump(),
        "settings": settings,
        "random_weights": options.random_weights,
        "latency_samples": options.latency_samples,
        "warmup_examples": options.warmup_examples,
        "machine": measure.machine(),
        "train": data.train_hash,
        "validation": dataset_hash(data.validation),
        "test": data.test_hash,
        "seed": spec.seed,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def run_approach(
    plugins: Plugins,
    spec: Spec,
    data: Datasets,
    name: str,
    settings: dict[str, Any],
    store: Store,
    options: CompareOptions,
    console: Any = None,
) -> RunRecord:
    task = spec.to_task()
    key = reuse_key(plugins, spec, data, name, settings, options)
    if not options.rerun:
        previous = store.find_reusable(key)
        if previous is not None:
            previous.status = "reused"
            notify(plugins, "harness_run_finished", run=previous)
            return previous

    record = RunRecord(
        run_id=new_id(name),
        approach=name,
        spec=spec.name,
        task_type=task.type,
        settings=settings,
        random_weights=options.random_weights,
        train_hash=data.train_hash,
        test_hash=data.test_hash,
        n_train=len(data.train),
        n_validation=len(data.validation),
        n_test=len(data.test),
        reuse_key=key,
        created=now(),
    )
    record.environment["validation_source"] = data.validation_source
    workdir = store.start_run(record.run_id)
    notify(plugins, "harness_run_started", run=record)

    def on_log(entry: dict[str, Any]) -> None:
        record.train_log.append(entry)
        notify(plugins, "harness_training_log", run=record, entry=entry)

    progress = RunProgress(console, on_log)
    call_settings = {**settings, "random_weights": options.random_weights}
    predictions: list[Prediction] | None = None
    error_detail = None
    try:
        predictions = _measure(plugins, name, task, data, call_settings, workdir / "artifact", progress, record, options)
        record.metrics = _score(plugins, name, task, data.test, predictions)
        record.status = "ok"
    except Exception as exc:  # one approach failing must not lose the others' results
        record.status = "failed"
        record.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        error_detail = traceback.format_exc()
    measure.release_memory()
    record.environment.update(measure.environment(record.model.get("device")))
    store.finish_run(record, predictions, error_detail)
    notify(plugins, "harness_run_finished", run=record)
    return record


def notify(plugins: Plugins, hook: str, **kwargs: Any) -> None:
    """Call an event hook; a listener that raises costs one warning line, never a run."""
    try:
        getattr(plugins.pm.hook, hook)(**kwargs)
    except Exception as exc:
        print(f"harness: a {hook} listener failed: {type(exc).__name__}: {exc}".splitlines()[0], file=sys.stderr)


def _measure(
    plugins: Plugins,
    name: str,
    task: Task,
    data: Datasets,
    settings: dict[str, Any],
    workdir: Any,
    progress: RunProgress,
    record: RunRecord,
    options: CompareOptions,
) -> list[Prediction]:
    workdir.mkdir(parents=True, exist_ok=True)
    with measure.PeakMemory() as train_memory:
        artifact, train_seconds = measure.timed(
            lambda: plugins.call(
                name, "harness_train", task=task, train=data.train, validation=data.validation,
                settings=settings, workdir=workdir, progress=progress,
            )
        )
    if not isinstance(artifact, Artifact):
        raise TypeError(f"harness_train returned {type(artifact).__name__}, not an Artifact")
    measure.release_memory()  # training's garbage is not prediction's memory

    def predict(examples: list[Example], bar: RunProgress = SILENT) -> list[Prediction]:
        result = plugins.call(
            name, "harness_predict", task=task, artifact=artifact, examples=examples, settings=settings, progress=bar
        )
        check_predictions(result, examples)
        return result

    test = without_answers(data.test)
    with measure.PeakMemory() as predict_memory:
        predict(test[: options.warmup_examples])  # warm-up: loads weights, first kernels, caches
        predictions, predict_seconds = measure.timed(lambda: predict(test, progress))
        latency = measure.sampled_batch1_latency(lambda ex: predict([ex]), test, options.latency_samples)

    train_samples = artifact.info.get("train_samples", 0)
    record.speed = {
        "train_seconds": train_seconds,
        "train_samples_per_s": train_samples / train_seconds if train_samples and train_seconds > 0 else None,
        "train_gpu_hours": train_seconds / 3600 if str(artifact.info.get("device", "")).startswith("cuda") else None,
        "predict_seconds": predict_seconds,
        "predict_samples_per_s": len(data.test) / predict_seconds if predict_seconds > 0 else None,
        "predict_batch_size": artifact.info.get("predict_batch_size", settings.get("predict_batch_size")),
        **latency.summary(),
    }
    record.memory = {
        "train_rss_peak_mb": train_memory.rss_peak_mb,
        "train_gpu_peak_mb": train_memory.gpu_peak_mb,
        "predict_rss_peak_mb": predict_memory.rss_peak_mb,
        "predict_gpu_peak_mb": predict_memory.gpu_peak_mb,
    }
    record.model = {k: v for k, v in artifact.info.items() if k != "train_samples"}
    return predictions


def without_answers(examples: list[Example]) -> list[Example]:
    """The examples as predict sees them: gold labels and fields removed, so no approach can peek."""
    return [replace(ex, label=None, fields=None) for ex in examples]


def check_predictions(predictions: Any, examples: list[Example]) -> None:
    """The predict contract: a list of Prediction, one per example."""
    if not isinstance(predictions, list) or not all(isinstance(p, Prediction) for p in predictions):
        raise TypeError("harness_predict must return a list of Prediction")
    if len(predictions) != len(examples):
        raise ValueError(f"harness_predict returned {len(predictions)} predictions for {len(examples)} examples")


def _score(plugins: Plugins, name: str, task: Task, examples: list[Example], predictions: list[Prediction]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for result in reversed(plugins.pm.hook.harness_score(task=task, examples=examples, predictions=predictions, approach=name)):
        if result:
            merged.update(result)
    return merged

