from __future__ import annotations

import pytest

from harness.metrics import INVALID, classification_metrics


def test_metrics_match_hand_computed_values():
    gold = ["a", "a", "a", "b", "b", "c"]
    pred = ["a", "a", "b", "b", None, "c"]
    m = classification_metrics(["a", "b", "c"], gold, pred)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # a: P 1, R 2/3, F1 0.8; b: P 1/2, R 1/2, F1 1/2; c: P 1, R 1, F1 1 (the None is wrong, never a label)
    assert m["per_class"]["a"] == {
        "precision": 1.0,
        "recall": pytest.approx(2 / 3),
        "f1": pytest.approx(0.8),
        "support": 3,
    }
    assert m["f1_macro"] == pytest.approx((0.8 + 0.5 + 1.0) / 3)
    assert m["f1_weighted"] == pytest.approx((3 * 0.8 + 2 * 0.5 + 1 * 1.0) / 6)
    assert m["invalid"] == 1
    assert m["confusion_matrix"] == {
        "labels": ["a", "b", "c", INVALID],
        "matrix": [[2, 1, 0, 0], [0, 1, 0, 1], [0, 0, 1, 0]],
    }


def test_extraction_metrics_follow_every_counting_rule_on_a_hand_checked_fixture():
    """Six answers, each exercising one rule; every count below was worked out by hand."""
    from harness.metrics import extraction_metrics

    fields = ("name", "city")
    gold = [
        {"name": "Ana", "city": "Oslo"},  # 0: answered exactly
        {"name": "Ben", "city": "Lima"},  # 1: city wrong (a non-empty wrong value: FP and FN)
        {"name": "Chen", "city": ""},  # 2: not JSON at all (None): invalid, every field wrong
        {"name": "Dee", "city": None},  # 3: gold null, answer "" (same empty value); name in full-width letters
        {"name": "Eve", "city": ""},  # 4: answer lacks "city": invalid record, but the field counts as empty
        {"name": "", "city": "Rome"},  # 5: predicts a name where gold is empty: a false positive
    ]
    predicted = [
        {"name": "Ana", "city": "Oslo"},
        {"name": "Ben", "city": "Riga"},
        None,
        {"name": " Ｄｅｅ ", "city": ""},
        {"name": "Eve"},
        {"name": "Fay", "city": "Rome"},
    ]
    m = extraction_metrics(fields, gold, predicted)
    assert m["n"] == 6
    # 2 is no object, 4 an object without every field: both invalid answers, wrong records.
    assert m["valid_rate"] == 4 / 6 and m["invalid"] == 2
    m4 = extraction_metrics(fields, gold[4:5], predicted[4:5])
    assert m4["valid_rate"] == 0.0 and m4["exact_match"] == 0.0 and m4["per_field"]["city"]["accuracy"] == 1.0
    assert m["exact_match"] == 2 / 6  # 0 and 3
    name, city = m["per_field"]["name"], m["per_field"]["city"]
    # name: right in 0, 1, 3, 4; wrong in 2 (no answer) and 5 (Fay where gold is empty).
    assert name["accuracy"] == 4 / 6
    # non-empty predictions: Ana, Ben, Dee, Eve (TP), Fay (FP); non-empty gold: 5, Chen missed (FN).
    assert (name["precision"], name["recall"], name["support"]) == (4 / 5, 4 / 5, 5)
    # city: right in 0, 3, 4, 5; wrong in 1 (Riga) and 2. Predictions: Oslo, Rome (TP), Riga (FP);
    # gold non-empty: Oslo, Lima, Rome; Lima missed (FN).
    assert city["accuracy"] == 4 / 6
    assert (city["precision"], city["recall"], city["support"]) == (2 / 3, 2 / 3, 3)
    assert city["f1"] == pytest.approx(2 / 3)
    # Micro over both fields: TP 6, FP 2, FN 2.
    assert m["field_precision"] == m["field_recall"] == m["field_f1"] == pytest.approx(6 / 8)


def test_extraction_metrics_count_invalid_correctly_and_normalisation_can_be_switched_off():
    from harness.metrics import extraction_metrics, normalise

    gold = [{"name": "Dee", "city": ""}]
    assert extraction_metrics(("name", "city"), gold, [{"name": "Ｄｅｅ", "city": None}])["exact_match"] == 1.0
    assert (
        extraction_metrics(("name", "city"), gold, [{"name": "Ｄｅｅ", "city": None}], unicode=False)["exact_match"]
        == 0.0
    )
    assert normalise(None) == normalise("") == normalise("  ") == ""
    assert normalise(12) == "12" and normalise("１２３") == "123"
