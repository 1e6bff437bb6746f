"""The results store: SQLite (standard library) for the index, one directory per run for everything else.

Layout under the store root (``.harness`` by default, ``--store`` or ``HARNESS_HOME`` to move it)::

    runs.db                     index of runs and comparisons
    runs/<run_id>/record.json   the RunRecord
    runs/<run_id>/predictions.jsonl, train_log.jsonl, error.txt (failed runs)
    runs/<run_id>/artifact/     what the run trained: artifact.json and the model it names
    data/<hash>.json            the datasets of a comparison, as every unit of work reads them
    cache/<train key>/<engine>  what harness_load derived from a trained model to serve it (an export, a merge)
    model-hashes.json           sha256 of local model files, by path, size and modification time

    comparisons/<id>.json       each comparison, as the index holds it (so the index can be rebuilt)
    locks/<key>.lock            held while a process trains or measures that training identity
    locks/cleanup.lock          held by ``store gc``/``check --remove-partials`` while they look and remove
    live/<pid>-<hex>.json       what a running compare holds (its data cache, runs, load caches), locked by it

A run is written under ``runs/<run_id>.partial``, which its process holds locked (``.partial/lock``),
and gets its final name in the same transaction that indexes it: an interrupted run leaves nothing that
looks finished, and a finished run is never left out of the index. A ``.partial`` nobody holds is
left by a killed process: the next run with its training identity resumes it as the same run (the model
it finished training, or the Trainer's last checkpoint). Nothing that could be resumed is deleted by a
compare or by ``store check``: the end of a compare removes only ``.partial`` runs that hold nothing (killed
before their first checkpoint), and ``harness store gc`` removes abandoned work when the user asks.
Cleanup never takes what a running compare holds: each compare lists it in its ``live/`` file, locked
(flock) for its whole life, so a compare killed with SIGKILL holds nothing any more; cleanup says what it
skipped.
``harness store check`` rebuilds the index from the ``record.json`` files. A run that measured another
run's trained model (same training identity) has no ``artifact/`` of its own: ``training.trained_in``
names the run that has it.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import re
import shutil
import sqlite3
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator

from harness import stats
from harness.errors import UserError
from harness.files import write_json, write_text  # noqa: F401  (the store's writers; callers import them from here)
from harness.types import Artifact, Comparison, Example, Prediction, RunRecord

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
        # One SQLite connection per thread (a grid runs several runs at once from threads of one process).
        self._local = threading.local()
        self._held: dict[str, int] = {}  # run id -> the open, locked descriptor of its .partial/lock
        self._kept: set[str] = set()  # stale partials taken over while stale_partials() yields them
        self._warned: set[str] = set()  # runs said once to be unreadable
        # What this process's compares hold against cleanup: live/<pid>-<hex>.json, locked while open.
        self._live_mutex = threading.Lock()
        self._live_fd: int | None = None
        self._live_file: Path | None = None
        self._live_holds: set[str] = set()
        self._live_depth = 0

    @property
    def _db(self) -> sqlite3.Connection | None:
        return getattr(self._local, "db", None)

    @_db.setter
    def _db(self, value: sqlite3.Connection | None) -> None:
        self._local.db = value

    @property
    def db(self) -> sqlite3.Connection:
        # Opened on first use: validating input never creates the store.
        if self._db is None:
            path = self.root / "runs.db"
            if path.is_file() and not _writable(self.root, path):
                return self._read_only_db(path)
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

    def check_writable(self, open_index: bool = True) -> None:
        """One line naming the path if results could not be stored here: checked before anything trains.
        ``open_index``: also open the index, so a corrupt one is reported now."""
        root = self.root
        if root.exists() and not root.is_dir():
            raise UserError("is not a directory; --store takes a directory", where=str(root))
        existing = root if root.exists() else next((p for p in root.absolute().parents if p.exists()), None)
        if existing is None:
            raise UserError("cannot be created", where=str(root))
        for path in (
            existing,
            root / "runs.db",
            root / "runs",
            root / "locks",
            root / "comparisons",
            root / "data",
            root / "live",
        ):
            if path.exists() and not os.access(path, os.W_OK | (os.X_OK if path.is_dir() else 0)):
                read_only = os.statvfs(path).f_flag & os.ST_RDONLY
                raise UserError(
                    f"cannot be written ({'read-only file system' if read_only else 'permissions'}); "
                    "nothing was trained",
                    where=str(path),
                )
        if open_index and (root / "runs.db").exists():
            _ = self.db  # a corrupt index is one line now, not after training

    def secret_mark(self, value: str) -> str:
        """How an identity holds a secret setting's value: ``<secret 1a2b3c4d5e6f>``, a keyed digest (HMAC-SHA256
        with a random key kept in this store, never the value), so that a changed value is a changed identity
        while no record can give the value back, nor let it be guessed from a list of candidates elsewhere."""
        import hashlib
        import hmac

        return f"<secret {hmac.new(self._secret_key, value.encode(), hashlib.sha256).hexdigest()[:12]}>"

    @functools.cached_property
    def _secret_key(self) -> bytes:
        """The store's key for :meth:`secret_mark`: made once, whole (a second process that races to make it keeps
        the first one's), then read once per Store."""
        import secrets

        path = self.root / "secret-key"
        if not path.is_file():
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"secret-key.{os.getpid()}-{threading.get_ident()}.tmp")
            tmp.write_text(secrets.token_hex(32), encoding="utf-8")
            tmp.chmod(0o600)
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        return path.read_text(encoding="utf-8").strip().encode()

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

    @contextmanager
    def _cleaning(self) -> Iterator[None]:
        """Held by cleanup while it looks and removes, and for a moment by a compare registering what it holds
        (:meth:`hold`): a registration is then wholly before a cleanup, which skips what it names, or wholly
        after it, and the compare writes again what was removed. Nobody holds it longer than one cleanup."""
        try:
            (self.root / "locks").mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / "locks" / "cleanup.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            fd = None  # a store this process cannot write: nothing is registered or removed from here
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            if fd is not None:
                os.close(fd)

    @contextmanager
    def live(self) -> Iterator[None]:
        """A compare's life: what it :meth:`hold` s is kept from cleanup until the block ends (nested blocks:
        the outermost one)."""
        with self._live_mutex:
            self._live_depth += 1
        try:
            yield
        finally:
            with self._live_mutex:
                self._live_depth -= 1
                if self._live_depth == 0 and self._live_fd is not None:
                    self._live_file.unlink(missing_ok=True)
                    os.close(self._live_fd)
                    self._live_fd, self._live_file, self._live_holds = None, None, set()

    def hold(self, *paths: Path) -> None:
        """Keep ``paths`` (a data cache, a run's directory, a load cache) from cleanup while this process's
        compare runs: listed in its ``live/`` file, which it keeps locked (flock, so a compare killed with
        SIGKILL holds nothing). Call before using them; anything a cleanup removed just before is then written
        again by the caller (the data cache and load caches are made when missing)."""
        names = {Path(os.path.relpath(path, self.root)).as_posix() for path in paths}
        with self._live_mutex, self._cleaning():
            if self._live_fd is None:
                import secrets

                folder = self.root / "live"
                folder.mkdir(parents=True, exist_ok=True)
                path = folder / f"{os.getpid()}-{secrets.token_hex(4)}.json"
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                fcntl.flock(fd, fcntl.LOCK_EX)  # nobody else can have it open yet: cleanup is held off
                self._live_fd, self._live_file = fd, path
            self._live_holds |= names
            text = json.dumps({"pid": os.getpid(), "holds": sorted(self._live_holds)}).encode()
            # In place, not replaced: the lock is on this file. Readers hold the cleanup lock, as this writer does.
            os.ftruncate(self._live_fd, 0)
            os.pwrite(self._live_fd, text, 0)

    def _held_live(self, remove_dead: bool) -> dict[str, int | None]:
        """Every path (relative to the store) a running compare holds, with its pid, read from ``live/`` (the
        caller holds :meth:`_cleaning`). A file nobody locks was left by a killed compare: removed with
        ``remove_dead``."""
        held: dict[str, int | None] = {}
        folder = self.root / "live"
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue  # its compare ended meanwhile
            try:
                if _try_lock(fd):
                    if remove_dead:
                        path.unlink(missing_ok=True)
                    continue
                found = json.loads(path.read_text(encoding="utf-8") or "{}")
            except (OSError, ValueError):
                continue
            finally:
                os.close(fd)
            for name in found.get("holds") or []:
                held[name] = found.get("pid")
        return held

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
        identity (empty if it was never written). The consumer may :meth:`_keep` the one it takes over."""
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
                if not _still_there(path, self._held[run_id]):
                    continue  # finished and renamed between the listing and the lock: not stale
                try:
                    found = json.loads((path / "identity.json").read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    found = {}
                yield path, found if isinstance(found, dict) else {}
            finally:
                if run_id not in self._kept:
                    self._release(run_id)
                self._kept.discard(run_id)

    def resume_partial(self, train_key: str) -> tuple[Path, str] | None:
        """Take over a killed run's ``.partial`` with this training identity (the caller holds :meth:`lock`
        for ``train_key``): the run goes on as itself, under its own id and directory, so every path its
        checkpoints recorded stays true. Return the directory and the run id, or None."""
        for path, found in self.stale_partials():
            if found.get("train_key") == train_key:
                run_id = path.name.removesuffix(".partial")
                self._kept.add(run_id)
                write_json(path / "identity.json", {**found, "resumed": found.get("resumed", 0) + 1})
                return path, run_id
        return None

    def remove_empty_partials(self) -> list[str]:
        """Delete the ``.partial`` runs no live process holds and that hold nothing to resume (killed before
        their first checkpoint); keep every one with a finished model or a checkpoint. Return their names."""
        removed = []
        for path, _ in self.stale_partials():
            if resumable(path) is None:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
        return removed

    def abandoned(self, older_than_days: float | None = None) -> list[tuple[Path, int, str]]:
        """What ``store gc`` would remove: see :meth:`cleanup`."""
        return self.cleanup(older_than_days, dry_run=True).removed

    def gc(self, older_than_days: float | None = None, dry_run: bool = False) -> list[tuple[Path, int, str]]:
        """Remove abandoned work (nothing with ``dry_run``); return what was (or would be) removed."""
        return self.cleanup(older_than_days, dry_run=dry_run).removed

    def cleanup(
        self, older_than_days: float | None = None, dry_run: bool = False, killed_runs_only: bool = False
    ) -> Cleanup:
        """``store gc`` (``killed_runs_only``: ``store check --remove-partials``): remove ``.partial`` runs no live
        process holds, data caches (each made again when needed) and load caches of models no run holds,
        untouched for ``older_than_days``; never what a running compare holds (:meth:`hold`), which is
        returned as skipped. The cleanup lock is held throughout, so no compare registers anything meanwhile."""
        with self._cleaning():
            held = self._held_live(remove_dead=not dry_run)
            found, skipped = self._abandoned(older_than_days, held, killed_runs_only)
            if not dry_run:
                for path, _, _ in found:
                    run_id = path.name.removesuffix(".partial")
                    if path.parent.name == "cache":
                        shutil.rmtree(path, ignore_errors=True)
                    elif path.is_dir():
                        try:  # still nobody's: a compare may have started resuming it since the listing
                            self._hold(run_id, path)
                        except (RuntimeError, OSError):
                            continue
                        try:
                            shutil.rmtree(path, ignore_errors=True)
                        finally:
                            self._release(run_id)
                    else:
                        path.unlink(missing_ok=True)
        return Cleanup(found, skipped)

    def _abandoned(
        self, older_than_days: float | None, held: dict[str, int | None], killed_runs_only: bool
    ) -> tuple[list[tuple[Path, int, str]], list[tuple[Path, str, int | None]]]:
        cutoff = None if older_than_days is None else time.time() - older_than_days * 86400
        found: list[tuple[Path, int, str]] = []
        skipped: list[tuple[Path, str, int | None]] = []

        def holder(path: Path) -> tuple[bool, int | None]:
            name = path.relative_to(self.root).as_posix()
            for item, pid in held.items():
                if item == name or item.startswith(name + "/") or name.startswith(item + "/"):
                    return True, pid
            return False, None

        trained = (
            {row[0][:16] for row in self.db.execute("SELECT train_key FROM runs")}
            if (self.root / "runs.db").exists()
            else set()
        )
        stale = dict(self.stale_partials())
        running: dict[str, int | None] = {}  # the training identities of runs in progress -> who runs them
        folder = self.root / "runs"
        for path in sorted(folder.glob("*.partial")) if folder.is_dir() else []:
            old = cutoff is None or _newest(path) < cutoff
            if path in stale:
                if old:
                    found.append((path, _size(path), "killed run, " + (resumable(path) or "nothing to resume")))
                else:  # a killed run that is kept still holds its model's load cache
                    trained.add(stale[path].get("train_key", "")[:16])
                continue
            _, pid = holder(path)  # locked by a live process: a run in progress
            try:
                key = json.loads((path / "identity.json").read_text(encoding="utf-8")).get("train_key", "")
            except (OSError, ValueError, AttributeError):
                key = ""
            if key:
                running.setdefault(key[:16], pid)
            if old:
                skipped.append((path, "run in progress", pid))
        if killed_runs_only:
            return found, skipped
        for path in sorted((self.root / "cache").iterdir()) if (self.root / "cache").is_dir() else []:
            if not path.is_dir() or path.name in trained or not (cutoff is None or _newest(path) < cutoff):
                continue
            is_held, pid = holder(path)
            if is_held or path.name in running:
                skipped.append((path, "load cache", pid if is_held else running[path.name]))
            else:
                found.append((path, _size(path), "load cache of a trained model no run holds"))
        for path in sorted((self.root / "data").glob("*.json")) if (self.root / "data").is_dir() else []:
            try:
                if not (cutoff is None or path.stat().st_mtime < cutoff):
                    continue
                is_held, pid = holder(path)
                if is_held:
                    skipped.append((path, "data cache", pid))
                else:
                    found.append((path, path.stat().st_size, "data cache, written again when a compare needs it"))
            except OSError:
                continue  # removed meanwhile
        return found, skipped

    def runs(self) -> list[dict[str, Any]]:
        """Every run on disk, for ``store ls``: the indexed ones and the ``.partial`` ones (running, or killed
        and resumable), newest first, each with its size on disk."""
        rows = []
        if (self.root / "runs.db").exists():
            for run_id, approach, spec, status, trained_in, created in self.db.execute(
                "SELECT run_id, approach, spec, status, trained_in, created FROM runs ORDER BY created DESC"
            ):
                folder = self.root / "runs" / run_id
                rows.append(
                    {
                        "run_id": run_id,
                        "approach": approach,
                        "spec": spec,
                        "status": status,
                        "created": created,
                        "bytes": _size(folder) if folder.is_dir() else None,
                        "model": "own" if trained_in == run_id else (trained_in or "-"),
                    }
                )
        held = set()
        folder = self.root / "runs"
        for path in sorted(folder.glob("*.partial"), reverse=True) if folder.is_dir() else []:
            run_id = path.name.removesuffix(".partial")
            held.add(run_id)
            approach = _approach_of(run_id)
            status = "running" if _is_held(path) else "killed: " + (resumable(path) or "nothing to resume")
            rows.append(
                {
                    "run_id": run_id,
                    "approach": approach,
                    "spec": "",
                    "status": status,
                    "created": "",
                    "bytes": _size(path),
                    "model": "-",
                }
            )
        return rows

    def finish_run(
        self,
        record: RunRecord,
        predictions: Iterable[Prediction] | None = None,
        error_detail: str | None = None,
    ) -> Path:
        """Write the record (and predictions, unless a unit already wrote them) and make the run permanent:
        the index row and the final directory name are committed together, and the run's lock is held (its
        lock file in place) until both are done, so no other process's cleanup can take it meanwhile."""
        partial = self.root / "runs" / f"{record.run_id}.partial"
        if not partial.is_dir():
            self.start_run(record.run_id)
        if predictions is not None:
            write_predictions(partial / "predictions.jsonl", predictions)
        write_text(
            partial / "train_log.jsonl",
            "".join(json.dumps(jsonable(entry, "train_log"), default=str) + "\n" for entry in record.train_log),
        )
        if error_detail:
            (partial / "error.txt").write_text(error_detail, encoding="utf-8")
        write_json(partial / "record.json", record_to_dict(record))
        (partial / "identity.json").unlink(missing_ok=True)
        final = self.run_dir(record.run_id)
        try:
            with self.db:  # a rename that fails rolls the row back; a commit that fails leaves a record to re-index
                self._index(record)
                partial.rename(final)
            (final / "lock").unlink(missing_ok=True)
        finally:
            self._release(record.run_id)
        return final

    def _index(self, record: RunRecord) -> None:
        self.db.execute(
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

    def find_measured(self, measure_key: str) -> RunRecord | None:
        """The newest successful run with this measurement identity (which includes its training identity)."""
        if not (self.root / "runs.db").exists():
            return None
        rows = self.db.execute(
            "SELECT run_id FROM runs WHERE measure_key = ? AND status = 'ok' ORDER BY created DESC",
            (measure_key,),
        ).fetchall()
        for (run_id,) in rows:
            record = self._load_or_warn(run_id)
            if record is not None and (self.run_dir(run_id) / "predictions.jsonl").is_file():
                return record
        return None

    def trained_runs(self, approach: str, spec: str) -> list[str]:
        """The runs in which row ``approach`` trained a model on ``spec`` (not those that reused one), newest
        first; none before the index exists."""
        if not (self.root / "runs.db").exists():
            return []
        rows = self.db.execute(
            "SELECT run_id FROM runs WHERE approach = ? AND spec = ? AND trained_in = run_id ORDER BY created DESC",
            (approach, spec),
        ).fetchall()
        return [run_id for (run_id,) in rows]

    def find_trained(self, train_key: str) -> RunRecord | None:
        """The newest run that trained a model with this training identity and still has it on disk."""
        if not (self.root / "runs.db").exists():
            return None
        rows = self.db.execute(
            "SELECT run_id FROM runs WHERE train_key = ? AND trained_in = run_id ORDER BY created DESC",
            (train_key,),
        ).fetchall()
        for (run_id,) in rows:
            record = self._load_or_warn(run_id)
            if record is not None and self.artifact_file(run_id).is_file():
                return record
        return None

    def _load_or_warn(self, run_id: str) -> RunRecord | None:
        """A stored run to reuse, or None with one warning line when its directory was deleted or its record
        cannot be read: the caller trains or measures again instead of failing."""
        try:
            return self.load_run(run_id)
        except UserError as exc:
            if run_id not in self._warned:
                self._warned.add(run_id)
                print(
                    f"harness: warning: {exc}; not reused (`harness store check` drops it from the index)",
                    file=sys.stderr,
                )
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
            raise UserError(
                f"not a readable run record ({type(exc).__name__}); move the run's directory away", where=str(path)
            ) from None

    def save_comparison(self, comparison: Comparison) -> None:
        # Each row as the comparison showed it: the run it shows, its status there, and the row's name and seed
        # (a reused run is stored under the name of the row that made it: see shown_as).
        row = {
            "comparison_id": comparison.comparison_id,
            "spec": comparison.spec,
            "created": comparison.created,
            "runs": [
                {"run_id": r.run_id, "status": r.status, "approach": r.approach, "seed": r.seed}
                for r in comparison.runs
            ],
            "metrics": comparison.metrics,
        }
        folder = self.root / "comparisons"
        folder.mkdir(exist_ok=True)
        write_json(folder / f"{comparison.comparison_id}.json", row)
        with self.db:
            self._index_comparison(row)

    def _index_comparison(self, row: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO comparisons VALUES (?, ?, ?, ?, ?)",
            (row["comparison_id"], row["spec"], row["created"], json.dumps(row["runs"]), json.dumps(row["metrics"])),
        )

    def check(self, remove_partials: bool = False) -> list[str]:
        """Make the index agree with the run directories and say what was fixed: a corrupt index is moved
        aside and rebuilt, finished runs missing from it are indexed, rows whose run is gone or whose
        ``record.json`` cannot be read are dropped. ``.partial`` runs no process holds are kept (a killed
        run resumes from them) unless ``remove_partials``; ``store gc`` is the command for that."""
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
        for run_id in sorted(indexed):
            if (self.root / "runs" / run_id / "record.json").is_file():
                try:
                    self.load_run(run_id)
                except UserError as exc:
                    with self.db:
                        self.db.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))
                    indexed.discard(run_id)
                    fixed.append(
                        f"{exc.where}: not a readable run record; dropped run {run_id} from the index "
                        "(its directory is kept: repair the file and run check again to index it)"
                    )
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
            except UserError:
                continue  # said above when it was indexed; an unindexed unreadable record stays out silently
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
        if remove_partials:
            fixed += removed_lines(self.cleanup(killed_runs_only=True))
        return fixed

    def newest_comparison(self, spec: str) -> str | None:
        """The id of the newest stored comparison of ``spec``, if any."""
        if not (self.root / "runs.db").exists():
            return None
        row = self.db.execute(
            "SELECT comparison_id FROM comparisons WHERE spec = ? ORDER BY created DESC, rowid DESC LIMIT 1", (spec,)
        ).fetchone()
        return row[0] if row else None

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
        for entry in json.loads(row[3]):
            # [run_id, status] in a comparison stored before rows kept their names: the run's own name and seed.
            run_id, status, name, seed = (
                (entry["run_id"], entry["status"], entry.get("approach"), entry.get("seed"))
                if isinstance(entry, dict)
                else (*entry[:2], None, None)
            )
            try:
                record = self.load_run(run_id)
                # A reused run keeps the status, and shows the row name and seed, it had in this comparison.
                record = shown_as(record, name or record.approach, record.seed if seed is None else seed, status)
            except UserError as exc:  # its directory was deleted, or its record damaged: the rest still reports
                record = RunRecord(
                    run_id=run_id,
                    approach=name or _approach_of(run_id),
                    spec=row[1],
                    task_type="",
                    status="missing",
                    error=str(exc),
                    seed=seed or 0,
                )
            runs.append(record)
        return Comparison(comparison_id=row[0], spec=row[1], created=row[2], runs=runs, metrics=json.loads(row[4]))

    def combine(self, items: list[str]) -> Comparison:
        """One comparison of the runs named by run ids and comparison ids, for ``report --compare``: they must
        be of one spec and one test set (a one-line error otherwise)."""
        runs: list[RunRecord] = []
        metrics: list[str] | None = None
        for item in items:
            comparison = self.load_comparison(item) if (self.root / "comparisons" / f"{item}.json").is_file() else None
            if comparison is not None:
                runs += comparison.runs
                metrics = metrics or comparison.metrics
            elif RUN_ID.fullmatch(item) and self.run_dir(item).is_dir():
                runs.append(self.load_run(item))
            else:
                raise UserError(f"{item!r} is neither a stored run nor a stored comparison", where="--compare")
        # A run given twice counts once; one run shown by two rows (toy and toy-copy) stays two rows.
        unique = list({(r.approach, r.run_id): r for r in runs}.values())
        specs = sorted({r.spec for r in unique})
        if len(specs) > 1:
            raise UserError(f"runs of different specs ({', '.join(specs)}) are not one comparison", where="--compare")
        tests = sorted({r.test_hash[:12] for r in unique if r.status != "missing"})
        if len(tests) > 1:
            raise UserError(
                f"runs scored on different test sets (sha256 {', '.join(tests)}) cannot be compared example by example",
                where="--compare",
            )
        if metrics is None:
            from harness.metrics import DEFAULT_METRICS

            metrics = list(DEFAULT_METRICS.get(unique[0].task_type, ("f1_weighted", "accuracy")))
        from hashlib import sha256

        digest = sha256(" ".join(r.run_id for r in unique).encode()).hexdigest()[:6]
        return Comparison(
            comparison_id=f"{specs[0]}-combined-{digest}",
            spec=specs[0],
            created=unique[0].created,
            runs=unique,
            metrics=metrics,
        )


