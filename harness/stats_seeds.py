"""Figures across seeds: a comparison's runs grouped by approach, each figure's mean, sd and n over its seeds.

One approach trained with several seeds is one row of the table."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Callable

from harness.types import Comparison, RunRecord

MEASURED = ("ok", "reused")


@dataclass(frozen=True)
class Spread:
    """A figure across seeds: mean, sample standard deviation (None for one seed) and how many seeds."""

    mean: float
    sd: float | None
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Spread | None:
        if not values:
            return None
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))


def by_approach(comparison: Comparison) -> dict[str, list[RunRecord]]:
    """The comparison's runs grouped by approach, in the order they ran (one per seed)."""
    groups: dict[str, list[RunRecord]] = {}
    for run in comparison.runs:
        groups.setdefault(run.approach, []).append(run)
    return groups


def spread(runs: list[RunRecord], get: Callable[[RunRecord], Any]) -> Spread | None:
    """``get``'s numbers over the measured runs (failed seeds are left out; the table says how many ran)."""
    return Spread.of(
        [
            float(v)
            for v in (get(r) for r in runs if r.status in MEASURED)
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
    )


def metric_of(name: str) -> Callable[[RunRecord], Any]:
    """A getter of a run's metric ``name`` for :func:`spread`, bound to ``name`` when made: a loop over metrics
    makes one each."""
    return lambda run: run.metrics.get(name)


def speed_of(name: str) -> Callable[[RunRecord], Any]:
    """A getter of a run's speed figure ``name`` for :func:`spread`, bound as :func:`metric_of`'s is."""
    return lambda run: run.speed.get(name)


def summary(comparison: Comparison) -> dict[str, dict[str, Any]]:
    """Per approach: its seeds and each metric's mean, sd and n, with every seed's value (for ``--json``)."""
    out = {}
    for approach, runs in by_approach(comparison).items():
        metrics = {}
        for name in comparison.metrics:
            figure = spread(runs, metric_of(name))
            if figure is not None:
                metrics[name] = {
                    "mean": figure.mean,
                    "sd": figure.sd,
                    "n": figure.n,
                    "values": [r.metrics.get(name) for r in runs if r.status in MEASURED],
                }
        out[approach] = {
            "seeds": [r.seed for r in runs],
            "runs": [r.run_id for r in runs],
            "failed": sum(r.status == "failed" for r in runs),
            "metrics": metrics,
        }
    return out
