"""Finding stored runs to reuse: the newest one measured, or trained, with an identity, still whole on disk."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from harness.errors import UserError
from harness.store.artifacts import run_artifacts
from harness.store.index import Index
from harness.store.layout import run_dir
from harness.store.records import load_run
from harness.types import RunRecord


class RunFinder:
    """Stored runs looked up by identity in the index; a run whose record cannot be read is said once and passed
    over."""

    def __init__(self, root: Path, index: Index):
        self.root = root
        self.index = index
        self._warned: set[str] = set()  # runs said once to be unreadable

    def find_measured(self, measure_key: str) -> RunRecord | None:
        """The newest successful run with this measurement identity (which includes its training identity)."""
        return self._newest(
            "SELECT run_id FROM runs WHERE measure_key = ? AND status = 'ok' ORDER BY created DESC",
            measure_key,
            lambda run_id: (run_dir(self.root, run_id) / "predictions.jsonl").is_file(),
        )

    def find_trained(self, train_key: str) -> RunRecord | None:
        """The newest run that trained a model with this training identity and still has it on disk."""
        return self._newest(
            "SELECT run_id FROM runs WHERE train_key = ? AND trained_in = run_id ORDER BY created DESC",
            train_key,
            lambda run_id: run_artifacts(run_dir(self.root, run_id)).exists("artifact.json"),
        )

    def trained_runs(self, approach: str, spec: str) -> list[str]:
        """The runs in which row ``approach`` trained a model on ``spec`` (not those that reused one), newest
        first; none before the index exists."""
        if not (self.root / "runs.db").exists():
            return []
        rows = self.index.connection.execute(
            "SELECT run_id FROM runs WHERE approach = ? AND spec = ? AND trained_in = run_id ORDER BY created DESC",
            (approach, spec),
        ).fetchall()
        return [run_id for (run_id,) in rows]

    def _newest(self, query: str, key: str, needed: Callable[[str], bool]) -> RunRecord | None:
        """The first run ``query`` lists for ``key`` whose record can be read and that has what it ``needed``
        (its predictions, its model: in the store or in storage); none before the index exists."""
        if not (self.root / "runs.db").exists():
            return None
        for (run_id,) in self.index.connection.execute(query, (key,)).fetchall():
            record = self._load_or_warn(run_id)
            if record is not None and needed(run_id):
                return record
        return None

    def _load_or_warn(self, run_id: str) -> RunRecord | None:
        """A stored run to reuse, or None with one warning line when its directory was deleted or its record
        cannot be read: the caller trains or measures again instead of failing."""
        try:
            return load_run(self.root, run_id)
        except UserError as exc:
            if run_id not in self._warned:
                self._warned.add(run_id)
                print(
                    f"harness: warning: {exc}; not reused (`harness store check` drops it from the index)",
                    file=sys.stderr,
                )
            return None