@dataclass
class Cleanup:
    """What a cleanup removed (or would remove), ``(path, bytes, what it is)``, and what it skipped because a
    running compare holds it, ``(path, what it is, that compare's pid or None)``."""

    removed: list[tuple[Path, int, str]] = field(default_factory=list)
    skipped: list[tuple[Path, str, int | None]] = field(default_factory=list)


def removed_lines(cleanup: Cleanup) -> list[str]:
    """``store check --remove-partials``'s line for each killed run removed."""
    return [
        f"removed {path.name}, left by a killed run ({what}, {size_text(size)})"
        for path, size, what in cleanup.removed
        if path.name.endswith(".partial")
    ]


PLURALS = {"data cache": "data caches", "load cache": "load caches", "run in progress": "runs in progress"}


def skipped_lines(cleanup: Cleanup) -> list[str]:
    """One line per running compare whose work a cleanup left alone:
    ``skipped 3 items a running compare holds (pid 1234): 1 data cache, 1 load cache, 1 run in progress``."""
    by_holder: dict[int | None, dict[str, int]] = {}
    for _, what, pid in cleanup.skipped:
        kinds = by_holder.setdefault(pid, {})
        kinds[what] = kinds.get(what, 0) + 1
    lines = []
    for pid, kinds in by_holder.items():
        count = sum(kinds.values())
        who = f"a running compare holds (pid {pid})" if pid is not None else "a running process holds"
        lines.append(
            f"skipped {count} item{'' if count == 1 else 's'} {who}: "
            + ", ".join(f"{n} {what if n == 1 else PLURALS.get(what, what)}" for what, n in sorted(kinds.items()))
        )
    return lines


