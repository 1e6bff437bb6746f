"""What running compares hold against cleanup: each compare's ``live/`` file, locked (flock) for its whole life."""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from harness.store.locks import cleaning, try_lock


class LiveHolds:
    """What this process's compares hold against cleanup: ``live/<pid>-<hex>.json``, locked while open."""

    def __init__(self, root: Path):
        self.root = root
        self._mutex = threading.Lock()
        self._file: tuple[Path, int] | None = None  # the live/ file while a compare runs, and its locked descriptor
        self._holds: set[str] = set()
        self._depth = 0

    @contextmanager
    def live(self) -> Iterator[None]:
        """A compare's life: what it :meth:`hold` s is kept from cleanup until the block ends (nested blocks:
        the outermost one)."""
        with self._mutex:
            self._depth += 1
        try:
            yield
        finally:
            with self._mutex:
                self._depth -= 1
                if self._depth == 0 and self._file is not None:
                    path, fd = self._file
                    path.unlink(missing_ok=True)
                    os.close(fd)
                    self._file, self._holds = None, set()

    def hold(self, *paths: Path) -> None:
        """Keep ``paths`` (a data cache, a run's directory, a load cache) from cleanup while this process's
        compare runs: listed in its ``live/`` file, which it keeps locked (flock, so a compare killed with
        SIGKILL holds nothing). Call before using them; anything a cleanup removed just before is then written
        again by the caller (the data cache and load caches are made when missing)."""
        names = {Path(os.path.relpath(path, self.root)).as_posix() for path in paths}
        with self._mutex, cleaning(self.root):
            if self._file is None:
                folder = self.root / "live"
                folder.mkdir(parents=True, exist_ok=True)
                path = folder / f"{os.getpid()}-{secrets.token_hex(4)}.json"
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                fcntl.flock(fd, fcntl.LOCK_EX)  # nobody else can have it open yet: cleanup is held off
                self._file = path, fd
            self._holds |= names
            text = json.dumps({"pid": os.getpid(), "holds": sorted(self._holds)}).encode()
            # In place, not replaced: the lock is on this file. Readers hold the cleanup lock, as this writer does.
            _, fd = self._file
            os.ftruncate(fd, 0)
            os.pwrite(fd, text, 0)


def held_live(root: Path, remove_dead: bool) -> dict[str, int | None]:
    """Every path (relative to the store) a running compare holds, with its pid, read from ``live/`` (the
    caller holds :func:`~harness.store.locks.cleaning`). A file nobody locks was left by a killed compare:
    removed with ``remove_dead``."""
    held: dict[str, int | None] = {}
    folder = root / "live"
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue  # its compare ended meanwhile
        try:
            if try_lock(fd):
                if remove_dead:
                    path.unlink(missing_ok=True)
                continue
            found = json.loads(path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            continue
        finally:
            os.close(fd)
        for name in found.get("holds") or []:
            held[name] = found.get("pid")
    return held
