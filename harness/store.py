"""The results store: SQLite (standard library) for the index, one directory per run for everything else.

Layout under the store root (``.harness`` by default, ``--store`` or ``HARNESS_HOME`` to move it)::

    runs.db                     index of runs and comparisons
    runs/<run_id>/record.json   the RunRecord
    runs/<run_id>/predictions.jsonl, train_log.jsonl, error.txt (failed runs), artifact/ (the model)

A run is written under ``runs/<run_id>.partial`` and renamed when complete, and indexed only then,
so an interrupted run leaves nothing that looks finished.
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable

from harness.errors import UserError
from harness.types import Comparison, Prediction, RunRecord

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    approach TEXT NOT NULL,
    spec TEXT NOT NULL,
    status TEXT NOT NULL,
    reuse_key TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_reuse ON runs (reuse_key, status);
CREATE TABLE IF NOT EXISTS comparisons (
    comparison_id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    created TEXT NOT NULL,
    run_ids TEXT NOT NULL,
    metrics TEXT NOT NULL
);
"""


def default_root() -> Path:
    return Path(os.environ.get("HARNESS_HOME", ".harness"))


class Store:
    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else default_root()
        self._db: sqlite3.Connection | None = None

    @property
    def db(self) -> sqlite3.Connection:
        # Opened on first use: validating input never creates the store.
        if self._db is None:
            (self.root / "runs").mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.root / "runs.db")
            self._db.executescript(SCHEMA)
        return self._db

    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / run_id

    def start_run(self, run_id: str) -> Path:
        """An empty directory for a run in progress; :meth:`finish_run` makes it permanent."""
        partial = self.root / "runs" / f"{run_id}.partial"
        _ = self.db  # opening the index creates the store's layout
        partial.mkdir(parents=True)
        return partial

    def finish_run(
        self,
        record: RunRecord,
        predictions: Iterable[Prediction] | None = None,
        error_detail: str | None = None,
    ) -> Path:
        partial = self.root / "runs" / f"{record.run_id}.partial"
        partial.mkdir(parents=True, exist_ok=True)
        if predictions is not None:
            with (partial / "predictions.jsonl").open("w", encoding="utf-8") as handle:
                for prediction in predictions:
                    handle.write(json.dumps(asdict(prediction), ensure_ascii=False) + "\n")
        with (partial / "train_log.jsonl").open("w", encoding="utf-8") as handle:
            for entry in record.train_log:
                handle.write(json.dumps(entry) + "\n")
        if error_detail:
            (partial / "error.txt").write_text(error_detail, encoding="utf-8")
        write_json(partial / "record.json", record_to_dict(record))
        final = self.run_dir(record.run_id)
        partial.rename(final)
        with self.db:
            self.db.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?)",
                (record.run_id, record.approach, record.spec, record.status, record.reuse_key, record.created),
            )
        return final

    def find_reusable(self, reuse_key: str) -> RunRecord | None:
        """The newest successful run with this reuse key (same approach, settings, data and code)."""
        if not (self.root / "runs.db").exists():
            return None
        row = self.db.execute(
            "SELECT run_id FROM runs WHERE reuse_key = ? AND status = 'ok' ORDER BY created DESC LIMIT 1",
            (reuse_key,),
        ).fetchone()
        return self.load_run(row[0]) if row else None

    def load_run(self, run_id: str) -> RunRecord:
        path = self.run_dir(run_id) / "record.json"
        if not path.is_file():
            raise UserError(f"no stored run {run_id}", where=str(path))
        data = json.loads(path.read_text(encoding="utf-8"))
        return record_from_dict(data)

    def save_comparison(self, comparison: Comparison) -> None:
        with self.db:
            self.db.execute(
                "INSERT INTO comparisons VALUES (?, ?, ?, ?, ?)",
                (
                    comparison.comparison_id,
                    comparison.spec,
                    comparison.created,
                    json.dumps([(r.run_id, r.status) for r in comparison.runs]),
                    json.dumps(comparison.metrics),
                ),
            )

    def load_comparison(self, comparison_id: str | None = None) -> Comparison | None:
        """A stored comparison by id, or the newest one."""
        if not (self.root / "runs.db").exists():
            return None
        if comparison_id:
            row = self.db.execute("SELECT * FROM comparisons WHERE comparison_id = ?", (comparison_id,)).fetchone()
        else:
            row = self.db.execute("SELECT * FROM comparisons ORDER BY created DESC, rowid DESC LIMIT 1").fetchone()
        if row is None:
            return None
        runs = []
        for run_id, status in json.loads(row[3]):
            record = self.load_run(run_id)
            record.status = status  # a reused run keeps the status it had in this comparison
            runs.append(record)
        return Comparison(comparison_id=row[0], spec=row[1], created=row[2], runs=runs, metrics=json.loads(row[4]))


def record_to_dict(record: RunRecord) -> dict[str, Any]:
    return asdict(record)


def record_from_dict(data: dict[str, Any]) -> RunRecord:
    return RunRecord(**data)


def comparison_to_dict(comparison: Comparison) -> dict[str, Any]:
    return {
        "comparison_id": comparison.comparison_id,
        "spec": comparison.spec,
        "created": comparison.created,
        "metrics": comparison.metrics,
        "runs": [record_to_dict(r) for r in comparison.runs],
    }


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)