def shown_as(record: RunRecord, row: str, seed: int, status: str) -> RunRecord:
    """A stored run as one row of a comparison shows it: under that row's name and seed, with its status there.

    A run is stored once, under the name of the row that made it; a later row with the same measurement
    identity reuses it whole (status ``reused``) and shows it under its own name: ``toy-copy`` (a spec row with
    ``approach: toy``) beside ``toy`` in one compare is two rows, each counted once, and a grid's
    ``bert@learning_rate=1e-5`` reused by a compare's ``bert`` row shows as ``bert``. ``run_id`` stays the
    stored run's (its predictions and model are there). A copy: the stored record is never changed."""
    environment = record.environment
    if row != record.approach:  # what the row runs, when it runs another approach (spec rows, grid rows)
        environment = dict(environment)
        served = (record.measurement.get("identity") or {}).get("approach")
        if served and served != row:
            environment["runs"] = served
        else:
            environment.pop("runs", None)
    return replace(record, approach=row, seed=seed, status=status, environment=environment)


def _approach_of(run_id: str) -> str:
    """The approach named in a run id (``20260101-000000-qwen-lora-a1b2c3``), for a run whose record is gone."""
    return run_id.split("-", 2)[2].rsplit("-", 1)[0] if RUN_ID.fullmatch(run_id) else "?"


