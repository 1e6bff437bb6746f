"""The results store: SQLite (standard library) for the index, one directory per run for everything else.

Layout under the store root (``.harness`` by default, ``--store`` or ``HARNESS_HOME`` to move it)::

    runs.db                     index of runs and comparisons
    runs/<run_id>/record.json   the RunRecord
    runs/<run_id>/predictions.jsonl, train_log.jsonl, error.txt (failed runs)
    runs/<run_id>/artifact/     what the run trained: artifact.json and the model it names
    data/<hash>.json            the datasets of a comparison, as every unit of work reads them
    model-hashes.json           sha256 of local model files, by path, size and modification time

A run is written under ``runs/<run_id>.partial`` and renamed when complete, and indexed only then,
so an interrupted run leaves nothing that looks finished. A run that measured another run's trained
model (same training identity) has no ``artifact/`` of its own: ``training.trained_in`` names the run
that has it.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from dataclasses import asdict
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

from harness.errors import UserError
from harness.types import Artifact, Comparison, Prediction, RunRecord

# train_key and measure_key are the digests of a run's training and measurement identities
# (harness.identity); trained_in is the run whose artifact/ holds the model it measured: itself when it
# trained (even if measuring then failed), another run when it reused that run's training.
# What new_id makes: a timestamp, a name, a random suffix; nothing that could climb out of runs/.
RUN_ID = re.compile(r"[0-9]{8}-[0-9]{6}-[A-Za-z0-9_.-]+-[0-9a-f]{6}")

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    approach TEXT NOT NULL,
    spec TEXT NOT NULL,
    status TEXT NOT NULL,
    train_key TEXT NOT NULL,
    measure_key TEXT NOT NULL,
    trained_in TEXT,
    created TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_measured ON runs (measure_key, status);
CREATE INDEX IF NOT EXISTS runs_trained ON runs (train_key);
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
            self.root.mkdir(parents=True, exist_ok=True)
            path = self.root / "runs.db"
            try:
                # WAL and a busy timeout: a second compare on the same store waits instead of failing.
                self._db = sqlite3.connect(path, timeout=60)
                self._db.execute("PRAGMA journal_mode=WAL")
                columns = {row[1] for row in self._db.execute("PRAGMA table_info(runs)")}
                if columns and "train_key" not in columns:
                    # A store from before runs had two identities: its runs can be reported, never reused.
                    self._db.execute("ALTER TABLE runs RENAME TO runs_v1")
                self._db.executescript(SCHEMA)
                (self.root / "runs").mkdir(exist_ok=True)
            except sqlite3.DatabaseError as exc:
                self._db = None
                raise UserError(f"not a usable results index ({exc}); move it away: each run's record.json "
                                "under runs/ is kept", where=str(path)) from None
        return self._db

    def check_writable(self) -> None:
        """One line naming the path if results could not be stored here: checked before anything trains."""
        root = self.root
        if root.exists() and not root.is_dir():
            raise UserError("is not a directory; --store takes a directory", where=str(root))
        existing = root if root.exists() else next((p for p in root.absolute().parents if p.exists()), None)
        if existing is None or not os.access(existing, os.W_OK | os.X_OK):
            raise UserError("cannot be written (permissions)", where=str(existing or root))
        for path in (root / "runs.db", root / "runs"):
            if path.exists() and not os.access(path, os.W_OK):
                raise UserError("cannot be written (permissions)", where=str(path))
        if (root / "runs.db").exists():
            _ = self.db  # a corrupt index is one line now, not after training

    @contextmanager
    def model_hashes(self) -> Iterator[dict[str, Any]]:
        """The cache of local model files' sha256 (by path, size and mtime), saved back after the block."""
        path = self.root / "model-hashes.json"
        try:
            cache = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            cache = {}
        before = json.dumps(cache, sort_keys=True)
        yield cache
        if json.dumps(cache, sort_keys=True) != before:
            self.root.mkdir(parents=True, exist_ok=True)
            write_json(path, cache)

    def run_dir(self, run_id: str) -> Path:
        if not RUN_ID.fullmatch(run_id):
            raise UserError(f"not a run id: {run_id!r}", where="run id")
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
        """Write the record (and predictions, unless a unit already wrote them) and make the run permanent."""
        partial = self.root / "runs" / f"{record.run_id}.partial"
        partial.mkdir(parents=True, exist_ok=True)
        if predictions is not None:
            write_predictions(partial / "predictions.jsonl", predictions)
        with (partial / "train_log.jsonl").open("w", encoding="utf-8") as handle:
            for entry in record.train_log:
                handle.write(json.dumps(jsonable(entry, "train_log"), default=str) + "\n")
        if error_detail:
            (partial / "error.txt").write_text(error_detail, encoding="utf-8")
        write_json(partial / "record.json", record_to_dict(record))
        final = self.run_dir(record.run_id)
        partial.rename(final)
        with self.db:
            self.db.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (record.run_id, record.approach, record.spec, record.status, record.training.get("key", ""),
                 record.measurement.get("key", ""), record.training.get("trained_in"), record.created),
            )
        return final

    def find_measured(self, measure_key: str) -> RunRecord | None:
        """The newest successful run with this measurement identity (which includes its training identity)."""
        if not (self.root / "runs.db").exists():
            return None
        row = self.db.execute(
            "SELECT run_id FROM runs WHERE measure_key = ? AND status = 'ok' ORDER BY created DESC LIMIT 1",
            (measure_key,),
        ).fetchone()
        return self.load_run(row[0]) if row else None

    def find_trained(self, train_key: str) -> RunRecord | None:
        """The newest run that trained a model with this training identity and still has it on disk."""
        if not (self.root / "runs.db").exists():
            return None
        rows = self.db.execute(
            "SELECT run_id FROM runs WHERE train_key = ? AND trained_in = run_id ORDER BY created DESC",
            (train_key,),
        ).fetchall()
        for (run_id,) in rows:
            if self.artifact_file(run_id).is_file():
                return self.load_run(run_id)
        return None

    def artifact_file(self, run_id: str) -> Path:
        return self.run_dir(run_id) / "artifact" / "artifact.json"

    def load_run(self, run_id: str) -> RunRecord:
        path = self.run_dir(run_id) / "record.json"
        if not path.is_file():
            raise UserError(f"no stored run {run_id}", where=str(path))
        try:
            return record_from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError) as exc:
            raise UserError(f"not a readable run record ({type(exc).__name__}); move the run's directory away",
                            where=str(path)) from None

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
    known = RunRecord.__dataclass_fields__
    return RunRecord(**{key: value for key, value in data.items() if key in known})


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
    raise TypeError(f"{where} is a {type(value).__module__}.{type(value).__name__}, which JSON cannot hold; "
                    "return str, int, float, bool, None, lists or dicts")


