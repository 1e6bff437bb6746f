"""The report's statistics against hand-computed cases and a seeded simulation."""

from __future__ import annotations

import numpy as np
import pytest

from harness import stats_analysis, stats_intervals, stats_pairs
from harness.metrics import classification_metrics, extraction_metrics
from harness.types import Example, Prediction


def classified(n: int, seed: int, labels=("a", "b", "c", "d"), skill: float = 0.7):
    rng = np.random.default_rng(seed)
    gold = rng.choice(labels, n)
    answers = [g if rng.random() < skill else (rng.choice(labels) if rng.random() < 0.9 else None) for g in gold]
    return [Example(str(i), "t", label=str(g)) for i, g in enumerate(gold)], [Prediction(label=a) for a in answers]


def test_metrics_from_summed_rows_equal_the_cores_metrics():
    labels = ("a", "b", "c", "d")
    examples, predictions = classified(300, seed=1, labels=labels)
    data = stats_intervals.example_stats("classification", labels, (), examples, predictions)
    core = classification_metrics(labels, [e.label for e in examples], [p.label for p in predictions])
    for metric in (
        "accuracy",
        "f1_weighted",
        "f1_macro",
        "precision_weighted",
        "recall_weighted",
        "precision_macro",
        "recall_macro",
    ):
        assert float(stats_intervals.metric_from_sums(data, metric, data.rows.sum(0))) == pytest.approx(
            core[metric], abs=1e-12
        )

    fields = ("name", "city")
    gold = [
        {"name": "Ana", "city": "Oslo"},
        {"name": "Ben", "city": ""},
        {"name": "Chen", "city": "Lima"},
        {"name": "", "city": "Rome"},
    ]
    predicted = [{"name": "Ana", "city": "Oslo"}, {"name": "Ben", "city": "Riga"}, None, {"name": "Fay"}]
    examples = [Example(str(i), "t", fields=g) for i, g in enumerate(gold)]
    data = stats_intervals.example_stats("extraction", (), fields, examples, [Prediction(fields=p) for p in predicted])
    core = extraction_metrics(fields, gold, predicted)
    for metric in ("exact_match", "valid_rate", "field_f1", "field_precision", "field_recall"):
        assert float(stats_intervals.metric_from_sums(data, metric, data.rows.sum(0))) == pytest.approx(
            core[metric], abs=1e-12
        )
    assert list(data.correct) == [True, False, False, False]


def test_mcnemar_exact_p_value_of_a_known_table():
    # 1 example only a gets right, 9 only b: two-sided binomial, 2 * P(X <= 1 | 10, 1/2) = 2 * 11 / 1024.
    a = [True] * 20 + [True] + [False] * 9 + [False] * 5
    b = [True] * 20 + [False] + [True] * 9 + [False] * 5
    p, only_a, only_b = stats_pairs.mcnemar_exact(a, b)
    assert (only_a, only_b) == (1, 9) and p == pytest.approx(22 / 1024, abs=1e-12)
    assert stats_pairs.mcnemar_exact(a, a) == (1.0, 0, 0)


def test_holm_adjusts_step_down_and_keeps_order():
    assert stats_pairs.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats_pairs.holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])


def test_paired_bootstrap_interval_covers_the_true_difference_at_about_the_nominal_rate():
    """200 seeded test sets of 300 examples from two correlated classifiers whose true accuracies differ by
    0.05: the 95% paired bootstrap interval of the accuracy difference should cover 0.05 about 95% of the time."""
    rng = np.random.default_rng(7)
    covered = 0
    trials = 200
    for _ in range(trials):
        shared = rng.random(300)
        a_right = shared < 0.80
        b_right = np.where(rng.random(300) < 0.5, shared < 0.75, rng.random(300) < 0.75)
        a = stats_intervals.ExampleStats(
            "extraction", np.column_stack([a_right, a_right, a_right, ~a_right, ~a_right]).astype(float), a_right
        )
        b = stats_intervals.ExampleStats(
            "extraction", np.column_stack([b_right, b_right, b_right, ~b_right, ~b_right]).astype(float), b_right
        )
        difference = stats_pairs.paired_difference(a, b, "exact_match", 1000)
        covered += difference["low"] <= 0.05 <= difference["high"]
    assert 0.88 <= covered / trials <= 0.99, covered / trials


