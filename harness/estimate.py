"""The cost of a comparison before it runs: each row's fate, its training steps, and estimates of its training
time, serving time and peak memory on this machine.

A row's fate is what the runner will do (:mod:`harness.runner`): ``reused`` (a stored row, nothing runs),
``re-measured`` (a stored model, served again), ``resumed`` (a killed run's checkpoint), ``measured`` (a killed
run that had finished training) or ``trained``. Its figures come from the first of:

- **the store**: the newest finished run of the same model and shape on this machine (the same trainer and
  settings but for those that only scale the work: epochs, evaluation and logging intervals, the learning rate
  and its schedule, the seed), its phases scaled to this row's data and steps;
- **a calibration**: a unit (in a process of its own, as a run's) trains the row for a few optimizer steps on a
  sample of its training data in a temporary directory, times each step, evaluates once, then loads what it
  trained and serves a few test examples; the figures are scaled the same way. A calibration is kept in the
  store (``calibrations/``), keyed by the shape it measured, and used again.

An approach that serves through an endpoint or a command (it has a ``check``) is not calibrated: its cost is
somebody else's machine.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from harness import identity
from harness.calibration import (
    CALIBRATION_STEPS,
    Rates,
    calibrate,
    keep_calibration,
    kept_calibration,
    training_steps,
)
from harness.data_load import Datasets
from harness.errors import UserError
from harness.planning import CompareOptions, Plan
from harness.progress import RunProgress
from harness.spec import Spec
from harness.store import Store

# Settings that change how long training runs or what it learns, not the cost of one step: the shape of a run is
# its trainer's settings without them.
SCALE_ONLY = frozenset(
    {
        "num_train_epochs",
        "eval_steps",
        "logging_steps",
        "warmup_steps",
        "learning_rate",
        "lr_scheduler_type",
        "weight_decay",
        "seed",
        "max_grad_norm",
        "metric_for_best_model",
        "load_best_model_at_end",
    }
)


@dataclass
class RowEstimate:
    """One row of the plan (one seed of it): what will happen and what it will cost."""

    row: str
    seed: int
    fate: str  # reused, re-measured, resumed, measured, trained
    steps: int | None = None  # optimizer steps still to train (None: the approach does not say)
    train_seconds: float | None = None
    serve_seconds: float | None = None
    peak_rss_mb: float | None = None
    source: str = ""  # where the figures come from, or why there are none
    detail: str = ""  # the fate's detail: the run reused, the step resumed from

    def as_record(self) -> dict[str, Any]:
        """What a run's record keeps (``estimate``), beside the figures it measured."""
        return {k: v for k, v in asdict(self).items() if k not in ("row", "seed")}


# ---------------------------------------------------------------------------------------------
# Steps and evaluations of a Trainer row: the Trainer's own arithmetic (harness.hf_trainer).
# ---------------------------------------------------------------------------------------------


def evaluations(settings: dict[str, Any], steps: int, n_validation: int) -> int:
    """Evaluations (and checkpoints) in ``steps`` steps: one every ``eval_steps`` (a fraction of all steps below 1)."""
    if not steps or not n_validation or "eval_steps" not in settings:
        return 0
    every = float(settings["eval_steps"])
    interval = max(1, math.ceil(every * steps)) if every < 1 else max(1, int(every))
    return steps // interval


# ---------------------------------------------------------------------------------------------
# The shape of a run: what makes two runs cost the same per step.
# ---------------------------------------------------------------------------------------------


def shape_of(training: dict[str, Any], measurement: dict[str, Any]) -> dict[str, Any]:
    """From a run's two identities (:mod:`harness.run_identity`): the parts that set the cost of a step and of a
    prediction on this machine, but not how many there are."""
    return {
        "trainer": training.get("approach"),
        "settings": {k: v for k, v in (training.get("settings") or {}).items() if k not in SCALE_ONLY},
        "models": training.get("models"),
        "random_weights": training.get("random_weights"),
        "accelerator": training.get("accelerator"),
        "cpu_bf16": training.get("cpu_bf16"),
        "approach": measurement.get("approach"),
        "predict_settings": measurement.get("predict_settings"),
        "machine": measurement.get("machine"),
        "gpu": measurement.get("gpu"),
        "threads": measurement.get("threads"),
    }


