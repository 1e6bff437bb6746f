"""Pairs of rows tested on the headline metric: paired bootstrap with Holm, McNemar, almost stochastic order.

The paired bootstrap of the headline difference decides; McNemar's exact test (one seed a row) and almost
stochastic order (several seeds) are labelled second lines. scipy gives the exact binomial test and the
normal quantile. :func:`pair_lines` says a pair in words."""

from __future__ import annotations

import math
from typing import Any

from harness.stats_intervals import (
    BOOTSTRAP_SEED,
    CONFIDENCE,
    PAIR_RESAMPLES,
    RESAMPLES,
    ExampleStats,
    metric_from_sums,
    resample_blocks,
)

ALPHA = 0.05
ASO_THRESHOLD = 0.2  # eps_min below it: one row's seeds almost stochastically dominate the other's (Ulmer et al. 2022)
ASO_MIN_SEEDS = 3


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


def seed_mean(runs: list[ExampleStats], metric: str, sums: Any) -> Any:
    """The metric averaged over a row's seeds, each seed's figure from its own sums (``sums``: seeds x ... x d)."""
    import numpy as np

    return np.mean([metric_from_sums(run, metric, total) for run, total in zip(runs, sums)], axis=0)


def paired_difference(
    a: ExampleStats | list[ExampleStats],
    b: ExampleStats | list[ExampleStats],
    metric: str,
    resamples: int = PAIR_RESAMPLES,
) -> dict[str, Any]:
    """``a``'s metric minus ``b``'s on the same test examples (each side one run, or its seeds' mean), with a
    paired bootstrap: both sides resampled with the same draws of examples, every seed's answer to an example
    drawn with it, so seeds are nested within the example (the unit of resampling). The 95% percentile interval
    and the two-sided p-value come from the same draws: ``p = 2 min(P*(d <= 0), P*(d >= 0))`` (each count + 1
    over resamples + 1), and the interval's ends are the order statistics for which p < 0.05 exactly when the
    interval leaves out 0, ties at 0 included."""
    import numpy as np

    a, b = (side if isinstance(side, list) else [side] for side in (a, b))
    runs = a + b
    width = runs[0].rows.shape[1]
    stacked = np.concatenate([run.rows for run in runs], axis=1)  # one product per block for every seed of both

    def difference(sums: Any) -> Any:
        per_run = np.moveaxis(sums.reshape(*sums.shape[:-1], len(runs), width), -2, 0)
        return seed_mean(a, metric, per_run[: len(a)]) - seed_mean(b, metric, per_run[len(a) :])

    estimate = float(difference(stacked.sum(0)))
    draws = np.sort(
        np.concatenate([difference(weights @ stacked) for weights in resample_blocks(stacked.shape[0], resamples)])
    )
    # The bounds are order statistics: the (k+1)-th draw from each end, k the most draws on one side of 0 that
    # still give p < 1 - CONFIDENCE (k = 249 of 10,000), so that the interval leaves out 0 exactly when p says so.
    k = max(0, math.ceil((1 - CONFIDENCE) * (draws.size + 1) / 2 - 1) - 1)
    tail = min(int((draws <= 0).sum()), int((draws >= 0).sum()))
    return {
        "difference": estimate,
        "low": float(draws[k]),
        "high": float(draws[draws.size - 1 - k]),
        "p": min(1.0, 2 * (tail + 1) / (draws.size + 1)),
        "resamples": int(draws.size),
    }


