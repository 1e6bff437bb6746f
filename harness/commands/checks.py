"""Checks of the command-line values several commands take, made before anything is trained, read or written."""

from __future__ import annotations

import os
from pathlib import Path

from harness.errors import UserError


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"expected distinct integer seeds separated by commas, got {text!r}", where="--seeds")
    from harness.spec import seed_problem

    problem = next((p for p in map(seed_problem, seeds) if p), None)
    if problem:  # numpy would refuse it only once the run has started, as a failed run
        raise UserError(problem, where="--seeds")
    return seeds


def check_output_target(path: Path | None, flag: str = "--json") -> None:
    """``--json PATH`` (or ``--html``) must be a file that can be written, in a directory that exists."""
    if path is None:
        return
    if path.is_dir():
        raise UserError(f"is a directory; {flag} takes a file path", where=str(path))
    if not path.parent.is_dir():
        raise UserError("directory does not exist", where=str(path))
    if (path.exists() and not os.access(path, os.W_OK)) or not os.access(path.parent, os.W_OK):
        raise UserError("cannot be written (permissions)", where=str(path))


def positive(value: int, flag: str) -> int:
    if value < 1:
        raise UserError(f"must be at least 1, got {value}", where=flag)
    return value


def checked_storage(option: str | None) -> str | None:
    """``--storage`` (or ``HARNESS_STORAGE``), written to and read back before anything trains; None without one."""
    from harness.storage import open_storage, storage_uri

    uri = storage_uri(option)
    if uri is not None:
        open_storage(uri).check()
    return uri


def ray_resources(items: list[str]) -> dict[str, float]:
    """``--resource NAME=AMOUNT`` items as Ray's custom resources; a one-line error for anything else."""
    resources: dict[str, float] = {}
    for item in items:
        name, sep, amount = item.partition("=")
        try:
            value = float(amount)
        except ValueError:
            value = -1.0
        if not sep or not name or not 0 < value < float("inf"):
            raise UserError(f"expected NAME=AMOUNT with an amount above 0, got {item!r}", where="--resource")
        resources[name] = value
    return resources
