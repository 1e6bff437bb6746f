"""Statistics over a comparison's runs: one approach trained with several seeds is one row of the table."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
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
    return Spread.of([float(v) for v in (get(r) for r in runs if r.status in MEASURED)
                      if isinstance(v, (int, float)) and not isinstance(v, bool)])


def summary(comparison: Comparison) -> dict[str, dict[str, Any]]:
    """Per approach: its seeds and each metric's mean, sd and n, with every seed's value (for ``--json``)."""
    out = {}
    for approach, runs in by_approach(comparison).items():
        metrics = {}
        for name in comparison.metrics:
            figure = spread(runs, lambda r, name=name: r.metrics.get(name))
            if figure is not None:
                metrics[name] = {"mean": figure.mean, "sd": figure.sd, "n": figure.n,
                                 "values": [r.metrics.get(name) for r in runs if r.status in MEASURED]}
        out[approach] = {"seeds": [r.seed for r in runs], "runs": [r.run_id for r in runs],
                         "failed": sum(r.status == "failed" for r in runs), "metrics": metrics}
    return out


# ---------------------------------------------------------------------------------------------
# Uncertainty over the test examples: bootstrap intervals, paired comparisons (McNemar, paired bootstrap,
# Holm). NumPy, vectorised: every resample is a row of multinomial counts over the examples, and a metric
# is computed from counts summed per resample (a confusion matrix, or true/false positives), so 1,000
# resamples of 2,000 examples cost one matrix product. scipy gives the exact binomial test.
# ---------------------------------------------------------------------------------------------

RESAMPLES = 1000
CONFIDENCE = 0.95
ALPHA = 0.05
BOOTSTRAP_SEED = 0  # every interval is seeded: a report renders the same figures each time
METHOD = (f"95% percentile bootstrap over test examples ({RESAMPLES} resamples, NumPy, seed {BOOTSTRAP_SEED}); "
          "pairs: McNemar's exact test on per-example correctness, Holm-adjusted across pairs, and a paired "
          "bootstrap of the difference")
# Metrics that are counts, not rates: no interval.
COUNTS = ("invalid", "n")


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


@dataclass
class ExampleStats:
    """One run's test set as per-example rows whose column sums give every headline metric
    (:func:`metric_from_sums`), and each example's correctness (for McNemar)."""

    task_type: str
    rows: Any  # ndarray (n, d)
    correct: Any  # ndarray (n,) of bool
    n_labels: int = 0


def example_stats(task_type: str, labels: Any, fields: Any, examples: list[Any], predictions: list[Any],
                  normalize: bool = True) -> ExampleStats:
    """Classification: each example one-hot in the cell (gold, predicted) of a K x (K + 1) confusion matrix
    (the last column: no valid label). Extraction: exact record, valid answer, and true positives, false
    positives and false negatives summed over its fields (harness.metrics.record_outcome)."""
    import numpy as np

    from harness.metrics import record_outcome

    if task_type == "extraction":
        outcomes = [record_outcome(fields, ex.fields, p.fields, normalize) for ex, p in zip(examples, predictions)]
        rows = np.array([[o["exact"], o["valid"], *(sum(c[k] for c in o["fields"].values()) for k in ("tp", "fp", "fn"))]
                         for o in outcomes], dtype=float).reshape(len(outcomes), 5)
        return ExampleStats(task_type, rows, rows[:, 0] > 0)
    labels = list(labels)
    k = len(labels)
    gold = np.array([labels.index(ex.label) for ex in examples], dtype=int)
    predicted = np.array([labels.index(p.label) if p.label in labels else k for p in predictions], dtype=int)
    rows = np.zeros((len(examples), k * (k + 1)))
    rows[np.arange(len(examples)), gold * (k + 1) + predicted] = 1.0
    return ExampleStats(task_type, rows, gold == predicted, k)