def _rates_of_record(record: Any) -> Rates | None:
    """A stored run's cost per unit of work, or None where it trained nothing it can tell about."""
    speed, settings = record.speed, record.settings
    phases = speed.get("train_phases") or {}
    trained_here = record.training.get("trained_in") == record.run_id
    if not trained_here or not speed.get("train_seconds"):
        return None
    steps = training_steps(settings, record.n_train)
    evals = sum(1 for entry in record.train_log if any(str(k).startswith("eval_") for k in entry))
    loop = phases.get("train_loop", 0.0)
    known = sum(phases.values())
    rates = Rates(
        source=f"stored run {record.run_id}",
        load=phases.get("load", 0.0),
        prepare_per_example=phases.get("prepare", 0.0) / max(1, record.n_train),
        eval_per_example=phases.get("evaluation", 0.0) / max(1, evals * record.n_validation),
        save=phases.get("save", 0.0),
        other=max(0.0, speed["train_seconds"] - known),
        serve_load=speed.get("load_seconds") or 0.0,
        predict_per_example=(speed["predict_seconds"] / record.n_test) if speed.get("predict_seconds") else None,
        latency=(speed.get("latency_p50_ms") or 0.0) / 1000,
        train_rss_mb=record.memory.get("train_rss_peak_mb"),
        serve_rss_mb=record.memory.get("predict_rss_peak_mb"),
    )
    if steps:
        rates.step = loop / steps  # checkpoints included: they come at a fixed fraction of the steps
    elif steps is None and record.n_train:  # an approach without steps: its whole training time, per example
        rates.train_per_example = speed["train_seconds"] / record.n_train
        rates.load = rates.prepare_per_example = rates.save = rates.other = 0.0
    return rates


def stored_rates(store: Store, shape: dict[str, Any], needs_steps: bool) -> Rates | None:
    """The newest finished run in ``store`` of this shape that trained (with steps, where ``needs_steps``)."""
    if not (store.root / "runs.db").is_file():
        return None
    wanted = identity.digest(shape)
    for row in store.runs():  # newest first
        if row.get("status") != "ok":
            continue
        try:
            record = store.load_run(row["run_id"])
        except Exception:  # a record a newer harness wrote, or a damaged one: not evidence
            continue
        if not record.training.get("identity") or not record.measurement.get("identity"):
            continue
        if identity.digest(shape_of(record.training["identity"], record.measurement["identity"])) != wanted:
            continue
        rates = _rates_of_record(record)
        if rates is not None and (rates.step is not None or not needs_steps):
            return rates
    return None


# ---------------------------------------------------------------------------------------------
# The plan.
# ---------------------------------------------------------------------------------------------


@dataclass
class CostPlan:
    rows: list[RowEstimate] = field(default_factory=list)
    calibrated: list[str] = field(default_factory=list)  # rows whose figures a calibration measured

    def training_seconds(self) -> float:
        return sum(row.train_seconds or 0.0 for row in self.rows)

    def total_seconds(self) -> float:
        return sum((row.train_seconds or 0.0) + (row.serve_seconds or 0.0) for row in self.rows)

    def estimates(self) -> dict[tuple[str, int], dict[str, Any]]:
        return {(row.row, row.seed): row.as_record() for row in self.rows}


def _fate(store: Store, train_key: str, measure_key: str, rerun: bool) -> tuple[str, str, int | None]:
    """What the runner will do with a row of these identities, read without writing: (fate, detail, step resumed)."""
    if rerun or not (store.root / "runs.db").is_file():
        return "trained", "--rerun" if rerun else "", None
    found = store.find_measured(measure_key)
    if found is not None:
        return "reused", f"run {found.run_id}", None
    found = store.find_trained(train_key)
    if found is not None:
        return "re-measured", f"the model of run {found.run_id}", None
    from harness.store.resume import resumable

    for path in sorted((store.root / "runs").glob("*.partial")):
        try:
            found_key = json.loads((path / "identity.json").read_text(encoding="utf-8")).get("train_key")
        except (OSError, ValueError):
            continue
        if found_key != train_key:
            continue
        kept = resumable(path)
        if kept == "finished training":
            return "measured", f"killed run {path.name.removesuffix('.partial')} finished training", None
        if kept is not None:
            step = int(kept.removeprefix("checkpoint-"))
            return "resumed", f"{kept} of killed run {path.name.removesuffix('.partial')}", step
    return "trained", "", None


