"""How often a pair line says "significantly better": simulated test sets scored by two simulated approaches.

Each test set has ``n`` examples of 4 classes, each example a difficulty drawn uniformly. An approach of
quality ``q`` answers an example right where its difficulty is below ``q`` (examples hard for one approach
are hard for the other: the two are correlated, as real models are), except that each seed answers 20% of
the examples afresh (right with probability ``q``), and a wrong answer is another class at random. With equal
``q`` the two approaches are equally good; the verdict is harness.stats_pairs.compare_pairs', F1 (w) as headline.

    python tests/stats_simulation.py            # the table in docs/benchmarks.md (about 15 minutes on 2 cores)

``seed_sd`` adds a whole-model shift per seed (the seed's ``q`` drawn around the approach's): the pair test is
about the models trained, over the test sample, and the almost-stochastic-order line is what speaks to seeds.
"""

from __future__ import annotations

import numpy as np

from harness import stats_intervals, stats_pairs

LABELS = 4


def _seed_stats(rng, gold, difficulty, quality: float, seed_sd: float = 0.0) -> stats_intervals.ExampleStats:
    n = gold.size
    q = quality + rng.normal(0, seed_sd) if seed_sd else quality
    right = np.where(rng.random(n) < 0.8, difficulty < q, rng.random(n) < q)
    predicted = np.where(right, gold, (gold + rng.integers(1, LABELS, n)) % LABELS)
    rows = np.zeros((n, LABELS * (LABELS + 1)))
    rows[np.arange(n), gold * (LABELS + 1) + predicted] = 1.0
    return stats_intervals.ExampleStats("classification", rows, right, LABELS)


def simulate(
    seeds: int,
    n: int = 200,
    quality: float = 0.75,
    delta: float = 0.0,
    trials: int = 200,
    seed: int = 0,
    seed_sd: float = 0.0,
    headline: str = "f1_weighted",
    resamples: int = stats_intervals.PAIR_RESAMPLES,
) -> dict[str, float]:
    """Of ``trials`` simulated test sets, the share whose pair line calls either approach significantly better
    (a's quality ``quality + delta``, b's ``quality``), the share where it names ``a``, and the share where the
    seeds' own verdict (almost stochastic order, 3 seeds a side or more) names either."""
    rng = np.random.default_rng(seed)
    said = right = ordered = 0
    for _ in range(trials):
        gold = rng.integers(0, LABELS, n)
        difficulty = rng.random(n)
        rows = {
            name: [_seed_stats(rng, gold, difficulty, q, seed_sd) for _ in range(seeds)]
            for name, q in (("a", quality + delta), ("b", quality))
        }
        pair = stats_pairs.compare_pairs(rows, headline, resamples)[0]
        said += pair["significant"]
        right += pair["significant"] and pair["difference"] > 0
        ordered += bool(pair.get("seeds_test", {}).get("better"))
    return {"significant": said / trials, "a_named": right / trials, "seeds_order": ordered / trials}


if __name__ == "__main__":
    print(
        "| seeds a side | true difference (accuracy) | seed sd | 'significantly better' | the better one named "
        "| seeds' verdict names one |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for seeds in (1, 3, 5):
        for delta, seed_sd in ((0.0, 0.0), (0.0, 0.02), (0.03, 0.0), (0.05, 0.0)):
            figure = simulate(seeds, delta=delta, seed_sd=seed_sd)
            named = f"{figure['a_named']:.1%}" if delta else "-"
            order = f"{figure['seeds_order']:.1%}" if seeds >= stats_pairs.ASO_MIN_SEEDS else "-"
            print(f"| {seeds} | {delta:+.2f} | {seed_sd} | {figure['significant']:.1%} | {named} | {order} |")
