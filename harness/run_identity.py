"""A run's two identities, made of harness.identity's parts for one plan, and what changed between two of them.

The training identity says what was trained, the measurement identity how it was measured (see
:mod:`harness.identity`); the part of the latter that says how the model is served keys the load cache too
(:func:`serving_identity`, :func:`harness.load_cache.load_cache_dir`).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from harness import identity
from harness.data_load import Datasets
from harness.errors import UserError
from harness.planning import CompareOptions, Plan
from harness.plugins import Plugins
from harness.spec import Spec
from harness.store import Store
from harness.types import RunRecord, Task


def training_identity(
    plugins: Plugins, spec: Spec, data: Datasets, plan: Plan, task: Task, options: CompareOptions, store: Store
) -> dict[str, Any]:
    """What was trained: see harness.identity."""
    # Secrets (API keys) change no weights and never reach a record: they are not part of the identity.
    from harness.redaction import redact_settings

    settings = redact_settings(
        {k: v for k, v in plan.train_settings.items() if k not in plan.train_predict_keys and k not in plan.secrets},
        store.secret_mark,
    )
    with store.model_hashes() as cache:
        models = {
            key: identity.model_identity(str(settings[key]), cache) for key in plan.model_settings if settings.get(key)
        }
    return {
        "approach": plan.trainer,
        "settings": settings,
        "random_weights": options.random_weights,
        "models": models,
        "task": {k: v for k, v in asdict(task).items() if k != "normalize"},  # normalize only changes scoring
        "train": data.train_hash,
        "validation": data.validation_hash,
        "validation_source": data.validation_source,
        "seed": plan.train_settings["seed"],
        "code": identity.training_code(plugins.code_roots(plan.trainer, ("train",))),
        **trained_on(options.host or identity.host(), settings.get("train_device")),
    }


def trained_on(host: dict[str, Any], train_device: Any) -> dict[str, Any]:
    """The training identity's parts that ``host`` (:func:`harness.identity.host`, where the train unit runs) gives."""
    return {
        "versions": host["training_versions"],
        "accelerator": host["accelerator"] if train_device in (None, "auto") else str(train_device),
        # On a CPU with bf16 units decoders train under bf16 autocast (mixed_precision: auto): not the same run.
        "cpu_bf16": host["cpu_bf16"],
    }


def measured_on(host: dict[str, Any]) -> dict[str, Any]:
    """The measurement identity's parts that ``host`` (where the measure unit runs) gives."""
    return {
        "machine": host["machine"],
        "gpu": host["gpu"],
        "threads": host["threads"],
        "versions": host["serving_versions"],
    }


def on_unit_hosts(record: RunRecord, train_host: dict[str, Any] | None, measure_host: dict[str, Any] | None) -> None:
    """The record's identities as the units that ran it saw their machines (a Ray worker's, not the driver's):
    reused later only where the same machine, GPU and libraries measure."""
    training, measurement = dict(record.training["identity"]), dict(record.measurement["identity"])
    if train_host is not None:
        training.update(trained_on(train_host, (training.get("settings") or {}).get("train_device")))
        record.training["key"] = identity.digest(training)
        record.training["identity"] = training
        measurement["train_key"] = record.training["key"]
    if measure_host is not None:
        measurement.update(measured_on(measure_host))
    record.measurement = {**record.measurement, "key": identity.digest(measurement), "identity": measurement}


def serving_identity(plugins: Plugins, plan: Plan, settings: dict[str, Any], store: Store) -> dict[str, Any]:
    """How ``plan``'s model is served with ``settings``: the approach that serves, its predict settings, and the code
    and library versions that measure. Part of the measurement identity, and what the load cache is keyed on:
    compare's measurement and a stored run served again (harness.serving) find the same load cache."""
    from harness.redaction import redact_settings

    return {
        "approach": plan.approach,
        # An engine's env values and the value after --api-key in its arguments never reach a record.
        "predict_settings": redact_settings(
            {k: settings[k] for k in plan.predict_keys if k in settings and k not in plan.secrets},
            store.secret_mark,
        ),
        "code": identity.measuring_code(plugins.code_roots(plan.approach, ("load", "predict", "parity"))),
        "versions": identity.library_versions(identity.SERVING_LIBRARIES),
    }


def measurement_identity(
    plugins: Plugins, data: Datasets, plan: Plan, train_key: str, options: CompareOptions, store: Store
) -> dict[str, Any]:
    """How it was measured: see harness.identity."""
    serving = serving_identity(plugins, plan, plan.settings, store)
    return {
        "train_key": train_key,
        "approach": serving["approach"],
        "predict_settings": serving["predict_settings"],
        "test": data.test_hash,
        "latency_samples": options.latency_samples,
        "warmup_examples": options.warmup_examples,
        "launcher": options.launcher,
        "code": serving["code"],
        **measured_on(options.host or identity.host()),
    }


def what_changed(before: dict[str, Any], after: dict[str, Any], training: bool = False) -> list[str]:
    """Two measurement identities' differences (two training identities', with ``training``), in words:
    ``predict_batch_size 0 -> 8``, ``test data``, ``training code: plugins.toy.Toy._fit``."""
    changes = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if old == new or key == "train_key":
            continue
        if key in ("predict_settings", "settings"):
            for name in sorted(set(old or {}) | set(new or {})):
                if (old or {}).get(name) != (new or {}).get(name):
                    changes.append(f"{name} {(old or {}).get(name)!r} -> {(new or {}).get(name)!r}")
        elif key == "approach" and not training:  # another approach serves it: every other difference follows from that
            return [f"served by {new} (trained by {before.get('approach')})"]
        elif key == "code":
            edited = sorted(
                name for name in set(old or {}) | set(new or {}) if (old or {}).get(name) != (new or {}).get(name)
            )
            changes.append(
                f"{'training' if training else 'measuring'} code: "
                + ", ".join(edited[:3])
                + (f" and {len(edited) - 3} more" if len(edited) > 3 else "")
            )
        elif key in (
            "latency_samples",
            "warmup_examples",
            "threads",
            "launcher",
            "approach",
            "random_weights",
            "accelerator",
        ):
            changes.append(f"{key} {old} -> {new}")
        elif key in ("test", "train", "validation"):
            changes.append(f"{key} data")
        else:
            changes.append(key)
    return changes


def training_reason(store: Store, record: RunRecord, rerun: bool) -> str:
    """Why a row trains: ``--rerun``, or what changed in its training identity since the newest model the
    same row trained with the same seed on the same spec (``training code: plugins.toy.Toy._fit``)."""
    if rerun:
        return "--rerun"
    for run_id in store.trained_runs(record.approach, record.spec):
        try:
            before = store.load_run(run_id)
        except UserError:
            continue
        if before.seed == record.seed and before.training.get("identity"):
            now = json.loads(json.dumps(record.training["identity"], default=str))  # as stored: tuples are lists
            changes = what_changed(before.training["identity"], now, training=True)
            return ", ".join(changes) or f"the model run {run_id} trained is no longer stored"
    return "no model of this row stored yet"
