"""Locks between the processes on one store (flock): a training identity's, cleanup's, a run directory's."""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def training_lock(root: Path, key: str, on_wait: Any = None) -> Iterator[None]:
    """Hold ``key`` (a training identity) against every other process on this store; if another holds
    it, call ``on_wait()`` once and wait for it."""
    folder = root / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / f"{key[:32]}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not try_lock(fd):
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextmanager
def cleaning(root: Path) -> Iterator[None]:
    """Held by cleanup while it looks and removes, and for a moment by a compare registering what it holds
    (:meth:`LiveHolds.hold <harness.store.live.LiveHolds.hold>`): a registration is then wholly before a cleanup,
    which skips what it names, or wholly after it, and the compare writes again what was removed. Nobody holds it
    longer than one cleanup."""
    try:
        (root / "locks").mkdir(parents=True, exist_ok=True)
        fd = os.open(root / "locks" / "cleanup.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        fd = None  # a store this process cannot write: nothing is registered or removed from here
    try:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        if fd is not None:
            os.close(fd)


def try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def is_held(path: Path) -> bool:
    """Whether a live process holds the run directory ``path`` (its ``lock`` file)."""
    try:
        fd = os.open(path / "lock", os.O_RDONLY)
    except OSError:
        return False
    try:
        if try_lock(fd):
            return False
        return True
    finally:
        os.close(fd)


def still_there(path: Path, fd: int) -> bool:
    """Whether the lock ``fd`` (opened on ``path/lock``) is still that directory's lock file."""
    try:
        return os.fstat(fd).st_ino == os.stat(path / "lock").st_ino
    except OSError:
        return False
