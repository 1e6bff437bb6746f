"""``store ls``: every run on disk, indexed or in progress, newest first, with its size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.store.artifacts import RunArtifacts, run_artifacts
from harness.store.index import Index
from harness.store.layout import approach_of, size_on_disk
from harness.store.locks import is_held
from harness.store.resume import resumable


def list_runs(root: Path, index: Index) -> list[dict[str, Any]]:
    """Every run on disk, for ``store ls``: the indexed ones and the ``.partial`` ones (running, or killed
    and resumable), newest first, each with its size: on disk, and in its storage (``storage``: where its
    artifacts are, or None: in the store)."""
    rows = []
    if (root / "runs.db").exists():
        for run_id, approach, spec, status, trained_in, created in index.connection.execute(
            "SELECT run_id, approach, spec, status, trained_in, created FROM runs ORDER BY created DESC"
        ):
            folder = root / "runs" / run_id
            artifacts = run_artifacts(folder)
            rows.append(
                {
                    "run_id": run_id,
                    "approach": approach,
                    "spec": spec,
                    "status": status,
                    "created": created,
                    "bytes": _size(folder, artifacts),
                    "model": "own" if trained_in == run_id else (trained_in or "-"),
                    "storage": artifacts.uri,
                }
            )
    held = set()
    folder = root / "runs"
    for path in sorted(folder.glob("*.partial"), reverse=True) if folder.is_dir() else []:
        run_id = path.name.removesuffix(".partial")
        held.add(run_id)
        approach = approach_of(run_id)
        status = "running" if is_held(path) else "killed: " + (resumable(path) or "nothing to resume")
        rows.append(
            {
                "run_id": run_id,
                "approach": approach,
                "spec": "",
                "status": status,
                "created": "",
                "bytes": _size(path, run_artifacts(path)),
                "model": "-",
                "storage": run_artifacts(path).uri,
            }
        )
    return rows


def _size(folder: Path, artifacts: RunArtifacts) -> int | None:
    """A run's bytes: its directory in the store and its files in storage (None where there is neither)."""
    local = size_on_disk(folder) if folder.is_dir() else None
    stored = artifacts.size()
    return None if local is None and stored is None else (local or 0) + (stored or 0)
