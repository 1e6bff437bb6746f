"""Where things are in a store: its root, run ids and run directories, and the size and age of what lies there."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from harness.errors import UserError

# What new_id makes: a timestamp, a name, a random suffix; nothing that could climb out of runs/.
RUN_ID = re.compile(r"[0-9]{8}-[0-9]{6}-[A-Za-z0-9_.-]+-[0-9a-f]{6}")


def default_root() -> Path:
    return Path(os.environ.get("HARNESS_HOME", ".harness"))


def run_dir(root: Path, run_id: str) -> Path:
    """A finished run's directory; a one-line error for anything that is not a run id."""
    if not RUN_ID.fullmatch(run_id):
        raise UserError(f"not a run id: {run_id!r}", where="run id")
    return root / "runs" / run_id


def artifact_file(root: Path, run_id: str) -> Path:
    """The ``artifact.json`` of the model a run trained (see ``training.trained_in`` for a run that reused one)."""
    return run_dir(root, run_id) / "artifact" / "artifact.json"


def approach_of(run_id: str) -> str:
    """The approach named in a run id (``20260101-000000-qwen-lora-a1b2c3``), for a run whose record is gone."""
    return run_id.split("-", 2)[2].rsplit("-", 1)[0] if RUN_ID.fullmatch(run_id) else "?"


def size_on_disk(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def last_change(path: Path) -> float:
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


def size_text(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"
