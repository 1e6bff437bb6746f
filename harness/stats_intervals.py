"""Bootstrap intervals over one run's test examples: each example a row whose sums give every headline metric.

Uncertainty over the test examples, NumPy, vectorised: every resample is a row of multinomial counts over the
examples, and a metric is computed from counts summed per resample (a confusion matrix, or true/false
positives), so 1,000 resamples of 2,000 examples cost one matrix product. The pairs of rows are tested on the
same sums (harness.stats_pairs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

RESAMPLES = 1000
PAIR_RESAMPLES = 10_000  # a pair's interval and test: enough draws to resolve p < 0.001
CONFIDENCE = 0.95
BOOTSTRAP_SEED = 0  # every interval is seeded: a report renders the same figures each time
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


def example_stats(
    task_type: str, labels: Any, fields: Any, examples: list[Any], predictions: list[Any], normalize: bool = True
) -> ExampleStats:
    """Classification: each example one-hot in the cell (gold, predicted) of a K x (K + 1) confusion matrix
    (the last column: no valid label). Extraction: exact record, valid answer, and true positives, false
    positives and false negatives summed over its fields (harness.metrics.record_outcome)."""
    import numpy as np

    from harness.metrics import record_outcome

    if task_type == "extraction":
        outcomes = [record_outcome(fields, ex.fields, p.fields, normalize) for ex, p in zip(examples, predictions)]
        rows = np.array(
            [
                [o["exact"], o["valid"], *(sum(c[k] for c in o["fields"].values()) for k in ("tp", "fp", "fn"))]
                for o in outcomes
            ],
            dtype=float,
        ).reshape(len(outcomes), 5)
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


def resample_counts(n: int, resamples: int = RESAMPLES, seed: int | list[int] = BOOTSTRAP_SEED) -> Any:
    """``resamples`` bootstrap resamples of ``n`` examples, each a row of how often each example was drawn."""
    import numpy as np

    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, n, size=(resamples, n))
    offsets = (np.arange(resamples)[:, None] * n + drawn).ravel()
    return np.bincount(offsets, minlength=resamples * n).reshape(resamples, n).astype(float)


def resample_blocks(n: int, resamples: int = PAIR_RESAMPLES, block: int = RESAMPLES) -> Any:
    """:func:`resample_counts` in blocks of ``block`` rows (memory stays ``block`` x ``n``), seeded: the first
    block is the intervals' own resamples, block ``i`` after it is seeded ``[BOOTSTRAP_SEED, i]``."""
    for index in range(-(-resamples // block)):
        yield resample_counts(
            n, min(block, resamples - index * block), BOOTSTRAP_SEED if index == 0 else [BOOTSTRAP_SEED, index]
        )


def percentile(values: Any, q: float) -> float:
    """The q-th percentile (0-100) of ``values``, linearly interpolated (numpy's default): latency tails and
    bootstrap interval ends are read the same way."""
    import numpy as np

    return float(np.percentile(values, q))


def _percentiles(values: Any) -> tuple[float, float]:
    tail = (1 - CONFIDENCE) / 2 * 100
    return percentile(values, tail), percentile(values, 100 - tail)


def interval(stats_: ExampleStats, metric: str, weights: Any = None) -> Interval:
    """The metric on the test set and its percentile bootstrap interval."""
    weights = resample_counts(stats_.rows.shape[0]) if weights is None else weights
    estimate = float(metric_from_sums(stats_, metric, stats_.rows.sum(0)))
    return Interval(estimate, *_percentiles(metric_from_sums(stats_, metric, weights @ stats_.rows)))
