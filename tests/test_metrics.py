from __future__ import annotations

import pytest

from harness.metrics import INVALID, classification_metrics


def test_metrics_match_hand_computed_values():
    gold = ["a", "a", "a", "b", "b", "c"]
    pred = ["a", "a", "b", "b", None, "c"]
    m = classification_metrics(["a", "b", "c"], gold, pred)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # a: P 1, R 2/3, F1 0.8; b: P 1/2, R 1/2, F1 1/2; c: P 1, R 1, F1 1 (the None is wrong, never a label)
    assert m["per_class"]["a"] == {"precision": 1.0, "recall": pytest.approx(2 / 3), "f1": pytest.approx(0.8), "support": 3}
    assert m["f1_macro"] == pytest.approx((0.8 + 0.5 + 1.0) / 3)
    assert m["f1_weighted"] == pytest.approx((3 * 0.8 + 2 * 0.5 + 1 * 1.0) / 6)
    assert m["invalid"] == 1
    assert m["confusion_matrix"] == {"labels": ["a", "b", "c", INVALID], "matrix": [[2, 1, 0, 0], [0, 1, 0, 1], [0, 0, 1, 0]]}


def test_extraction_exact_match_needs_every_field_and_counts_answers_that_were_no_record():
    from harness.metrics import extraction_metrics

    gold = [{"name": "Ana", "city": "Oslo"}, {"name": "Ben", "city": "Lima"}, {"name": "Chen", "city": ""}]
    predicted = [{"name": "Ana", "city": "Oslo"}, {"name": "Ben", "city": "Riga"}, None]
    metrics = extraction_metrics(("name", "city"), gold, predicted)
    assert metrics["exact_match"] == 1 / 3 and metrics["invalid"] == 1 and metrics["n"] == 3
    assert metrics["per_field"] == {"name": 2 / 3, "city": 1 / 3}
    # A field the answer leaves out is the empty string: right where the gold value is empty.
    assert extraction_metrics(("name", "city"), gold[2:], [{"name": "Chen"}])["exact_match"] == 1.0