def test_an_interval_brackets_its_estimate_and_narrows_with_more_examples():
    labels = ("a", "b", "c", "d")
    small = stats_intervals.interval(
        stats_intervals.example_stats("classification", labels, (), *classified(100, seed=2)), "accuracy"
    )
    large = stats_intervals.interval(
        stats_intervals.example_stats("classification", labels, (), *classified(2000, seed=2)), "accuracy"
    )
    assert small.low < small.estimate < small.high and large.low < large.estimate < large.high
    assert large.half_width < small.half_width / 3  # about 1 / sqrt(20)


# ---------------------------------------------------------------------------------------------------------------
# Pair verdicts: the word, the sign and the bold come from one test of the headline difference.
# ---------------------------------------------------------------------------------------------------------------


def one_hot(gold: list[str], predicted: list[str], labels=("x", "y", "z")) -> stats_intervals.ExampleStats:
    examples = [Example(str(i), "t", label=g) for i, g in enumerate(gold)]
    return stats_intervals.example_stats(
        "classification", labels, (), examples, [Prediction(label=p) for p in predicted]
    )


def more_accurate_but_worse_macro_f1() -> tuple[stats_intervals.ExampleStats, stats_intervals.ExampleStats]:
    """The issue's reproduction: ``a`` answers the majority class always (accuracy 0.80, macro F1 0.30); ``b`` is
    right on 680 of the 800 x's and 40 of each 100 y's and z's (accuracy 0.76, macro F1 0.55). ``a`` alone is
    right 120 times, ``b`` alone 80 times: McNemar p = 0.006 favours ``a``; the macro F1 difference is -0.25."""
    gold = ["x"] * 800 + ["y"] * 100 + ["z"] * 100
    b = ["x"] * 680 + ["y"] * 60 + ["z"] * 60 + ["y"] * 40 + ["x"] * 60 + ["z"] * 40 + ["x"] * 60
    return one_hot(gold, ["x"] * 1000), one_hot(gold, b)


def test_the_verdict_tests_the_headline_metric_not_accuracy():
    a, b = more_accurate_but_worse_macro_f1()
    (pair,) = stats_pairs.compare_pairs({"a": [a], "b": [b]}, "f1_macro")
    assert pair["difference"] == pytest.approx(0.2963 - 0.55, abs=1e-3)
    assert pair["significant"] and pair["high"] < 0 and pair["p_holm"] < 0.001
    assert (pair["mcnemar"]["a_only_right"], pair["mcnemar"]["b_only_right"]) == (120, 80)
    assert pair["mcnemar"]["p_holm"] == pytest.approx(0.0057, abs=5e-4)  # McNemar favours a: a second, labelled line
    first, mcnemar = stats_pairs.pair_lines(pair, "F1 (m)")
    assert first.startswith("a vs b: -0.254 F1 (m) [") and first.endswith(
        "(paired bootstrap, Holm) — b is significantly better"
    )
    assert mcnemar == "  McNemar's exact test on accuracy: a alone right 120, b alone right 80, p = 0.006 (Holm)"
    assert stats_analysis._significantly_best(["a", "b"], [pair]) == "b"
    # Accuracy as headline: the same data, the other verdict, and still one that agrees with its own sign.
    (pair,) = stats_pairs.compare_pairs({"a": [a], "b": [b]}, "accuracy")
    assert pair["difference"] == pytest.approx(0.04) and pair["significant"] and pair["low"] > 0
    assert stats_pairs.pair_lines(pair, "Acc")[0].endswith("a is significantly better")


