"""The core's metrics, as a plugin of ``harness_score``: scikit-learn, not hand-written formulas."""

from __future__ import annotations

import json
from typing import Any, Sequence

import pluggy

from harness.types import Example, Prediction, Task

hookimpl = pluggy.HookimplMarker("harness")

# A prediction with no valid label is scored as this label, which is never gold: always wrong.
INVALID = "<invalid>"

# The single-number metrics a spec's `metrics:` may name for the table, by task type. Extraction's
# exact_match (a record is right only if every field matches) is what qwen selects checkpoints on.
METRICS = {
    "classification": (
        "f1_weighted",
        "accuracy",
        "f1_macro",
        "precision_weighted",
        "recall_weighted",
        "precision_macro",
        "recall_macro",
        "invalid",
    ),
    "extraction": ("exact_match", "valid_rate", "field_f1", "field_precision", "field_recall", "invalid"),
}
# What the table shows when a spec names no metrics: the headline columns of each task type.
DEFAULT_METRICS = {
    "classification": ("f1_weighted", "accuracy", "f1_macro"),
    "extraction": ("exact_match", "valid_rate"),
}


def classification_metrics(
    labels: Sequence[str], gold: Sequence[str], predicted: Sequence[str | None]
) -> dict[str, Any]:
    """Accuracy, precision/recall/F1 weighted and macro, per class, and the confusion matrix.

    ``predicted`` entries that are not among ``labels`` (None included) count as wrong, and are
    counted in ``invalid`` and in the confusion matrix's last column.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    labels = list(labels)
    pred = [p if p in labels else INVALID for p in predicted]
    metrics: dict[str, Any] = {"accuracy": float(accuracy_score(gold, pred)), "n": len(gold)}
    for average in ("weighted", "macro"):
        p, r, f, _ = precision_recall_fscore_support(gold, pred, labels=labels, average=average, zero_division=0)
        metrics[f"precision_{average}"] = float(p)
        metrics[f"recall_{average}"] = float(r)
        metrics[f"f1_{average}"] = float(f)
    p, r, f, support = precision_recall_fscore_support(gold, pred, labels=labels, average=None, zero_division=0)
    metrics["per_class"] = {
        label: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(support[i])}
        for i, label in enumerate(labels)
    }
    # Rows are gold labels; columns are predicted labels, then invalid predictions.
    matrix = confusion_matrix(gold, pred, labels=labels + [INVALID])
    metrics["confusion_matrix"] = {"labels": labels + [INVALID], "matrix": [row.tolist() for row in matrix[:-1]]}
    metrics["invalid"] = pred.count(INVALID)
    return metrics


def normalise(value: Any, unicode: bool = True) -> str:
    """The one form gold and predicted field values are compared in: None, a missing key and ``""`` are all
    the empty value ``""``; numbers become their text; with ``unicode`` (the spec's ``normalize``, on by
    default) Unicode NFKC (full-width digits and letters become ASCII) and surrounding whitespace trimmed."""
    import unicodedata

    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return unicodedata.normalize("NFKC", text).strip() if unicode else text


def valid_record(record: dict[str, Any] | None, fields: Sequence[str]) -> bool:
    """A valid answer: a JSON object that has every one of the task's fields as a key (null allowed)."""
    return record is not None and all(f in record for f in fields)


def record_outcome(
    fields: Sequence[str], gold: dict[str, Any] | None, predicted: dict[str, Any] | None, unicode: bool = True
) -> dict[str, Any]:
    """One answer's counts, which :func:`extraction_metrics` sums (and the report's statistics resample):
    ``valid``, ``exact``, and per field ``right``, ``tp``, ``fp``, ``fn`` and ``support`` (0 or 1 each)."""
    per_field = {}
    all_right = True
    for f in fields:
        gold_value = normalise((gold or {}).get(f), unicode)
        value = normalise(predicted.get(f), unicode) if predicted is not None else None  # None: no answer at all
        right = value == gold_value
        all_right &= right
        per_field[f] = {
            "right": int(right),
            "tp": int(bool(value) and right),
            "fp": int(bool(value) and not right),
            "fn": int(bool(gold_value) and not right),
            "support": int(bool(gold_value)),
        }
    valid = valid_record(predicted, fields)
    return {"valid": int(valid), "exact": int(valid and all_right), "fields": per_field}


def extraction_metrics(
    fields: Sequence[str],
    gold: Sequence[dict[str, Any]],
    predicted: Sequence[dict[str, Any] | None],
    unicode: bool = True,
) -> dict[str, Any]:
    """Seed 001's scores of extracted records, every value compared after :func:`normalise`.

    - ``valid_rate``: the share of answers that are a valid record (:func:`valid_record`); ``invalid`` counts
      the others (not JSON, JSON but no object, an object lacking a field).
    - ``exact_match`` (exact record, the seed's metric): the share of answers that are valid and equal to the
      gold record in every field.
    - ``per_field``: per field, ``accuracy`` (the value equals gold; an answer that is no object has every
      field wrong, a missing key is the empty value), and ``precision``, ``recall`` and ``f1`` of non-empty
      values: a non-empty predicted value equal to gold is a true positive, any other non-empty prediction a
      false positive (where gold is empty too), any non-empty gold value not predicted exactly a false
      negative; ``support`` is the non-empty gold values.
    - ``field_precision``, ``field_recall``, ``field_f1``: the same counts summed over every field (micro).
    """
    fields = list(fields)
    n = len(gold)
    counts = {f: {"right": 0, "tp": 0, "fp": 0, "fn": 0, "support": 0} for f in fields}
    exact = valid = 0
    for g, p in zip(gold, predicted):
        outcome = record_outcome(fields, g, p, unicode)
        valid += outcome["valid"]
        exact += outcome["exact"]
        for f in fields:
            for key, value in outcome["fields"][f].items():
                counts[f][key] += value

    def prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        return precision, recall, (2 * precision * recall / (precision + recall) if precision + recall else 0.0)

    per_field = {}
    for f, c in counts.items():
        precision, recall, f1 = prf(c["tp"], c["fp"], c["fn"])
        per_field[f] = {
            "accuracy": c["right"] / n if n else 0.0,
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": c["support"],
        }
    precision, recall, f1 = prf(*(sum(c[k] for c in counts.values()) for k in ("tp", "fp", "fn")))
    return {
        "exact_match": exact / n if n else 0.0,
        "valid_rate": valid / n if n else 0.0,
        "field_precision": precision,
        "field_recall": recall,
        "field_f1": f1,
        "per_field": per_field,
        "invalid": n - valid,
        "n": n,
    }


def _gold_label(example: Example) -> str:
    """A classification example's gold label: the loader gives every one a label (harness.data_rows)."""
    if example.label is None:
        raise TypeError(f"classification example {example.id!r} has no gold label")
    return example.label


@hookimpl(trylast=True)
def harness_score(task: Task, examples: list[Example], predictions: list[Prediction]) -> dict[str, Any] | None:
    if task.type == "extraction":
        return extraction_metrics(
            task.fields, [ex.fields or {} for ex in examples], [p.fields for p in predictions], unicode=task.normalize
        )
    return classification_metrics(task.labels, [_gold_label(ex) for ex in examples], [p.label for p in predictions])
