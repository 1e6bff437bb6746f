"""Removing abandoned work (``store gc``) but never what a running compare holds, and saying what was done."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.store.artifacts import run_artifacts
from harness.store.index import Index
from harness.store.layout import last_change, size_on_disk, size_text
from harness.store.live import held_live
from harness.store.locks import cleaning
from harness.store.partials import Partials
from harness.store.resume import resumable


@dataclass
class Cleanup:
    """What a cleanup removed (or would remove), ``(path, bytes, what it is)``, and what it skipped because a
    running compare holds it, ``(path, what it is, that compare's pid or None)``."""

    removed: list[tuple[Path, int, str]] = field(default_factory=list)
    skipped: list[tuple[Path, str, int | None]] = field(default_factory=list)


def remove_abandoned(
    root: Path,
    index: Index,
    partials: Partials,
    older_than_days: float | None = None,
    dry_run: bool = False,
    killed_runs_only: bool = False,
) -> Cleanup:
    """``store gc`` (``killed_runs_only``: ``store check --remove-partials``): remove ``.partial`` runs no live
    process holds, data caches (each made again when needed) and load caches of models no run holds,
    untouched for ``older_than_days``; never what a running compare holds (``Store.hold``), which is
    returned as skipped. The cleanup lock is held throughout, so no compare registers anything meanwhile."""
    with cleaning(root):
        held = held_live(root, remove_dead=not dry_run)
        found, skipped = _abandoned(root, index, partials, older_than_days, held, killed_runs_only)
        if not dry_run:
            for path, _, _ in found:
                run_id = path.name.removesuffix(".partial")
                if path.parent.name == "cache":
                    shutil.rmtree(path, ignore_errors=True)
                elif path.is_dir():
                    try:  # still nobody's: a compare may have started resuming it since the listing
                        partials.hold(run_id, path)
                    except (RuntimeError, OSError):
                        continue
                    try:
                        run_artifacts(path).remove()  # its checkpoints in storage, if it had any there
                        shutil.rmtree(path, ignore_errors=True)
                    finally:
                        partials.release(run_id)
                else:
                    path.unlink(missing_ok=True)
    return Cleanup(found, skipped)


def _abandoned(
    root: Path,
    index: Index,
    partials: Partials,
    older_than_days: float | None,
    held: dict[str, int | None],
    killed_runs_only: bool,
) -> tuple[list[tuple[Path, int, str]], list[tuple[Path, str, int | None]]]:
    cutoff = None if older_than_days is None else time.time() - older_than_days * 86400
    found: list[tuple[Path, int, str]] = []
    skipped: list[tuple[Path, str, int | None]] = []

    def holder(path: Path) -> tuple[bool, int | None]:
        name = path.relative_to(root).as_posix()
        for item, pid in held.items():
            if item == name or item.startswith(name + "/") or name.startswith(item + "/"):
                return True, pid
        return False, None

    trained = (
        {row[0][:16] for row in index.connection.execute("SELECT train_key FROM runs")}
        if (root / "runs.db").exists()
        else set()
    )
    stale = dict(partials.stale())
    running: dict[str, int | None] = {}  # the training identities of runs in progress -> who runs them
    folder = root / "runs"
    for path in sorted(folder.glob("*.partial")) if folder.is_dir() else []:
        old = cutoff is None or last_change(path) < cutoff
        if path in stale:
            if old:
                artifacts = run_artifacts(path)
                where = f" (in {artifacts.uri})" if artifacts.uri else ""
                size = size_on_disk(path) + (artifacts.size() or 0)
                found.append((path, size, "killed run, " + (resumable(path) or "nothing to resume") + where))
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
    for path in sorted((root / "cache").iterdir()) if (root / "cache").is_dir() else []:
        if not path.is_dir() or path.name in trained or not (cutoff is None or last_change(path) < cutoff):
            continue
        is_held, pid = holder(path)
        if is_held or path.name in running:
            skipped.append((path, "load cache", pid if is_held else running[path.name]))
        else:
            found.append((path, size_on_disk(path), "load cache of a trained model no run holds"))
    for path in sorted((root / "data").glob("*.json")) if (root / "data").is_dir() else []:
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