def metric_from_sums(stats_: ExampleStats, metric: str, sums: Any) -> Any:
    """``metric`` from summed rows (shape (..., d)), vectorised over the leading axes; equal to
    harness.metrics' figure for the unresampled sum."""
    import numpy as np

    sums = np.asarray(sums, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        if stats_.task_type == "extraction":
            exact, valid, tp, fp, fn = (sums[..., i] for i in range(5))
            n = sums[..., 1] * 0 + stats_.rows.shape[0]
            if metric == "exact_match":
                return exact / n
            if metric == "valid_rate":
                return valid / n
            precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
            recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
            f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
            return {"field_precision": precision, "field_recall": recall, "field_f1": f1}[metric]
        k = stats_.n_labels
        confusion = sums.reshape(*sums.shape[:-1], k, k + 1)
        tp = np.diagonal(confusion[..., :k], axis1=-2, axis2=-1)
        support = confusion.sum(-1)
        predicted = confusion[..., :k].sum(-2)
        total = support.sum(-1)
        if metric == "accuracy":
            return tp.sum(-1) / total
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(predicted + support > 0, 2 * tp / (predicted + support), 0.0)
        name, _, average = metric.rpartition("_")
        per_class = {"precision": precision, "recall": recall, "f1": f1}[name]
        if average == "macro":
            return per_class.mean(-1)
        return (per_class * support).sum(-1) / total


def resample_counts(n: int, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED) -> Any:
    """``resamples`` bootstrap resamples of ``n`` examples, each a row of how often each example was drawn."""
    import numpy as np

    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, n, size=(resamples, n))
    offsets = (np.arange(resamples)[:, None] * n + drawn).ravel()
    return np.bincount(offsets, minlength=resamples * n).reshape(resamples, n).astype(float)


def _percentiles(values: Any) -> tuple[float, float]:
    import numpy as np

    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def interval(stats_: ExampleStats, metric: str, weights: Any = None) -> Interval:
    """The metric on the test set and its percentile bootstrap interval."""
    weights = resample_counts(stats_.rows.shape[0]) if weights is None else weights
    estimate = float(metric_from_sums(stats_, metric, stats_.rows.sum(0)))
    return Interval(estimate, *_percentiles(metric_from_sums(stats_, metric, weights @ stats_.rows)))


