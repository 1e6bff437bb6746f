"""Stopping the processes this process started: what a unit, or a load that built something, left running.

A unit's process stops what it started before it exits (an engine's workers hold memory, and multiprocessing
would wait at exit for a worker that never ends); the inline launcher and the load cache's build stop theirs too.
"""

from __future__ import annotations

from typing import Any


def child_processes() -> set[Any]:
    import psutil

    return set(psutil.Process().children(recursive=True))


def stop_processes(processes: set[Any]) -> None:
    import psutil

    for process in processes:
        try:
            process.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(list(processes), timeout=5)
    for process in alive:
        try:
            process.kill()
        except psutil.Error:
            pass
