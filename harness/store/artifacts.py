"""A run's artifact folder (its trained model, checkpoints, ``train_result.json``) wherever it is: ``artifact/`` in
the run's directory in the store, or ``runs/<run_id>/artifact`` in the storage its ``storage.json`` names
(:mod:`harness.storage`). Every reader in the driver (resume, reuse, ``bench --run``, ``try``, ``store ls`` and
``store gc``) goes through it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.files import write_json
from harness.storage import MARKER, local_copy, marker, open_storage, run_key

TRAIN_RESULT = "train_result.json"  # written last by the train unit: its presence says training finished


@dataclass(frozen=True)
class RunArtifacts:
    run_id: str
    folder: Path  # <the run's directory>/artifact
    uri: str | None = None  # the storage it is in, or None: in ``folder``

    @property
    def key(self) -> str:
        return run_key(self.run_id, "artifact")

    def exists(self, name: str) -> bool:
        if self.uri is None:
            return (self.folder / name).is_file()
        return open_storage(self.uri).exists(f"{self.key}/{name}")

    def read_json(self, name: str) -> Any:
        if self.uri is None:
            return json.loads((self.folder / name).read_text(encoding="utf-8"))
        return open_storage(self.uri).read_json(f"{self.key}/{name}")

    def local_file(self) -> Path:
        """``artifact.json`` on this machine's disk (downloaded with the model, once, from storage)."""
        if self.uri is None:
            return self.folder / "artifact.json"
        try:
            return local_copy(self.uri, self.key) / "artifact.json"
        except FileNotFoundError:  # gone from storage: the caller says the run no longer has its model
            return self.folder / "artifact.json"

    def progress(self) -> str | None:
        """What training left: ``finished training``, the newest complete checkpoint (``checkpoint-800``), or None."""
        from harness.hf_trainer import last_checkpoint

        if self.exists(TRAIN_RESULT):
            return "finished training"
        if self.uri is None:
            checkpoint = last_checkpoint(self.folder / "checkpoints")
            return checkpoint.name if checkpoint is not None else None
        return open_storage(self.uri).newest_checkpoint(f"{self.key}/checkpoints")

    def size(self) -> int | None:
        """Bytes in storage, or None where the artifacts are in the store (counted with its directory)."""
        return None if self.uri is None else open_storage(self.uri).size(run_key(self.run_id))

    def remove(self) -> None:
        """The run's files in storage (those in the store go with its directory)."""
        if self.uri is not None:
            open_storage(self.uri).remove(run_key(self.run_id))


def run_artifacts(run_dir: Path, run_id: str | None = None) -> RunArtifacts:
    """The artifacts of the run whose directory (final or ``.partial``) is ``run_dir``."""
    run_id = run_id or run_dir.name.removesuffix(".partial")
    return RunArtifacts(run_id, run_dir / "artifact", marker(run_dir))


def mark(run_dir: Path, uri: str) -> None:
    """Say in the run's directory that its artifacts go to the storage at ``uri``."""
    write_json(run_dir / MARKER, {"uri": uri})