def plan_costs(
    plugins: Any,
    spec: Spec,
    data: Datasets,
    plans: dict[str, Plan],
    store: Store,
    options: CompareOptions,
    *,
    calibrate_missing: bool = True,
    keep_calibrations: bool = True,
    progress: RunProgress | None = None,
    say: Any = None,
) -> CostPlan:
    """Every row's fate and estimate, for each seed. ``calibrate_missing``: calibrate a row the store knows no
    run of its shape for; ``keep_calibrations``: write calibrations into the store for next time (a dry run
    writes nothing)."""
    from harness.run_identity import measurement_identity, training_identity

    cost = CostPlan()
    known: dict[str, Rates | None] = {}
    options = replace(options, host=options.host or identity.host())  # the machine, read once for every row
    for plan in plans.values():
        for seed in options.seeds or spec.training_seeds:
            row = replace(
                plan,
                settings={**plan.settings, "seed": seed},
                train_settings={**plan.train_settings, "seed": seed},
            )
            task = spec.to_task(row.prompt_row or row.trainer)
            training = training_identity(plugins, spec, data, row, task, options, store)
            train_key = identity.digest(training)
            measurement = measurement_identity(plugins, data, row, train_key, options, store)
            fate, detail, resumed_step = _fate(store, train_key, identity.digest(measurement), options.rerun)
            steps = training_steps(row.train_settings, len(data.train))
            estimate = RowEstimate(row.name, seed, fate, steps, detail=detail)
            if fate == "reused":
                estimate.steps, estimate.train_seconds, estimate.serve_seconds = 0, 0.0, 0.0
                estimate.source = "nothing runs"
                cost.rows.append(estimate)
                continue
            if fate in ("re-measured", "measured"):
                estimate.steps = 0
            elif fate == "resumed" and steps is not None and resumed_step is not None:
                estimate.steps = max(0, steps - resumed_step)
            if plugins.implements(row.approach, "check") or plugins.implements(row.trainer, "check"):
                estimate.source = "not estimated: it serves through an endpoint or a command"
                cost.rows.append(estimate)
                continue
            shape = shape_of(training, measurement)
            key = identity.digest(shape)
            if key not in known:
                needs_steps = bool(steps)
                rates = stored_rates(store, shape, needs_steps)
                if rates is None:
                    rates = kept_calibration(store, key)
                if rates is None and calibrate_missing:
                    if say is not None:
                        say(f"calibrating {row.name}: {CALIBRATION_STEPS} timed training steps and a few predictions")
                    try:
                        rates = calibrate(plugins, spec, data, row, options, seed, progress or RunProgress())
                    except Exception as exc:  # the row itself will fail or run: the plan says why it has no figure
                        estimate.source = f"not estimated: the calibration failed: {type(exc).__name__}: {exc}"
                        estimate.source = estimate.source.splitlines()[0]
                        known[key] = None
                        cost.rows.append(estimate)
                        continue
                    cost.calibrated.append(row.name)
                    if keep_calibrations:
                        keep_calibration(store, key, rates, shape)
                known[key] = rates
            rates = known[key]
            if rates is None:
                estimate.source = estimate.source or (
                    "not estimated: no run of this shape in the store, and calibration is off (HARNESS_CALIBRATE=0)"
                )
                cost.rows.append(estimate)
                continue
            _apply(estimate, rates, row, data, options, fate)
            cost.rows.append(estimate)
    return cost


def _apply(estimate: RowEstimate, rates: Rates, plan: Plan, data: Datasets, options: CompareOptions, fate: str) -> None:
    n_train, n_val, n_test = len(data.train), len(data.validation), len(data.test)
    estimate.source = rates.source
    if fate in ("trained", "resumed"):
        steps = estimate.steps
        if steps is not None and rates.step is not None:
            # A resumed run's evaluations: its share of the whole run's, at the whole run's interval.
            total = training_steps(plan.train_settings, n_train) or steps
            evals = round(evaluations(plan.train_settings, total, n_val) * steps / total) if total else 0
            loop = steps * rates.step + evals * rates.checkpoint
        elif rates.train_per_example is not None:  # the whole training, per example
            evals, loop = 0, rates.train_per_example * n_train * (estimate.steps != 0)
        else:
            evals, loop = 0, 0.0
        estimate.train_seconds = (
            rates.load
            + rates.prepare_per_example * n_train
            + loop
            + rates.eval_per_example * n_val * evals
            + rates.save
            + rates.other
        )
    else:
        estimate.train_seconds = 0.0
    if rates.predict_per_example is not None:  # as served_seconds measures it: the warm-up is not timed
        estimate.serve_seconds = (
            rates.serve_load + rates.predict_per_example * n_test + rates.latency * min(options.latency_samples, n_test)
        )
    peaks = [rates.serve_rss_mb] + ([rates.train_rss_mb] if fate in ("trained", "resumed") else [])
    known_peaks = [p for p in peaks if p]
    estimate.peak_rss_mb = max(known_peaks) if known_peaks else None


