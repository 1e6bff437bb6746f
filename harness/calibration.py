"""Calibration: a few timed training steps and predictions of one row in a unit, on a sample of its data in a
temporary directory, for the plan's estimate when the store knows no run of the row's shape (:mod:`harness.estimate`).

A calibration trains :data:`CALIBRATION_STEPS` optimizer steps on a seeded sample of the row's training data
(timing each: the first warms up, the median of the others is a step), evaluates once, then loads what it
trained and serves a few test examples and batch-1 requests. What it measured is kept in the store
(``calibrations/``), keyed by the shape it measured, and used again.
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.data_load import Datasets
from harness.planning import CompareOptions, Plan
from harness.progress import RunProgress
from harness.spec import Spec
from harness.store import Store
from harness.units import CalibrateJob

CALIBRATION_ACCUMULATION = 2  # at most this many micro-batches per calibrated step; the step is scaled to the row's
CALIBRATION_STEPS = 4  # optimizer steps a calibration trains: the first warms up, the median of the others counts
CALIBRATION_VALIDATION = 32  # validation examples it evaluates once
CALIBRATION_TEST = 40  # test examples it serves, after 8 to warm up


@dataclass
class Rates:
    """One measured run's cost, per unit of work: what an estimate scales."""

    source: str  # "stored run RUN_ID" or "calibrated: N timed steps"
    load: float = 0.0  # seconds to load the model for training
    prepare_per_example: float = 0.0
    step: float | None = None  # one optimizer step at the row's batch; None: no steps to learn from
    checkpoint: float = 0.0  # one evaluation's checkpoint (the Trainer saves one at each)
    eval_per_example: float = 0.0
    save: float = 0.0
    other: float = 0.0  # training time outside the phases (the unit's own)
    train_per_example: float | None = None  # an approach without steps: its training time per example
    serve_load: float = 0.0
    predict_per_example: float | None = None
    latency: float = 0.0  # a batch-1 request (p50), seconds
    train_rss_mb: float | None = None
    serve_rss_mb: float | None = None


def training_steps(settings: dict[str, Any], n_train: int) -> int | None:
    """Optimizer steps a Trainer row takes on ``n_train`` examples; None where the approach has no such settings."""
    try:
        batch = int(settings["per_device_train_batch_size"]) * int(settings.get("gradient_accumulation_steps") or 1)
        epochs = float(settings["num_train_epochs"])
    except (KeyError, TypeError, ValueError):
        return None
    if epochs <= 0 or n_train <= 0:
        return 0
    return max(1, math.ceil(math.ceil(n_train / batch) * epochs))


# ---------------------------------------------------------------------------------------------


def rates_of_calibration(result: dict[str, Any]) -> Rates:
    steps = result["step_seconds"]
    phases = result["phases"]
    if not steps:  # an approach without a training bar: its whole training time, per example
        return Rates(
            source="calibrated: one short training",
            train_per_example=result["train_seconds"] / max(1, result["n_train"]),
            serve_load=result["serve_load"] or 0.0,
            predict_per_example=result["predict_per_example"],
            latency=result["latency"],
            train_rss_mb=result["train_rss_mb"],
            serve_rss_mb=result["serve_rss_mb"],
        )
    step = statistics.median(steps[1:]) if len(steps) > 1 else (steps[0] if steps else None)
    evaluated = phases.get("evaluation", 0.0)
    return Rates(
        source=f"calibrated: {len(steps)} timed steps",
        load=phases.get("load", 0.0),
        prepare_per_example=phases.get("prepare", 0.0) / max(1, result["n_train"]),
        step=step,
        checkpoint=result["after_steps"],
        eval_per_example=evaluated / max(1, result["n_validation"]),
        save=phases.get("save", 0.0),
        other=max(0.0, result["train_seconds"] - sum(phases.values())),
        # The calibration loads what it trained in a process that has read the model once already; a measure
        # unit is a fresh process, which the training's own load was too.
        serve_load=max(result["serve_load"] or 0.0, phases.get("load", 0.0)),
        predict_per_example=result["predict_per_example"],
        latency=result["latency"],
        train_rss_mb=result["train_rss_mb"],
        serve_rss_mb=result["serve_rss_mb"],
    )


def calibration_sample(data: Datasets, plan: Plan, seed: int, accumulation: int) -> Datasets:
    """A seeded sample of the row's data: enough training examples for :data:`CALIBRATION_STEPS` steps of
    ``accumulation`` micro-batches, a few validation and test examples."""
    import random

    batch = int(plan.train_settings.get("per_device_train_batch_size") or 8) * accumulation
    rng = random.Random(seed)

    def sample(examples: list[Any], size: int) -> list[Any]:
        return rng.sample(examples, min(size, len(examples)))

    return Datasets(
        sample(data.train, batch * CALIBRATION_STEPS),
        sample(data.validation, CALIBRATION_VALIDATION),
        sample(data.test, CALIBRATION_TEST + 8),
        data.validation_source,
    )


def calibrate(
    plugins: Any, spec: Spec, data: Datasets, plan: Plan, options: CompareOptions, seed: int, progress: RunProgress
) -> Rates:
    """Run :func:`calibrate_unit` for ``plan`` in a temporary directory, where ``options.launcher`` says.

    A row that accumulates gradients over more than :data:`CALIBRATION_ACCUMULATION` micro-batches is calibrated
    at that many and its step scaled (seed 000's Qwen3 step is 8 micro-batches of 12: a calibration of 4 such
    steps would take a CPU many minutes); the optimizer's own update is then counted a few times too many, a
    small part of a step of several micro-batches."""
    from harness.data_cache import write_data_cache
    from harness.launch import run_unit

    settings = plan.train_settings
    trains = training_steps(settings, len(data.train)) is not None
    accumulation = int(settings.get("gradient_accumulation_steps") or 1) if trains else 1
    calibrated = min(accumulation, CALIBRATION_ACCUMULATION)
    sample = calibration_sample(data, plan, seed, calibrated)
    steps_settings = {
        "num_train_epochs": 1.0,  # every example of the sample once: CALIBRATION_STEPS steps
        "eval_steps": float(CALIBRATION_STEPS),  # one evaluation, after the last step
        **({"gradient_accumulation_steps": calibrated} if "gradient_accumulation_steps" in settings else {}),
    }
    extra = {"random_weights": options.random_weights, "seed": seed}
    with tempfile.TemporaryDirectory(prefix="harness-calibration-") as folder:
        job = CalibrateJob(
            plan.trainer,
            plan.approach,
            spec.to_task(plan.prompt_row or plan.trainer),
            write_data_cache(sample, Path(folder) / "data"),
            {**settings, **(steps_settings if trains else {}), **extra},
            {**plan.settings, **extra},
            Path(folder) / "run",
            seed,
        )
        launcher = "inline" if options.launcher == "inline" else "process"
        rates = rates_of_calibration(run_unit("calibrate", job, plugins, progress, launcher=launcher))
    if rates.step is not None and accumulation > calibrated:
        rates.step *= accumulation / calibrated
        rates.source += f" of {calibrated} micro-batches, scaled to {accumulation}"
    return rates


def _calibration_file(store: Store, key: str) -> Path:
    return store.root / "calibrations" / f"{key[:32]}.json"


def kept_calibration(store: Store, key: str) -> Rates | None:
    try:
        raw = json.loads(_calibration_file(store, key).read_text(encoding="utf-8"))
        return Rates(**raw["rates"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def keep_calibration(store: Store, key: str, rates: Rates, shape: dict[str, Any]) -> None:
    from harness.files import write_json

    path = _calibration_file(store, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"shape": shape, "rates": asdict(rates)})