def violation_ratio(a: Any, b: Any, dt: float = 0.005) -> Any:
    """Dror et al. (2019)'s violation ratio of ``a`` over ``b`` (scores, last axis; leading axes vectorised):
    the share of the squared Wasserstein-2 distance between their empirical quantile functions where ``b``'s
    quantile is above ``a``'s. 0: ``a`` stochastically dominates ``b``; 0.5 with equal distributions."""
    import numpy as np

    t = np.arange(dt, 1, dt)

    def quantiles(scores: Any) -> Any:
        ordered = np.sort(scores, axis=-1)
        index = np.clip(np.ceil(scores.shape[-1] * t).astype(int) - 1, 0, scores.shape[-1] - 1)
        return ordered[..., index]

    f, g = quantiles(np.asarray(a, float)), quantiles(np.asarray(b, float))
    squared = ((g - f) ** 2 * dt).sum(-1)
    violated = (np.where(f < g, g - f, 0.0)[..., 1:] ** 2 * dt).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(squared > 0, violated / np.where(squared > 0, squared, 1), 0.5)


def aso(
    a: list[float],
    b: list[float],
    comparisons: int = 1,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    dt: float = 0.005,
) -> float:
    """Almost stochastic order (Dror et al. 2019, as deepsig's ``aso``): eps_min, an upper bound on how far
    ``a``'s scores (higher is better) fail to stochastically dominate ``b``'s at ``confidence``, Bonferroni
    over ``comparisons``. Below :data:`ASO_THRESHOLD`: ``a`` is better; near 0.5: no order. The violation
    ratio's spread comes from ``resamples`` bootstrap draws of each side's scores, seeded."""
    import numpy as np
    from scipy.stats import norm

    a_, b_ = np.asarray(a, float), np.asarray(b, float)
    confidence = 1 - (1 - confidence) / comparisons  # Bonferroni (deepsig's own correction is milder past 2)
    observed = float(violation_ratio(a_, b_, dt))
    rng = np.random.default_rng(seed)
    draws = violation_ratio(rng.choice(a_, (resamples, a_.size)), rng.choice(b_, (resamples, b_.size)), dt)
    const = np.sqrt(a_.size * b_.size / (a_.size + b_.size))
    sigma = float(np.std(const * (draws - observed)))
    return float(np.clip(observed - sigma / const * norm.ppf(1 - confidence), 0, 1))


def compare_pairs(
    rows: dict[str, list[ExampleStats]], headline: str, resamples: int = PAIR_RESAMPLES
) -> list[dict[str, Any]]:
    """Every pair of rows (each a list of its seeds' test-set stats, on the same examples in the same order):
    the headline difference with its paired bootstrap interval and p-value, Holm-adjusted across pairs, and the
    verdict; McNemar's exact test where both rows have one seed; almost stochastic order over the per-seed
    headline figures where both have :data:`ASO_MIN_SEEDS` or more."""
    names = list(rows)
    pairs = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            runs_a, runs_b = rows[a], rows[b]
            pair = {
                "a": a,
                "b": b,
                "metric": headline,
                "seeds": [len(runs_a), len(runs_b)],
                "n": int(runs_a[0].rows.shape[0]),
                "test": "paired bootstrap",
                **paired_difference(runs_a, runs_b, headline, resamples),
            }
            if len(runs_a) == len(runs_b) == 1:  # McNemar's exact test assumes one answer per example and row
                p, only_a, only_b = mcnemar_exact(runs_a[0].correct, runs_b[0].correct)
                pair["mcnemar"] = {
                    "metric": "exact_match" if runs_a[0].task_type == "extraction" else "accuracy",
                    "p": p,
                    "a_only_right": only_a,
                    "b_only_right": only_b,
                }
            if min(len(runs_a), len(runs_b)) >= ASO_MIN_SEEDS:
                pair["seed_figures"] = [
                    [float(metric_from_sums(r, headline, r.rows.sum(0))) for r in side] for side in (runs_a, runs_b)
                ]
            pairs.append(pair)
    for pair, adjusted in zip(pairs, holm([p["p"] for p in pairs])):
        pair["p_holm"] = adjusted
        # The word follows the test of the headline difference, and only where its interval agrees in sign
        # (with p from the interval's own draws it always does, but for an estimate outside its interval).
        ahead = pair["low"] > 0 if pair["difference"] > 0 else pair["high"] < 0 if pair["difference"] < 0 else False
        pair["significant"] = bool(adjusted < ALPHA and ahead)
    tested = [pair for pair in pairs if "mcnemar" in pair]
    for pair, adjusted in zip(tested, holm([p["mcnemar"]["p"] for p in tested])):
        pair["mcnemar"]["p_holm"] = adjusted
    ordered = [pair for pair in pairs if "seed_figures" in pair]
    for pair in ordered:
        a_scores, b_scores = pair.pop("seed_figures")
        forward, backward = (
            aso(x, y, comparisons=len(ordered)) for x, y in ((a_scores, b_scores), (b_scores, a_scores))
        )
        verdict = pair["a"] if forward < ASO_THRESHOLD else pair["b"] if backward < ASO_THRESHOLD else None
        pair["seeds_test"] = {
            "test": "almost stochastic order",
            "a_scores": a_scores,
            "b_scores": b_scores,
            "eps_min_a_over_b": forward,
            "eps_min_b_over_a": backward,
            "threshold": ASO_THRESHOLD,
            "better": verdict,
            "chance_separated": chance_separated(len(a_scores), len(b_scores)),
        }
    return pairs


