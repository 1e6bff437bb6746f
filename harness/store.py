"""The results store: SQLite (standard library) for the index, one directory per run for everything else.

Layout under the store root (``.harness`` by default, ``--store`` or ``HARNESS_HOME`` to move it)::

    runs.db                     index of runs and comparisons
    runs/<run_id>/record.json   the RunRecord
    runs/<run_id>/predictions.jsonl, train_log.jsonl, error.txt (failed runs)
    runs/<run_id>/artifact/     what the run trained: artifact.json and the model it names
    data/<hash>.json            the datasets of a comparison, as every unit of work reads them
    model-hashes.json           sha256 of local model files, by path, size and modification time

    comparisons/<id>.json       each comparison, as the index holds it (so the index can be rebuilt)
    locks/<key>.lock            held while a process trains or measures that training identity

A run is written under ``runs/<run_id>.partial``, which its process holds locked (``.partial/lock``),
and gets its final name in the same transaction that indexes it: an interrupted run leaves nothing that
looks finished, and a finished run is never left out of the index. A ``.partial`` nobody holds is
left by a killed process: the next run with its training identity resumes it (the model it finished
training, or the Trainer's last checkpoint), and the end of every compare removes the rest.
``harness store check`` rebuilds the index from the ``record.json`` files. A run that measured another
run's trained model (same training identity) has no ``artifact/`` of its own: ``training.trained_in``
names the run that has it.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import sqlite3
import time
from dataclasses import asdict
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

from harness import stats
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
        self._held: dict[str, int] = {}  # run id -> the open, locked descriptor of its .partial/lock

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
                raise UserError(f"not a usable results index ({exc}); `harness store check` moves it aside and "
                                "rebuilds it from the runs' record.json files", where=str(path)) from None
        return self._db

    def check_writable(self, open_index: bool = True) -> None:
        """One line naming the path if results could not be stored here: checked before anything trains.
        ``open_index``: also open the index, so a corrupt one is reported now."""
        root = self.root
        if root.exists() and not root.is_dir():
            raise UserError("is not a directory; --store takes a directory", where=str(root))
        existing = root if root.exists() else next((p for p in root.absolute().parents if p.exists()), None)
        if existing is None:
            raise UserError("cannot be created", where=str(root))
        for path in (existing, root / "runs.db", root / "runs", root / "locks", root / "comparisons"):
            if path.exists() and not os.access(path, os.W_OK | (os.X_OK if path.is_dir() else 0)):
                read_only = os.statvfs(path).f_flag & os.ST_RDONLY
                raise UserError(f"cannot be written ({'read-only file system' if read_only else 'permissions'}); "
                                "nothing was trained", where=str(path))
        if open_index and (root / "runs.db").exists():
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

    @contextmanager
    def lock(self, key: str, on_wait: Any = None) -> Iterator[None]:
        """Hold ``key`` (a training identity) against every other process on this store; if another holds
        it, call ``on_wait()`` once and wait for it."""
        folder = self.root / "locks"
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / f"{key[:32]}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not _try_lock(fd):
                if on_wait is not None:
                    on_wait()
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def start_run(self, run_id: str, identity: dict[str, Any] | None = None) -> Path:
        """An empty directory for a run in progress, locked by this process until :meth:`finish_run`.

        ``identity`` (``train_key``, ``measure_key``) is written into it so that a later run with the same
        training identity can resume it if this process is killed."""
        _ = self.db  # opening the index creates the store's layout
        partial = self.root / "runs" / f"{run_id}.partial"
        fresh = self.root / "runs" / f".{run_id}.new"  # locked before it is visible under its .partial name
        fresh.mkdir(parents=True)
        self._hold(run_id, fresh)
        write_json(fresh / "identity.json", identity or {})
        fresh.rename(partial)
        return partial

    def _hold(self, run_id: str, folder: Path) -> None:
        fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_lock(fd):
            os.close(fd)
            raise RuntimeError(f"{folder} is held by another process")
        self._held[run_id] = fd

    def _release(self, run_id: str) -> None:
        fd = self._held.pop(run_id, None)
        if fd is not None:
            os.close(fd)

    def stale_partials(self) -> Iterator[tuple[Path, dict[str, Any]]]:
        """The ``.partial`` runs no live process holds (each held by this one while yielded), with their
        identity (empty if it was never written)."""
        folder = self.root / "runs"
        for path in sorted(folder.glob("*.partial")) if folder.is_dir() else []:
            run_id = path.name.removesuffix(".partial")
            if run_id in self._held:
                continue
            try:
                self._hold(run_id, path)
            except (RuntimeError, OSError):
                continue  # a live run, or gone meanwhile
            try:
                try:
                    found = json.loads((path / "identity.json").read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    found = {}
                yield path, found if isinstance(found, dict) else {}
            finally:
                self._release(run_id)

    def resume_partial(self, train_key: str, run_id: str) -> tuple[Path, str] | None:
        """Take over a killed run's ``.partial`` with this training identity as ``run_id``'s workdir (the
        caller holds :meth:`lock` for ``train_key``); return it with the killed run's id, or None."""
        for path, found in self.stale_partials():
            if found.get("train_key") == train_key:
                old = path.name.removesuffix(".partial")
                target = self.root / "runs" / f"{run_id}.partial"
                path.rename(target)
                self._held[run_id] = self._held.pop(old)  # the same lock, under its new name
                write_json(target / "identity.json", {**found, "resumed_from_run": old})
                return target, old
        return None

    def remove_stale_partials(self) -> list[str]:
        """Delete every ``.partial`` no live process holds; return their names."""
        removed = []
        for path, _ in self.stale_partials():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
        return removed

    def finish_run(
        self,
        record: RunRecord,
        predictions: Iterable[Prediction] | None = None,
        error_detail: str | None = None,
    ) -> Path:
        """Write the record (and predictions, unless a unit already wrote them) and make the run permanent:
        the index row and the final directory name are committed together."""
        partial = self.root / "runs" / f"{record.run_id}.partial"
        if not partial.is_dir():
            self.start_run(record.run_id)
        if predictions is not None:
            write_predictions(partial / "predictions.jsonl", predictions)
        with (partial / "train_log.jsonl").open("w", encoding="utf-8") as handle:
            for entry in record.train_log:
                handle.write(json.dumps(jsonable(entry, "train_log"), default=str) + "\n")
        if error_detail:
            (partial / "error.txt").write_text(error_detail, encoding="utf-8")
        write_json(partial / "record.json", record_to_dict(record))
        for name in ("identity.json", "lock"):
            (partial / name).unlink(missing_ok=True)
        final = self.run_dir(record.run_id)
        try:
            with self.db:  # a rename that fails rolls the row back; a commit that fails leaves a record to re-index
                self._index(record)
                partial.rename(final)
        finally:
            self._release(record.run_id)
        return final

    def _index(self, record: RunRecord) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (record.run_id, record.approach, record.spec, record.status, record.training.get("key", ""),
             record.measurement.get("key", ""), record.training.get("trained_in"), record.created),
        )

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
        row = {"comparison_id": comparison.comparison_id, "spec": comparison.spec, "created": comparison.created,
               "runs": [(r.run_id, r.status) for r in comparison.runs], "metrics": comparison.metrics}
        folder = self.root / "comparisons"
        folder.mkdir(exist_ok=True)
        write_json(folder / f"{comparison.comparison_id}.json", row)
        with self.db:
            self._index_comparison(row)

    def _index_comparison(self, row: dict[str, Any]) -> None:
        self.db.execute("INSERT OR REPLACE INTO comparisons VALUES (?, ?, ?, ?, ?)",
                        (row["comparison_id"], row["spec"], row["created"], json.dumps(row["runs"]),
                         json.dumps(row["metrics"])))

    def check(self) -> list[str]:
        """Make the index agree with the run directories and say what was fixed: a corrupt index is moved
        aside and rebuilt, finished runs missing from it are indexed, rows whose run is gone are dropped,
        ``.partial`` runs no process holds are removed."""
        fixed = []
        path = self.root / "runs.db"
        try:
            verdict = self.db.execute("PRAGMA quick_check").fetchall()
            if verdict != [("ok",)]:
                raise sqlite3.DatabaseError(f"integrity check: {verdict[0][0]}")
        except (UserError, sqlite3.DatabaseError) as exc:
            if self._db is not None:
                self._db.close()
            self._db = None
            aside = path.with_name(f"runs.db.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
            for suffix in ("", "-wal", "-shm"):
                if path.with_name(path.name + suffix).exists():
                    path.with_name(path.name + suffix).rename(aside.with_name(aside.name + suffix))
            fixed.append(f"{path}: {str(exc).split(';')[0]}; moved to {aside.name} and rebuilt")
        indexed = {row[0] for row in self.db.execute("SELECT run_id FROM runs")}
        on_disk = set()
        for record_file in sorted((self.root / "runs").glob("*/record.json")):
            run_id = record_file.parent.name
            if not RUN_ID.fullmatch(run_id):
                continue
            on_disk.add(run_id)
            if run_id in indexed:
                continue
            try:
                record = self.load_run(run_id)
            except UserError as exc:
                fixed.append(f"{exc}; left out of the index")
                continue
            with self.db:
                self._index(record)
            fixed.append(f"indexed run {run_id} ({record.approach}, {record.status}), which the index had lost")
        for run_id in sorted(indexed - on_disk):
            with self.db:
                self.db.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))
            fixed.append(f"dropped run {run_id} from the index: its directory is gone")
        known = {row[0] for row in self.db.execute("SELECT comparison_id FROM comparisons")}
        for comparison_file in sorted((self.root / "comparisons").glob("*.json")):
            if comparison_file.stem in known:
                continue
            try:
                row = json.loads(comparison_file.read_text(encoding="utf-8"))
                with self.db:
                    self._index_comparison(row)
            except (ValueError, KeyError, TypeError):
                fixed.append(f"{comparison_file}: not a readable comparison; left out of the index")
                continue
            fixed.append(f"indexed comparison {comparison_file.stem}")
        fixed += [f"removed {name}, left by a killed run" for name in self.remove_stale_partials()]
        return fixed

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


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


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
    write_text(path, "".join(line + "\n" for line in lines))


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
        "summary": stats.summary(comparison),  # per approach: each metric's mean, sd, n and values across seeds
        "runs": [record_to_dict(r) for r in comparison.runs],  # every seed's run, whole
    }


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def write_text(path: Path, text: str) -> None:
    """Written whole or not at all, also when two processes write the same file at once."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
