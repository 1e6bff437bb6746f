"""The Store: the object the rest of harness asks, which hands each job to the module of this package that does it."""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import threading
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from harness.errors import UserError
from harness.files import write_json
from harness.store import comparisons, layout, listing, locks, records, repair, resume
from harness.store.artifacts import RunArtifacts, run_artifacts
from harness.store.cleanup import Cleanup, remove_abandoned, removed_lines
from harness.store.index import Index
from harness.store.live import LiveHolds
from harness.store.partials import Partials
from harness.store.reuse import RunFinder
from harness.types import Comparison, Prediction, RunRecord


class Store:
    """The results store at ``root`` (``HARNESS_HOME`` or ``.harness`` by default), laid out as :mod:`harness.store`
    describes."""

    def __init__(self, root: Path | None = None, read_only: bool = False):
        """``read_only``: read what is there and never write, create or migrate anything (``compare --dry-run``)."""
        self.root = Path(root) if root is not None else layout.default_root()
        self.read_only = read_only
        self._index = Index(self.root, read_only)
        self._partials = Partials(self.root, self._index)
        self._live = LiveHolds(self.root)
        self._finder = RunFinder(self.root, self._index)

    @property
    def db(self) -> sqlite3.Connection:
        """The index's connection for this thread, opened on first use: validating input never creates the store."""
        return self._index.connection

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
        if not path.is_file() and self.read_only:  # no stored run can hold a secret's mark yet
            return secrets.token_hex(32).encode()
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
        if json.dumps(cache, sort_keys=True) != before and not self.read_only:
            self.root.mkdir(parents=True, exist_ok=True)
            write_json(path, cache)

    def run_dir(self, run_id: str) -> Path:
        return layout.run_dir(self.root, run_id)

    def artifacts(self, run_id: str) -> RunArtifacts:
        """A finished run's artifact folder, in the store or in its storage (harness.storage)."""
        return run_artifacts(layout.run_dir(self.root, run_id))

    def artifact_file(self, run_id: str) -> Path:
        """The ``artifact.json`` of the model a run trained, on this machine's disk (from its storage, once)."""
        return self.artifacts(run_id).local_file()

    def load_run(self, run_id: str) -> RunRecord:
        return records.load_run(self.root, run_id)

    def lock(self, key: str, on_wait: Any = None) -> AbstractContextManager[None]:
        """Hold ``key`` (a training identity) against every other process on this store; if another holds
        it, call ``on_wait()`` once and wait for it."""
        return locks.training_lock(self.root, key, on_wait)

    def live(self) -> AbstractContextManager[None]:
        """A compare's life: what it :meth:`hold` s is kept from cleanup until the block ends (nested blocks:
        the outermost one)."""
        return self._live.live()

    def hold(self, *paths: Path) -> None:
        """Keep ``paths`` (a data cache, a run's directory, a load cache) from cleanup while this process's
        compare runs (see :meth:`LiveHolds.hold <harness.store.live.LiveHolds.hold>`)."""
        self._live.hold(*paths)

    def start_run(self, run_id: str, identity: dict[str, Any] | None = None) -> Path:
        """An empty directory for a run in progress, locked by this process until :meth:`finish_run`;
        ``identity`` (``train_key``, ``measure_key``) lets a later run resume it if this process is killed."""
        return self._partials.start(run_id, identity)

    def finish_run(
        self,
        record: RunRecord,
        predictions: Iterable[Prediction] | None = None,
        error_detail: str | None = None,
    ) -> Path:
        """Write the record (and predictions, unless a unit already wrote them) and make the run permanent."""
        return self._partials.finish(record, predictions, error_detail)

    def stale_partials(self) -> Iterator[tuple[Path, dict[str, Any]]]:
        """The ``.partial`` runs no live process holds, with their identity."""
        return self._partials.stale()

    def resume_partial(self, train_key: str) -> tuple[Path, str] | None:
        """Take over a killed run's ``.partial`` with this training identity (the caller holds :meth:`lock`
        for ``train_key``); return the directory and the run id, or None."""
        return resume.resume_partial(self._partials, train_key)

    def remove_empty_partials(self) -> list[str]:
        """Delete the ``.partial`` runs no live process holds and that hold nothing to resume; return their names."""
        return resume.remove_empty_partials(self._partials)

    def abandoned(self, older_than_days: float | None = None) -> list[tuple[Path, int, str]]:
        """What ``store gc`` would remove: see :meth:`cleanup`."""
        return self.cleanup(older_than_days, dry_run=True).removed

    def gc(self, older_than_days: float | None = None, dry_run: bool = False) -> list[tuple[Path, int, str]]:
        """Remove abandoned work (nothing with ``dry_run``); return what was (or would be) removed."""
        return self.cleanup(older_than_days, dry_run=dry_run).removed

    def cleanup(
        self, older_than_days: float | None = None, dry_run: bool = False, killed_runs_only: bool = False
    ) -> Cleanup:
        """``store gc`` (``killed_runs_only``: ``store check --remove-partials``): see
        :func:`~harness.store.cleanup.remove_abandoned`."""
        return remove_abandoned(self.root, self._index, self._partials, older_than_days, dry_run, killed_runs_only)

    def runs(self) -> list[dict[str, Any]]:
        """Every run on disk, for ``store ls``."""
        return listing.list_runs(self.root, self._index)

    def check(self, remove_partials: bool = False) -> list[str]:
        """Make the index agree with the run directories and say what was fixed (see
        :func:`~harness.store.repair.repair`). ``.partial`` runs no process holds are kept (a killed run resumes
        from them) unless ``remove_partials``; ``store gc`` is the command for that."""
        fixed = repair.repair(self.root, self._index)
        if remove_partials:
            fixed += removed_lines(self.cleanup(killed_runs_only=True))
        return fixed

    def find_measured(self, measure_key: str) -> RunRecord | None:
        """The newest successful run with this measurement identity (which includes its training identity)."""
        return self._finder.find_measured(measure_key)

    def find_trained(self, train_key: str) -> RunRecord | None:
        """The newest run that trained a model with this training identity and still has it on disk."""
        return self._finder.find_trained(train_key)

    def trained_runs(self, approach: str, spec: str) -> list[str]:
        """The runs in which row ``approach`` trained a model on ``spec`` (not those that reused one), newest first."""
        return self._finder.trained_runs(approach, spec)

    def save_comparison(self, comparison: Comparison) -> None:
        comparisons.save_comparison(self.root, self._index, comparison)

    def newest_comparison(self, spec: str) -> str | None:
        """The id of the newest stored comparison of ``spec``, if any."""
        return comparisons.newest_comparison(self.root, self._index, spec)

    def load_comparison(self, comparison_id: str | None = None) -> Comparison | None:
        """A stored comparison by id, or the newest one."""
        return comparisons.load_comparison(self.root, self._index, comparison_id)

    def combine(self, items: list[str]) -> Comparison:
        """One comparison of the runs named by run ids and comparison ids, for ``report --compare``."""
        return comparisons.combine(self.root, self._index, items)
