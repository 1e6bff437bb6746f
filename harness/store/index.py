"""The index, ``runs.db``: its schema, the migration of an older one, one connection per thread, and its rows."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.types import RunRecord

# train_key and measure_key are the digests of a run's training and measurement identities
# (harness.identity); trained_in is the run whose artifact/ holds the model it measured: itself when it
# trained (even if measuring then failed), another run when it reused that run's training.
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


class Index:
    """The index of the store at ``root``, opened on first use: validating input never creates the store."""

    def __init__(self, root: Path, read_only: bool = False):
        self.root = root
        self.read_only = read_only
        # One SQLite connection per thread (a grid runs several runs at once from threads of one process).
        self._local = threading.local()

    @property
    def _db(self) -> sqlite3.Connection | None:
        return getattr(self._local, "db", None)

    @_db.setter
    def _db(self, value: sqlite3.Connection | None) -> None:
        self._local.db = value

    @property
    def connection(self) -> sqlite3.Connection:
        """This thread's connection, opened (and the index made or migrated) on first use."""
        if self._db is None:
            path = self.root / "runs.db"
            if path.is_file() and (self.read_only or not _writable(self.root, path)):
                return self._read_only_db(path)
            if self.read_only:  # no index yet: an empty one in memory, and nothing on disk
                self._db = sqlite3.connect(":memory:")
                self._db.executescript(SCHEMA)
                return self._db
            self.root.mkdir(parents=True, exist_ok=True)
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
                raise UserError(
                    f"not a usable results index ({exc}); `harness store check` moves it aside and "
                    "rebuilds it from the runs' record.json files",
                    where=str(path),
                ) from None
        return self._db

    def _read_only_db(self, path: Path) -> sqlite3.Connection:
        """A store this process cannot write (a read-only mount, another user's): read as it is, for
        ``report`` and ``store ls``; nobody can be writing it from here, so SQLite need not lock it."""
        try:
            self._db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro&immutable=1", uri=True)
            self._db.execute("SELECT count(*) FROM runs").fetchone()
        except sqlite3.DatabaseError as exc:
            self._db = None
            raise UserError(
                f"not a usable results index ({exc}), and the store is read-only here", where=str(path)
            ) from None
        return self._db

    def close(self) -> None:
        """Close this thread's connection, if open: the next use opens the index again."""
        if self._db is not None:
            self._db.close()
        self._db = None

    def add_run(self, record: RunRecord) -> None:
        """Index a run (its row replaced if it has one); the caller commits."""
        self.connection.execute(
            "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.run_id,
                record.approach,
                record.spec,
                record.status,
                record.training.get("key", ""),
                record.measurement.get("key", ""),
                record.training.get("trained_in"),
                record.created,
            ),
        )

    def add_comparison(self, row: dict[str, Any]) -> None:
        """Index a comparison as ``comparisons/<id>.json`` holds it; the caller commits."""
        self.connection.execute(
            "INSERT OR REPLACE INTO comparisons VALUES (?, ?, ?, ?, ?)",
            (row["comparison_id"], row["spec"], row["created"], json.dumps(row["runs"]), json.dumps(row["metrics"])),
        )


def _writable(*paths: Path) -> bool:
    return all(os.access(p, os.W_OK) for p in paths) and not os.statvfs(paths[0]).f_flag & os.ST_RDONLY
