"""``store ls``: every run on disk, indexed or in progress, newest first, with its size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.store.index import Index
from harness.store.layout import approach_of, size_on_disk
from harness.store.locks import is_held
from harness.store.resume import resumable


def list_runs(root: Path, index: Index) -> list[dict[str, Any]]:
    """Every run on disk, for ``store ls``: the indexed ones and the ``.partial`` ones (running, or killed
    and resumable), newest first, each with its size on disk."""
    rows = []
    if (root / "runs.db").exists():
        for run_id, approach, spec, status, trained_in, created in index.connection.execute(
            "SELECT run_id, approach, spec, status, trained_in, created FROM runs ORDER BY created DESC"
        ):
            folder = root / "runs" / run_id
            rows.append(
                {
                    "run_id": run_id,
                    "approach": approach,
                    "spec": spec,
                    "status": status,
                    "created": created,
                    "bytes": size_on_disk(folder) if folder.is_dir() else None,
                    "model": "own" if trained_in == run_id else (trained_in or "-"),
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
                "bytes": size_on_disk(path),
                "model": "-",
            }
        )
    return rows