def resumable(partial: Path) -> str | None:
    """What a killed run left worth resuming: ``finished training`` (its model and figures), the Trainer's
    last complete checkpoint (``checkpoint-800``), or None."""
    from harness.hf_trainer import last_checkpoint

    if (partial / "artifact" / "train_result.json").is_file():
        return "finished training"
    checkpoint = last_checkpoint(partial / "artifact" / "checkpoints")
    return checkpoint.name if checkpoint is not None else None


def _still_there(path: Path, fd: int) -> bool:
    """Whether the lock ``fd`` (opened on ``path/lock``) is still that directory's lock file."""
    try:
        return os.fstat(fd).st_ino == os.stat(path / "lock").st_ino
    except OSError:
        return False


def _is_held(path: Path) -> bool:
    try:
        fd = os.open(path / "lock", os.O_RDONLY)
    except OSError:
        return False
    try:
        if _try_lock(fd):
            return False
        return True
    finally:
        os.close(fd)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _newest(path: Path) -> float:
    """The newest modification time in a directory: when the work in it last moved (also while a running
    compare writes in it: a file gone meanwhile counts as now)."""
    times = []
    try:
        items = [path, *path.rglob("*")]
    except OSError:
        items = [path]
    for item in items:
        try:
            times.append(item.stat().st_mtime)
        except OSError:
            times.append(time.time())
    return max(times)


def size_text(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"


def _writable(*paths: Path) -> bool:
    return all(os.access(p, os.W_OK) for p in paths) and not os.statvfs(paths[0]).f_flag & os.ST_RDONLY


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
        "statistics": comparison.statistics,  # intervals, seed spreads and pairwise tests (harness.stats.analyse)
        "runs": [record_to_dict(r) for r in comparison.runs],  # every seed's run, whole
    }