def test_word_sign_interval_and_p_agree_on_random_pairs():
    """On 60 random pairs of every kind of headline, a verdict names the side the difference favours, its
    interval leaves out 0 on that side, and p < 0.05 exactly when the interval leaves out 0 (one pair: no Holm)."""
    rng = np.random.default_rng(3)
    labels = ("a", "b", "c", "d")
    for trial in range(60):
        skill_a, skill_b = rng.uniform(0.4, 0.9, 2)
        n = int(rng.integers(30, 200))
        x = stats_intervals.example_stats("classification", labels, (), *classified(n, seed=trial, skill=skill_a))
        gold_examples, _ = classified(n, seed=trial, skill=skill_a)
        _, predictions = classified(n, seed=trial + 1000, skill=skill_b)
        answers = [p if rng.random() < 0.5 else Prediction(label=e.label) for p, e in zip(predictions, gold_examples)]
        y = stats_intervals.example_stats("classification", labels, (), gold_examples, answers)
        metric = ("f1_weighted", "f1_macro", "accuracy", "precision_macro")[trial % 4]
        (pair,) = stats_pairs.compare_pairs({"x": [x], "y": [y]}, metric, resamples=1000)
        assert (pair["p"] < 0.05) == (pair["low"] > 0 or pair["high"] < 0), pair
        if pair["significant"]:
            line = stats_pairs.pair_lines(pair, metric)[0]
            winner = "x" if pair["difference"] > 0 else "y"
            assert line.endswith(f"{winner} is significantly better")
            assert (pair["low"] > 0) if winner == "x" else (pair["high"] < 0)


def test_seeds_with_identical_answers_do_not_make_a_difference_significant():
    """Three seeds that answer exactly as one did are one seed's evidence: concatenating them as independent
    examples turned McNemar's p = 0.077 into 0.0013 (five seeds: 3e-5). Seeds nested in the example leave the
    interval and p as one seed's."""
    gold = ["x", "y", "z", "x"] * 100
    wrong = {"x": "y", "y": "z", "z": "x"}
    # 280 both right, 57 both wrong, 39 only a right, 24 only b right.
    a_right = [True] * 280 + [False] * 57 + [True] * 39 + [False] * 24
    b_right = [True] * 280 + [False] * 57 + [False] * 39 + [True] * 24
    a = one_hot(gold, [g if r else wrong[g] for g, r in zip(gold, a_right)])
    b = one_hot(gold, [g if r else wrong[g] for g, r in zip(gold, b_right)])
    (one,) = stats_pairs.compare_pairs({"a": [a], "b": [b]}, "accuracy")
    assert one["mcnemar"]["p"] == pytest.approx(0.0769, abs=1e-4)
    assert one["p"] == pytest.approx(0.063, abs=0.01) and not one["significant"]
    for seeds in (3, 5):
        (many,) = stats_pairs.compare_pairs({"a": [a] * seeds, "b": [b] * seeds}, "accuracy")
        assert (many["difference"], many["low"], many["high"], many["p"]) == pytest.approx(
            (one["difference"], one["low"], one["high"], one["p"])
        )
        assert not many["significant"] and "mcnemar" not in many
        naive = stats_pairs.mcnemar_exact(np.concatenate([a.correct] * seeds), np.concatenate([b.correct] * seeds))[0]
        assert naive < 0.002  # what concatenating seeds claimed


def test_extraction_pairs_pool_seeds_as_a_mean_not_a_sum():
    """Exact record 0.60 against 0.50 is +0.100 with one seed and with three (it printed +0.300)."""

    def record(exact: int, n: int = 100) -> stats_intervals.ExampleStats:
        right = np.arange(n) < exact
        rows = np.column_stack([right, np.ones(n), right, ~right, ~right]).astype(float)
        return stats_intervals.ExampleStats("extraction", rows, right)

    for seeds in (1, 3):
        (pair,) = stats_pairs.compare_pairs({"a": [record(60)] * seeds, "b": [record(50)] * seeds}, "exact_match")
        assert pair["difference"] == pytest.approx(0.100)
        assert 0 < pair["low"] < 0.100 < pair["high"] < 0.2
    (uneven,) = stats_pairs.compare_pairs({"a": [record(60), record(62), record(58)], "b": [record(50)]}, "exact_match")
    assert uneven["difference"] == pytest.approx(0.100) and uneven["seeds"] == [3, 1]
    lines = stats_pairs.pair_lines(uneven, "Exact rec")
    assert "(paired bootstrap, 3 and 1 seeds nested in 100 examples, Holm)" in lines[0]
    assert lines[1] == "  McNemar's test left out: it takes one answer per example and row"
    assert "seeds_test" not in uneven  # almost stochastic order needs 3 seeds on both sides