def write_predictions(path: Path, predictions: Iterable[Prediction]) -> None:
    """One JSON line per prediction, converted to plain JSON first (a bad value names its prediction)."""
    lines = [json.dumps(jsonable(asdict(p), f"prediction {i}"), ensure_ascii=False) for i, p in enumerate(predictions)]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    tmp.replace(path)


def read_predictions(path: Path) -> list[Prediction]:
    with path.open(encoding="utf-8") as handle:
        return [Prediction(**json.loads(line)) for line in handle if line.strip()]


ARTIFACT_FIELDS = ("train_samples", "parameters", "model", "dtype", "device", "notes", "info")


def save_artifact(artifact: Artifact, workdir: Path) -> Path:
    """``artifact.json`` in ``workdir``: the typed fields, and ``path`` relative to ``workdir`` when inside it."""
    path = artifact.path
    if path is not None:
        path = Path(path)
        path = path.relative_to(workdir).as_posix() if path.is_relative_to(workdir) else str(path.resolve())
    data = {"path": path, **{name: jsonable(getattr(artifact, name), f"Artifact.{name}") for name in ARTIFACT_FIELDS}}
    target = workdir / "artifact.json"
    write_json(target, data)
    return target


def load_artifact(artifact_file: Path) -> Artifact:
    """The Artifact a stored run serves from: typed fields from ``artifact.json``, an empty state."""
    data = json.loads(artifact_file.read_text(encoding="utf-8"))
    path = data.pop("path")
    return Artifact(path=None if path is None else artifact_file.parent / path, **data)


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
