"""A run's life on disk: a ``.partial`` directory its process holds locked, made final with its index row."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from harness.files import write_json, write_text
from harness.store.index import Index
from harness.store.layout import run_dir
from harness.store.locks import still_there, try_lock
from harness.store.records import jsonable, record_to_dict, write_predictions
from harness.types import Prediction, RunRecord


class Partials:
    """The ``runs/<run_id>.partial`` directories of a store: those this process holds, and the others."""

    def __init__(self, root: Path, index: Index):
        self.root = root
        self.index = index
        self._held: dict[str, int] = {}  # run id -> the open, locked descriptor of its .partial/lock
        self._kept: set[str] = set()  # stale partials taken over while stale() yields them

    def start(self, run_id: str, identity: dict[str, Any] | None = None) -> Path:
        """An empty directory for a run in progress, locked by this process until :meth:`finish`.

        ``identity`` (``train_key``, ``measure_key``) is written into it so that a later run with the same
        training identity can resume it if this process is killed."""
        _ = self.index.connection  # opening the index creates the store's layout
        partial = self.root / "runs" / f"{run_id}.partial"
        fresh = self.root / "runs" / f".{run_id}.new"  # locked before it is visible under its .partial name
        fresh.mkdir(parents=True)
        self.hold(run_id, fresh)
        write_json(fresh / "identity.json", identity or {})
        fresh.rename(partial)
        return partial

    def finish(
        self, record: RunRecord, predictions: Iterable[Prediction] | None = None, error_detail: str | None = None
    ) -> Path:
        """Write the record (and predictions, unless a unit already wrote them) and make the run permanent:
        the index row and the final directory name are committed together, and the run's lock is held (its
        lock file in place) until both are done, so no other process's cleanup can take it meanwhile."""
        partial = self.root / "runs" / f"{record.run_id}.partial"
        if not partial.is_dir():
            self.start(record.run_id)
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
        final = run_dir(self.root, record.run_id)
        try:
            # A rename that fails rolls the row back; a commit that fails leaves a record to re-index.
            with self.index.connection:
                self.index.add_run(record)
                partial.rename(final)
            (final / "lock").unlink(missing_ok=True)
        finally:
            self.release(record.run_id)
        return final

    def hold(self, run_id: str, folder: Path) -> None:
        """Lock the run directory ``folder`` for this process; a RuntimeError if another process holds it."""
        fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        if not try_lock(fd):
            os.close(fd)
            raise RuntimeError(f"{folder} is held by another process")
        self._held[run_id] = fd

    def release(self, run_id: str) -> None:
        fd = self._held.pop(run_id, None)
        if fd is not None:
            os.close(fd)

    def keep(self, run_id: str) -> None:
        """Keep holding the stale partial :meth:`stale` yields now: this process takes it over."""
        self._kept.add(run_id)

    def stale(self) -> Iterator[tuple[Path, dict[str, Any]]]:
        """The ``.partial`` runs no live process holds (each held by this one while yielded), with their
        identity (empty if it was never written). The consumer may :meth:`keep` the one it takes over."""
        folder = self.root / "runs"
        for path in sorted(folder.glob("*.partial")) if folder.is_dir() else []:
            run_id = path.name.removesuffix(".partial")
            if run_id in self._held:
                continue
            try:
                self.hold(run_id, path)
            except (RuntimeError, OSError):
                continue  # a live run, or gone meanwhile
            try:
                if not still_there(path, self._held[run_id]):
                    continue  # finished and renamed between the listing and the lock: not stale
                try:
                    found = json.loads((path / "identity.json").read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    found = {}
                yield path, found if isinstance(found, dict) else {}
            finally:
                if run_id not in self._kept:
                    self.release(run_id)
                self._kept.discard(run_id)