@pytest.mark.parametrize("seeds", [1, 3, 5])
def test_equal_approaches_are_called_significantly_different_at_most_7_percent_of_the_time(seeds):
    """200 simulated test sets of two equally good approaches (tests/stats_simulation.py; 1,000 resamples here
    for time, docs/benchmarks.md has the table at the default 10,000 with the power)."""
    from stats_simulation import simulate

    figure = simulate(seeds, trials=200, resamples=1000)
    assert figure["significant"] <= 0.07, figure


def test_mcnemar_matches_statsmodels_exact_test():
    from statsmodels.stats.contingency_tables import mcnemar

    rng = np.random.default_rng(5)
    for _ in range(20):
        a, b = rng.random(int(rng.integers(5, 300))) < rng.uniform(0.2, 0.9, 2)[:, None]
        p, only_a, only_b = stats_pairs.mcnemar_exact(a, b)
        both, neither = int((a & b).sum()), int((~a & ~b).sum())
        assert p == pytest.approx(mcnemar([[both, only_a], [only_b, neither]], exact=True).pvalue, rel=1e-9)


def test_almost_stochastic_order_matches_deepsig():
    """The violation ratio to the digit, and eps_min within the bootstrap's own noise (1,000 draws each, with
    different generators), on score lists of 5 to 10 seeds; Bonferroni over two comparisons as deepsig's."""
    from deepsig.aso import aso as deepsig_aso
    from deepsig.aso import compute_violation_ratio

    rng = np.random.default_rng(2)
    cases = [
        (list(rng.normal(0.80, 0.02, 5)), list(rng.normal(0.79, 0.02, 5)), 1),
        (list(rng.normal(0.80, 0.02, 10)), list(rng.normal(0.80, 0.02, 8)), 2),
    ]
    for a, b, comparisons in cases:
        assert float(stats_pairs.violation_ratio(a, b)) == pytest.approx(
            compute_violation_ratio(scores_a=np.array(a), scores_b=np.array(b), dt=0.005), abs=1e-12
        )
        ours = stats_pairs.aso(a, b, comparisons=comparisons)
        theirs = deepsig_aso(a, b, seed=0, show_progress=False, num_comparisons=comparisons)
        assert ours == pytest.approx(theirs, abs=0.03), (a, b, comparisons)
    assert stats_pairs.aso([0.8, 0.8, 0.8], [0.7, 0.7, 0.7]) == 0.0  # a dominates b everywhere
    assert stats_pairs.aso([0.7, 0.7, 0.7], [0.8, 0.8, 0.8]) > 0.99


def test_three_seeds_a_side_add_the_seeds_own_verdict():
    def seeds(accuracies):
        return [
            stats_intervals.ExampleStats("extraction", np.column_stack([r, np.ones(200), r, ~r, ~r]).astype(float), r)
            for r in (np.arange(200) < int(200 * q) for q in accuracies)
        ]

    (pair,) = stats_pairs.compare_pairs({"a": seeds([0.80, 0.81, 0.82]), "b": seeds([0.70, 0.71, 0.72])}, "exact_match")
    order = pair["seeds_test"]
    assert order["a_scores"] == pytest.approx([0.80, 0.81, 0.82]) and order["better"] == "a"
    assert order["eps_min_a_over_b"] < stats_pairs.ASO_THRESHOLD < order["eps_min_b_over_a"]
    assert stats_pairs.pair_lines(pair, "Exact rec")[-1].endswith(
        "— a's seeds almost stochastically dominate (with 3 and 3 seeds, chance alone orders two equal rows "
        "completely 10% of the time)"
    )
    assert [stats_pairs.chance_separated(n, n) for n in (3, 4, 5)] == pytest.approx([0.1, 2 / 70, 2 / 252])
    (five,) = stats_pairs.compare_pairs(
        {"a": seeds([0.80, 0.81, 0.82, 0.80, 0.81]), "b": seeds([0.70, 0.71, 0.72, 0.70, 0.71])}, "exact_match"
    )
    assert stats_pairs.pair_lines(five, "Exact rec")[-1].endswith("— a's seeds almost stochastically dominate")
