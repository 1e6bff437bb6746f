"""Serialisation: a run's record, predictions and artifact, and a comparison, as the JSON the store keeps them in."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable

from harness import stats_seeds
from harness.errors import UserError
from harness.files import write_json, write_text
from harness.store.layout import run_dir
from harness.types import Artifact, Comparison, Example, Prediction, RunRecord


def record_to_dict(record: RunRecord) -> dict[str, Any]:
    return asdict(record)


def record_from_dict(data: dict[str, Any]) -> RunRecord:
    known = RunRecord.__dataclass_fields__
    return RunRecord(**{key: value for key, value in data.items() if key in known})


def load_run(root: Path, run_id: str) -> RunRecord:
    """A stored run's record; a one-line error when it is missing or cannot be read."""
    path = run_dir(root, run_id) / "record.json"
    if not path.is_file():
        raise UserError(f"no stored run {run_id}", where=str(path))
    try:
        return record_from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as exc:
        raise UserError(
            f"not a readable run record ({type(exc).__name__}); move the run's directory away", where=str(path)
        ) from None


def jsonable(value: Any, where: str) -> Any:
    """``value`` as plain JSON: NumPy scalars and arrays and tuples are converted; anything else that JSON
    cannot hold is a TypeError naming ``where``."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):  # numpy scalars and arrays
        return jsonable(value.tolist(), where)
    raise TypeError(
        f"{where} is a {type(value).__module__}.{type(value).__name__}, which JSON cannot hold; "
        "return str, int, float, bool, None, lists or dicts"
    )


def write_predictions(path: Path, predictions: Iterable[Prediction], examples: list[Example] | None = None) -> None:
    """One JSON line per prediction, converted to plain JSON first (a bad value names its prediction).

    With ``examples`` (the gold examples, in the same order) each line also carries the example's ``id``,
    ``text`` and ``gold`` answer, so a stored run can be read, and scored again, from this file alone."""
    lines = []
    for i, prediction in enumerate(predictions):
        row = jsonable(asdict(prediction), f"prediction {i}")
        if examples is not None:
            ex = examples[i]
            row = {"id": ex.id, "text": ex.text, "gold": {"label": ex.label, "fields": ex.fields}, **row}
        lines.append(json.dumps(row, ensure_ascii=False))
    write_text(path, "".join(line + "\n" for line in lines))


PREDICTION_FIELDS = set(Prediction.__dataclass_fields__)


def read_predictions(path: Path) -> list[Prediction]:
    with path.open(encoding="utf-8") as handle:
        return [
            Prediction(**{k: v for k, v in json.loads(line).items() if k in PREDICTION_FIELDS})
            for line in handle
            if line.strip()
        ]


def read_scored(path: Path) -> tuple[list[Example], list[Prediction]] | None:
    """The gold examples and the predictions of a stored run, or None when its file is missing or predates
    the gold answers in it."""
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows or any("gold" not in row for row in rows):
        return None
    examples = [Example(id=row["id"], text=row["text"], **row["gold"]) for row in rows]
    return examples, [Prediction(**{k: v for k, v in row.items() if k in PREDICTION_FIELDS}) for row in rows]


ARTIFACT_FIELDS = ("train_samples", "parameters", "model", "dtype", "device", "notes", "info")


def save_artifact(artifact: Artifact, workdir: Path) -> Path:
    """``artifact.json`` in ``workdir``: the typed fields, and ``path`` relative to ``workdir`` when inside it."""
    path: str | None = None
    if artifact.path is not None:
        model = Path(artifact.path)
        path = model.relative_to(workdir).as_posix() if model.is_relative_to(workdir) else str(model.resolve())
    data = {"path": path, **{name: jsonable(getattr(artifact, name), f"Artifact.{name}") for name in ARTIFACT_FIELDS}}
    target = workdir / "artifact.json"
    write_json(target, data)
    return target


def load_artifact(artifact_file: Path) -> Artifact:
    """The Artifact a stored run serves from: typed fields from ``artifact.json``, an empty state."""
    return artifact_from_json(json.loads(artifact_file.read_text(encoding="utf-8")), artifact_file.parent)


def artifact_from_json(data: dict[str, Any], folder: Path) -> Artifact:
    """The Artifact an ``artifact.json`` in ``folder`` describes."""
    data = dict(data)
    path = data.pop("path")
    return Artifact(path=None if path is None else folder / path, **data)


def comparison_to_dict(comparison: Comparison) -> dict[str, Any]:
    return {
        "comparison_id": comparison.comparison_id,
        "spec": comparison.spec,
        "created": comparison.created,
        "metrics": comparison.metrics,
        "summary": stats_seeds.summary(comparison),  # per approach: each metric's mean, sd, n and values across seeds
        "statistics": comparison.statistics,  # intervals, seed spreads and pairwise tests (stats_analysis.analyse)
        "runs": [record_to_dict(r) for r in comparison.runs],  # every seed's run, whole
    }
