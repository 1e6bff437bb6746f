"""The report's statistics against hand-computed cases and a seeded simulation."""

from __future__ import annotations

import numpy as np
import pytest

from harness import stats
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
    data = stats.example_stats("classification", labels, (), examples, predictions)
    core = classification_metrics(labels, [e.label for e in examples], [p.label for p in predictions])
    for metric in ("accuracy", "f1_weighted", "f1_macro", "precision_weighted", "recall_weighted", "precision_macro",
                   "recall_macro"):
        assert float(stats.metric_from_sums(data, metric, data.rows.sum(0))) == pytest.approx(core[metric], abs=1e-12)

    fields = ("name", "city")
    gold = [{"name": "Ana", "city": "Oslo"}, {"name": "Ben", "city": ""}, {"name": "Chen", "city": "Lima"}, {"name": "", "city": "Rome"}]
    predicted = [{"name": "Ana", "city": "Oslo"}, {"name": "Ben", "city": "Riga"}, None, {"name": "Fay"}]
    examples = [Example(str(i), "t", fields=g) for i, g in enumerate(gold)]
    data = stats.example_stats("extraction", (), fields, examples, [Prediction(fields=p) for p in predicted])
    core = extraction_metrics(fields, gold, predicted)
    for metric in ("exact_match", "valid_rate", "field_f1", "field_precision", "field_recall"):
        assert float(stats.metric_from_sums(data, metric, data.rows.sum(0))) == pytest.approx(core[metric], abs=1e-12)
    assert list(data.correct) == [True, False, False, False]


def test_mcnemar_exact_p_value_of_a_known_table():
    # 1 example only a gets right, 9 only b: two-sided binomial, 2 * P(X <= 1 | 10, 1/2) = 2 * 11 / 1024.
    a = [True] * 20 + [True] + [False] * 9 + [False] * 5
    b = [True] * 20 + [False] + [True] * 9 + [False] * 5
    p, only_a, only_b = stats.mcnemar_exact(a, b)
    assert (only_a, only_b) == (1, 9) and p == pytest.approx(22 / 1024, abs=1e-12)
    assert stats.mcnemar_exact(a, a) == (1.0, 0, 0)


def test_holm_adjusts_step_down_and_keeps_order():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])


def test_paired_bootstrap_interval_covers_the_true_difference_at_about_the_nominal_rate():
    """200 seeded test sets of 300 examples from two correlated classifiers whose true accuracies differ by
    0.05: the 95% paired bootstrap interval of the accuracy difference should cover 0.05 about 95% of the time."""
    rng = np.random.default_rng(7)
    covered = 0
    trials = 200
    weights = stats.resample_counts(300)
    for _ in range(trials):
        shared = rng.random(300)
        a_right = shared < 0.80
        b_right = np.where(rng.random(300) < 0.5, shared < 0.75, rng.random(300) < 0.75)
        a = stats.ExampleStats("extraction", np.column_stack([a_right, a_right, a_right, ~a_right, ~a_right]).astype(float), a_right)
        b = stats.ExampleStats("extraction", np.column_stack([b_right, b_right, b_right, ~b_right, ~b_right]).astype(float), b_right)
        difference = stats.paired_difference(a, b, "exact_match", weights)
        covered += difference.low <= 0.05 <= difference.high
    assert 0.88 <= covered / trials <= 0.99, covered / trials


def test_an_interval_brackets_its_estimate_and_narrows_with_more_examples():
    labels = ("a", "b", "c", "d")
    small = stats.interval(stats.example_stats("classification", labels, (), *classified(100, seed=2)), "accuracy")
    large = stats.interval(stats.example_stats("classification", labels, (), *classified(2000, seed=2)), "accuracy")
    assert small.low < small.estimate < small.high and large.low < large.estimate < large.high
    assert large.half_width < small.half_width / 3  # about 1 / sqrt(20)
