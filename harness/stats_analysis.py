"""A comparison's statistics in one dict: every run's intervals, its seed spreads and the pairwise tests.

What the table, ``--json`` and the report read (``Comparison.statistics``), computed from the runs' stored
predictions by the pieces of harness.stats_intervals, harness.stats_pairs and harness.stats_seeds."""

from __future__ import annotations

import statistics
from dataclasses import asdict
from typing import Any, Callable

from harness.stats_intervals import (
    BOOTSTRAP_SEED,
    COUNTS,
    PAIR_RESAMPLES,
    RESAMPLES,
    ExampleStats,
    Interval,
    example_stats,
    interval,
    resample_counts,
)
from harness.stats_pairs import ASO_MIN_SEEDS, compare_pairs
from harness.stats_seeds import MEASURED, Spread, by_approach
from harness.types import Comparison, RunRecord

METHOD = (
    f"95% percentile bootstrap over test examples ({RESAMPLES} resamples, NumPy, seed {BOOTSTRAP_SEED}); "
    f"pairs: a paired bootstrap of the headline difference ({PAIR_RESAMPLES} resamples of the test examples, "
    "each example carrying every seed's answer), its two-sided p-value Holm-adjusted across pairs; McNemar's "
    "exact test on per-example correctness where both rows have one seed; almost stochastic order "
    f"(Dror et al. 2019) of the per-seed headline figures where both have {ASO_MIN_SEEDS} or more"
)


def analyse(comparison: Comparison, scored: Callable[[RunRecord], Any]) -> dict[str, Any]:
    """Every interval, seed spread and pairwise test of a comparison, for the table, ``--json`` and the report.

    ``scored(run)`` gives a run's gold examples and predictions (from its ``predictions.jsonl``), or None
    when the store has none: that run gets no interval. Runs must share one test set (the test hash)."""
    groups = {name: [r for r in runs if r.status in MEASURED] for name, runs in by_approach(comparison).items()}
    headline = next((m for m in comparison.metrics if m not in COUNTS), None)
    result: dict[str, Any] = {
        "method": METHOD,
        "headline": headline,
        "intervals": {},
        "seeds": {},
        "pairs": [],
        "best": None,
    }
    per_run: dict[str, ExampleStats] = {}
    weights = None
    for runs in groups.values():
        for run in runs:
            data = scored(run)
            task = (run.training.get("identity") or {}).get("task") or {}
            if data is None or not data[0]:
                continue
            examples, predictions = data
            per_run[run.run_id] = example_stats(
                run.task_type,
                task.get("labels") or [],
                task.get("fields") or [],
                examples,
                predictions,
                bool(run.environment.get("normalize", True)),
            )
            if weights is None or weights.shape[1] != len(examples):
                weights = resample_counts(len(examples))
            result["intervals"][run.run_id] = {
                metric: asdict(interval(per_run[run.run_id], metric, weights))
                for metric in comparison.metrics
                if metric not in COUNTS
            }
    for name, runs in groups.items():
        measured = [r for r in runs if r.run_id in per_run]
        if len(measured) > 1:
            seeds = {}
            for metric in comparison.metrics:
                if metric in COUNTS:
                    continue
                spread_ = Spread.of([result["intervals"][r.run_id][metric]["estimate"] for r in measured])
                assert spread_ is not None  # of two or more estimates
                half = statistics.fmean(Interval(**result["intervals"][r.run_id][metric]).half_width for r in measured)
                seeds[metric] = {
                    "sd": spread_.sd,
                    "ci_half_width": half,
                    "larger": "seeds" if (spread_.sd or 0) > half else "test sample",
                }
            result["seeds"][name] = seeds
    if headline is None:
        return result
    names = [n for n, runs in groups.items() if any(r.run_id in per_run for r in runs)]
    hashes = {r.test_hash for n in names for r in groups[n]}
    if len(hashes) > 1:
        raise ValueError(
            "runs scored on different test sets (test hashes "
            + ", ".join(sorted(h[:12] for h in hashes))
            + ") cannot be compared example by example"
        )
    result["pairs"] = compare_pairs(
        {name: [per_run[r.run_id] for r in groups[name] if r.run_id in per_run] for name in names}, headline
    )
    result["best"] = _significantly_best(names, result["pairs"])
    return result


def _significantly_best(names: list[str], pairs: list[dict[str, Any]]) -> str | None:
    """The approach whose headline metric is significantly better than every other's, or None."""
    for name in names:
        wins = 0
        for pair in pairs:
            if name not in (pair["a"], pair["b"]):
                continue
            ahead = pair["difference"] > 0 if pair["a"] == name else pair["difference"] < 0
            if not (pair["significant"] and ahead):
                break
            wins += 1
        else:
            if wins and wins == len(names) - 1:
                return name
    return None