def mcnemar_exact(a_correct: Any, b_correct: Any) -> tuple[float, int, int]:
    """McNemar's exact test: the two-sided binomial p-value of the discordant pairs, and their counts
    (``a`` right where ``b`` is wrong, and the other way)."""
    import numpy as np
    from scipy.stats import binomtest

    a, b = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    if only_a + only_b == 0:
        return 1.0, 0, 0
    return float(binomtest(only_a, only_a + only_b, 0.5).pvalue), only_a, only_b


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of ``p_values`` (family-wise error), in their order."""
    order = sorted(range(len(p_values)), key=p_values.__getitem__)
    adjusted = [0.0] * len(p_values)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def paired_difference(a: ExampleStats, b: ExampleStats, metric: str, weights: Any = None) -> Interval:
    """``a``'s metric minus ``b``'s on the same examples, with a paired bootstrap interval: both resampled
    with the same draws."""
    weights = resample_counts(a.rows.shape[0]) if weights is None else weights
    estimate = float(metric_from_sums(a, metric, a.rows.sum(0)) - metric_from_sums(b, metric, b.rows.sum(0)))
    differences = metric_from_sums(a, metric, weights @ a.rows) - metric_from_sums(b, metric, weights @ b.rows)
    return Interval(estimate, *_percentiles(differences))


def analyse(comparison: Comparison, scored: Callable[[RunRecord], Any]) -> dict[str, Any]:
    """Every interval, seed spread and pairwise test of a comparison, for the table, ``--json`` and the report.

    ``scored(run)`` gives a run's gold examples and predictions (from its ``predictions.jsonl``), or None
    when the store has none: that run gets no interval. Runs must share one test set (the test hash)."""
    import numpy as np

    groups = {name: [r for r in runs if r.status in MEASURED] for name, runs in by_approach(comparison).items()}
    headline = next((m for m in comparison.metrics if m not in COUNTS), None)
    result: dict[str, Any] = {"method": METHOD, "headline": headline, "intervals": {}, "seeds": {}, "pairs": [],
                              "best": None}
    per_run: dict[str, ExampleStats] = {}
    weights = None
    for runs in groups.values():
        for run in runs:
            data = scored(run)
            task = (run.training.get("identity") or {}).get("task") or {}
            if data is None or not data[0]:
                continue
            examples, predictions = data
            per_run[run.run_id] = example_stats(run.task_type, task.get("labels") or [], task.get("fields") or [],
                                                examples, predictions, bool(run.environment.get("normalize", True)))
            if weights is None or weights.shape[1] != len(examples):
                weights = resample_counts(len(examples))
            result["intervals"][run.run_id] = {
                metric: asdict(interval(per_run[run.run_id], metric, weights))
                for metric in comparison.metrics if metric not in COUNTS}
    for name, runs in groups.items():
        measured = [r for r in runs if r.run_id in per_run]
        if len(measured) > 1:
            seeds = {}
            for metric in comparison.metrics:
                if metric in COUNTS:
                    continue
                spread_ = Spread.of([result["intervals"][r.run_id][metric]["estimate"] for r in measured])
                half = statistics.fmean(Interval(**result["intervals"][r.run_id][metric]).half_width for r in measured)
                seeds[metric] = {"sd": spread_.sd, "ci_half_width": half,
                                 "larger": "seeds" if (spread_.sd or 0) > half else "test sample"}
            result["seeds"][name] = seeds
    if headline is None:
        return result
    names = [n for n, runs in groups.items() if any(r.run_id in per_run for r in runs)]
    hashes = {r.test_hash for n in names for r in groups[n]}
    if len(hashes) > 1:
        raise ValueError("runs scored on different test sets (test hashes " + ", ".join(sorted(h[:12] for h in hashes))
                         + ") cannot be compared example by example")
    pairs = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            matched = _matched(groups[a], groups[b], per_run)
            if not matched:
                continue
            rows_a, rows_b = (sum(per_run[x].rows for x in side) for side in zip(*matched))
            first_a, first_b = per_run[matched[0][0]], per_run[matched[0][1]]
            pooled_a = ExampleStats(first_a.task_type, rows_a, first_a.correct, first_a.n_labels)
            pooled_b = ExampleStats(first_b.task_type, rows_b, first_b.correct, first_b.n_labels)
            difference = paired_difference(pooled_a, pooled_b, headline, weights)
            correct_a = np.concatenate([per_run[x].correct for x, _ in matched])
            correct_b = np.concatenate([per_run[y].correct for _, y in matched])
            p, only_a, only_b = mcnemar_exact(correct_a, correct_b)
            pairs.append({"a": a, "b": b, "metric": headline, "difference": difference.estimate,
                          "low": difference.low, "high": difference.high, "p": p, "a_only_right": only_a,
                          "b_only_right": only_b, "seeds": len(matched), "n": int(correct_a.size)})
    for pair, adjusted in zip(pairs, holm([p["p"] for p in pairs])):
        pair["p_holm"] = adjusted
        pair["significant"] = adjusted < ALPHA
    result["pairs"] = pairs
    result["best"] = _significantly_best(names, pairs)
    return result


def _matched(a: list[RunRecord], b: list[RunRecord], per_run: dict[str, ExampleStats]) -> list[tuple[str, str]]:
    """The runs of two approaches to pair: those of the same seed, else in order."""
    a = [r for r in a if r.run_id in per_run]
    b = [r for r in b if r.run_id in per_run]
    by_seed = {r.seed: r.run_id for r in b}
    same = [(r.run_id, by_seed[r.seed]) for r in a if r.seed in by_seed]
    return same or [(x.run_id, y.run_id) for x, y in zip(a, b)]


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


def pair_line(pair: dict[str, Any], title: str) -> str:
    """One pairwise comparison in words: ``bert vs qwen: +0.004 F1 [-0.002, +0.010], p = 0.21 (Holm) — not a
    significant difference``."""
    p = pair["p_holm"]
    p_text = "p < 0.001" if p < 0.001 else f"p = {p:.3f}" if p < 0.01 else f"p = {p:.2f}"
    if pair["significant"]:
        winner = pair["a"] if pair["difference"] > 0 else pair["b"]
        verdict = f"{winner} is significantly better"
    else:
        verdict = "not a significant difference"
    seeds = f" over {pair['seeds']} seeds" if pair["seeds"] > 1 else ""
    return (f"{pair['a']} vs {pair['b']}: {pair['difference']:+.3f} {title} [{pair['low']:+.3f}, {pair['high']:+.3f}]"
            f"{seeds}, {p_text} (McNemar, Holm) — {verdict}")