# ---------------------------------------------------------------------------------------------
# Showing it, and the budget.
# ---------------------------------------------------------------------------------------------


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def parse_duration(text: str) -> float:
    """``--budget``: ``90s``, ``15m``, ``2h``, ``1h30m`` or plain seconds; positive."""
    import re

    raw = text.strip().lower()
    parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?:in)?)?(?:(\d+(?:\.\d+)?)s?)?", raw)
    if not raw or parts is None or not any(parts.groups()):
        raise UserError(f"expected a duration such as 90s, 15m, 2h or 1h30m, got {text!r}", where="--budget")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in parts.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise UserError(f"must be more than zero, got {text!r}", where="--budget")
    return total


def plan_table(cost: CostPlan, title: str) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for column in ("Row", "Seed", "Fate", "Steps", "Train", "Serve", "Peak RSS", "Estimated from"):
        numeric = column in ("Seed", "Steps", "Train", "Serve", "Peak RSS")
        table.add_column(column, justify="right" if numeric else "left")
    for row in cost.rows:
        table.add_row(
            row.row,
            str(row.seed),
            row.fate + (f" ({row.detail})" if row.detail else ""),
            "-" if row.steps is None else str(row.steps),
            duration(row.train_seconds),
            duration(row.serve_seconds),
            ("-" if row.fate == "reused" else "?") if row.peak_rss_mb is None else f"{row.peak_rss_mb / 1024:.1f} GB",
            row.source,
        )
    return table


def check_budget(cost: CostPlan, budget: float) -> None:
    """One line, before anything trains, when the plan's estimate is over ``budget`` seconds: the rows that cost
    most, and what would shrink them."""
    total = cost.total_seconds()
    if total <= budget:
        return
    costly = sorted(cost.rows, key=lambda r: -((r.train_seconds or 0.0) + (r.serve_seconds or 0.0)))
    named = ", ".join(
        f"{r.row} {duration((r.train_seconds or 0.0) + (r.serve_seconds or 0.0))}"
        for r in costly[:3]
        if (r.train_seconds or 0.0) + (r.serve_seconds or 0.0) > 0
    )
    raise UserError(
        f"the plan is estimated at {duration(total)}, over the budget of {duration(budget)} ({named}); "
        "--limit-train, fewer epochs (--set ROW.num_train_epochs=...), a smaller model or a GPU would shrink it",
        where="--budget",
    )


def against_actual(runs: list[Any]) -> list[str]:
    """For each row that ran here, the plan's estimate beside what the run took: training (the unit's wall time),
    and serving (loading, the timed pass over the test set and the batch-1 requests)."""
    lines = []
    for run in runs:
        estimate = run.estimate or {}
        if run.status != "ok" or estimate.get("fate") in (None, "reused"):
            continue
        pairs = [("served", estimate.get("serve_seconds"), served_seconds(run))]
        if estimate.get("fate") in ("trained", "resumed"):
            pairs.insert(0, ("trained", estimate.get("train_seconds"), run.speed.get("train_seconds")))
        parts = [
            f"{label} in {duration(actual)}, estimated {duration(planned)} ({planned / actual:.2f}x)"
            for label, planned, actual in pairs
            if planned and actual
        ]
        if parts:
            lines.append(f"{run.approach}: {'; '.join(parts)} ({estimate.get('source')})")
    return lines


def served_seconds(run: Any) -> float | None:
    """What the plan's serving estimate covers, as the run measured it: loading, the timed pass over the test set
    and the batch-1 requests (the warm-up is not timed)."""
    speed = run.speed
    if not speed.get("predict_seconds"):
        return None
    latency = (speed.get("latency_p50_ms") or 0.0) / 1000 * (speed.get("latency_samples") or 0)
    return (speed.get("load_seconds") or 0.0) + speed["predict_seconds"] + latency
