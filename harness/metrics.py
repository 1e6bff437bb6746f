"""The core's metrics, as a plugin of ``harness_score``: scikit-learn, not hand-written formulas."""

from __future__ import annotations

from typing import Any, Sequence

import pluggy

from harness.types import Example, Prediction, Task

hookimpl = pluggy.HookimplMarker("harness")

# A prediction with no valid label is scored as this label, which is never gold: always wrong.
INVALID = "<invalid>"

# The single-number metrics a spec's `metrics:` may name for the table, by task type. Extraction's
# exact_match (a record is right only if every field matches) is what qwen selects checkpoints on.
METRICS = {
    "classification": ("f1_weighted", "accuracy", "f1_macro", "precision_weighted", "recall_weighted",
                       "precision_macro", "recall_macro", "invalid"),
    "extraction": ("exact_match",),
}


def classification_metrics(labels: Sequence[str], gold: Sequence[str], predicted: Sequence[str | None]) -> dict[str, Any]:
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


def extraction_metrics(fields: Sequence[str], gold: Sequence[dict[str, str]],
                       predicted: Sequence[dict[str, str] | None]) -> dict[str, Any]:
    """``exact_match``: the share of records whose every field equals the gold value (a missing field is
    the empty string); per field, the share right; ``invalid``: answers that were no record at all."""
    from sklearn.metrics import accuracy_score

    def value(record: dict[str, str] | None, field: str) -> str:
        return (record or {}).get(field, "")

    rows = [[value(g, f) == value(p, f) for f in fields] if p is not None else [False] * len(fields)
            for g, p in zip(gold, predicted)]
    return {
        "exact_match": float(accuracy_score([True] * len(rows), [all(row) for row in rows])) if rows else 0.0,
        "per_field": {f: sum(row[i] for row in rows) / len(rows) if rows else 0.0 for i, f in enumerate(fields)},
        "invalid": sum(p is None for p in predicted),
        "n": len(rows),
    }


@hookimpl(trylast=True)
def harness_score(task: Task, examples: list[Example], predictions: list[Prediction]) -> dict[str, Any] | None:
    if task.type == "extraction":
        return extraction_metrics(task.fields, [ex.fields or {} for ex in examples], [p.fields for p in predictions])
    return classification_metrics(task.labels, [ex.label for ex in examples], [p.label for p in predictions])
