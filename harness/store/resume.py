"""What a killed run left: whether it can resume, taking it over as the same run, removing it if it holds nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

from harness.files import write_json
from harness.store.artifacts import run_artifacts
from harness.store.partials import Partials


def resumable(partial: Path) -> str | None:
    """What a killed run left worth resuming: ``finished training`` (its model and figures), the Trainer's
    last complete checkpoint (``checkpoint-800``), or None; in the run's directory or in its storage."""
    return run_artifacts(partial).progress()


def resume_partial(partials: Partials, train_key: str) -> tuple[Path, str] | None:
    """Take over a killed run's ``.partial`` with this training identity (the caller holds the training lock
    for ``train_key``): the run goes on as itself, under its own id and directory, so every path its
    checkpoints recorded stays true. Return the directory and the run id, or None."""
    for path, found in partials.stale():
        if found.get("train_key") == train_key:
            run_id = path.name.removesuffix(".partial")
            partials.keep(run_id)
            write_json(path / "identity.json", {**found, "resumed": found.get("resumed", 0) + 1})
            return path, run_id
    return None


def remove_empty_partials(partials: Partials) -> list[str]:
    """Delete the ``.partial`` runs no live process holds and that hold nothing to resume (killed before
    their first checkpoint); keep every one with a finished model or a checkpoint. Return their names."""
    removed = []
    for path, _ in partials.stale():
        if resumable(path) is None:
            run_artifacts(path).remove()  # a checkpoint half-written to storage, if any
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    return removed