def chance_separated(a: int, b: int) -> float:
    """How often ``a`` and ``b`` seeds of two equally good rows come out completely ordered (every seed of one
    above every seed of the other) by chance alone: 2 / C(a + b, a). 3 against 3: 0.1, so no ordering of so few
    seeds can be significant at 0.05, and almost stochastic order then names a row more often than that."""
    from math import comb

    return 2 / comb(a + b, a)


def _p_text(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}" if p < 0.01 else f"p = {p:.2f}"


def pair_lines(pair: dict[str, Any], title: str) -> list[str]:
    """One pairwise comparison in words, then a line for each other test that applied: ``bert vs qwen: +0.004 F1
    [-0.002, +0.010], p = 0.21 (paired bootstrap, Holm) — not a significant difference``."""
    if pair["significant"]:
        verdict = f"{pair['a'] if pair['difference'] > 0 else pair['b']} is significantly better"
    else:
        verdict = "not a significant difference"
    seeds = pair["seeds"]
    nested = f", {seeds[0]} and {seeds[1]} seeds nested in {pair['n']} examples" if max(seeds) > 1 else ""
    lines = [
        f"{pair['a']} vs {pair['b']}: {pair['difference']:+.3f} {title} [{pair['low']:+.3f}, {pair['high']:+.3f}], "
        f"{_p_text(pair['p_holm'])} ({pair['test']}{nested}, Holm) — {verdict}"
    ]
    mcnemar = pair.get("mcnemar")
    if mcnemar and "p_holm" in mcnemar:
        what = "exact record" if mcnemar["metric"] == "exact_match" else "accuracy"
        lines.append(
            f"  McNemar's exact test on {what}: {pair['a']} alone right {mcnemar['a_only_right']}, "
            f"{pair['b']} alone right {mcnemar['b_only_right']}, {_p_text(mcnemar['p_holm'])} (Holm)"
        )
    elif max(seeds) > 1:
        lines.append("  McNemar's test left out: it takes one answer per example and row")
    order = pair.get("seeds_test")
    if order:
        said = (
            f"{order['better']}'s seeds almost stochastically dominate"
            if order["better"]
            else "neither row's seeds dominate"
        )
        if order["better"] and order["chance_separated"] > ALPHA:
            said += (
                f" (with {seeds[0]} and {seeds[1]} seeds, chance alone orders two equal rows completely "
                f"{order['chance_separated']:.0%} of the time)"
            )
        lines.append(
            f"  seeds (almost stochastic order, {seeds[0]} vs {seeds[1]}): eps_min {pair['a']} over {pair['b']} "
            f"{order['eps_min_a_over_b']:.2f}, {pair['b']} over {pair['a']} {order['eps_min_b_over_a']:.2f} "
            f"(below {order['threshold']}: better) — {said}"
        )
    return lines
