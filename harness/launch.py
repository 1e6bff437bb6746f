"""Running a unit in a process of its own: the spawn launcher, the queue relaying its progress, its reaping.

Each unit (:mod:`harness.units`) runs in a fresh process started with ``spawn``, as optimum-benchmark's process
launcher does: its memory peaks are its own, the training weights are gone when the serving model is measured,
and a segfault or an out-of-memory kill is a failed row instead of a lost comparison.

The parent keeps the store, the terminal and the event hooks: a unit's training log lines and progress bars travel
back over a queue. Data crosses once, as a cache file named by its hash (:mod:`harness.data_cache`); the plugins
are rebuilt in the unit's process (:mod:`harness.shipping`).

``inline`` runs the units in the calling process, for debugging a plugin with pdb.
"""

from __future__ import annotations

import multiprocessing
import queue as queue_module
import signal
import traceback
from typing import Any

from harness.processes import child_processes, stop_processes
from harness.progress import Bar, RunProgress
from harness.shipping import PluginSetup, plugin_setup, rebuild_plugins
from harness.units import UNITS

LAUNCHERS = (
    "process",
    "inline",
    "ray",
)  # ray: harness.ray_executor (harness grid --executor ray), chosen by the runner


class UnitFailed(Exception):
    """A unit raised or its process died: ``detail`` holds the traceback or what the process said."""

    def __init__(self, message: str, detail: str = ""):
        super().__init__(message)
        self.detail = detail


def run_unit(kind: str, job: Any, plugins: Any, progress: RunProgress, *, launcher: str = "process") -> dict[str, Any]:
    """Run one unit here (``process``: a process of its own; ``inline``: this one) and return its result; raise
    :class:`UnitFailed` with the reason if it fails or dies. Units on Ray: :mod:`harness.ray_executor`, which
    runs each as this module's process launcher on a worker (the runner picks)."""
    if launcher == "inline":
        before = child_processes()
        try:
            return UNITS[kind](plugins, job, progress)
        except Exception as exc:
            raise UnitFailed(_one_line(exc), traceback.format_exc()) from None
        finally:
            # Processes the unit started end with it, as in a unit's own process.
            stop_processes(child_processes() - before)
    return _in_process(kind, job, plugin_setup(plugins), progress)


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


class _RemoteProgress(RunProgress):
    """The unit's side of the progress: bars and log lines become messages to the parent."""

    def __init__(self, messages: Any):
        super().__init__()
        self._messages = messages
        self._bars = 0

    def bar(self, description: str, total: float | None):
        from contextlib import contextmanager

        @contextmanager
        def remote():
            self._bars += 1
            bar_id = self._bars
            self._messages.put(("bar", bar_id, description, total))
            try:
                yield _RemoteBar(self._messages, bar_id)
            finally:
                self._messages.put(("bar_end", bar_id))

        return remote()

    def log(self, **entry: Any) -> None:
        self._messages.put(("log", entry))


class _RemoteBar(Bar):
    def __init__(self, messages: Any, bar_id: int):
        super().__init__(None, None)
        self._messages, self._bar_id = messages, bar_id

    def advance(self, n: float = 1) -> None:
        self._messages.put(("advance", self._bar_id, n))


def _child(kind: str, job: Any, setup: PluginSetup, messages: Any) -> None:
    import os

    os.setsid()  # a process group of its own: the unit and every process it starts are reaped together
    _exit_with_parent()
    try:
        plugins = rebuild_plugins(setup)
        result = UNITS[kind](plugins, job, _RemoteProgress(messages))
    except BaseException as exc:  # everything the parent must hear about, KeyboardInterrupt included
        messages.put(("error", _one_line(exc), traceback.format_exc()))
    else:
        messages.put(("result", result))
    finally:
        # What the unit started and left running (an engine's workers) stops with it: multiprocessing would
        # otherwise wait at exit for a worker that never ends.
        stop_processes(child_processes())


def _exit_with_parent() -> None:
    """A unit whose parent was killed stops too, with every process it started: nothing then writes into a
    run the next compare may resume, and no engine is left holding memory."""
    import os
    import threading
    import time

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.killpg(os.getpgid(0), 9)  # the unit and what it started (an engine's workers): SIGKILL, all at once

    threading.Thread(target=watch, name="harness-parent-watch", daemon=True).start()


def _in_process(kind: str, job: Any, setup: PluginSetup, progress: RunProgress) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    # Not daemonic: a unit may start processes of its own (an engine's core, DataLoader workers, datasets.map).
    process = context.Process(target=_child, args=(kind, job, setup, messages), name=f"harness-{kind}", daemon=False)
    process.start()
    bars: dict[int, tuple[Any, Bar]] = {}
    outcome: tuple[Any, ...] | None = None
    try:
        while outcome is None:
            try:
                message = messages.get(timeout=0.2)
            except queue_module.Empty:
                if not process.is_alive():
                    # It may have put its last words just before dying: read what is left, then judge.
                    try:
                        message = messages.get(timeout=1.0)
                    except queue_module.Empty:
                        break
                else:
                    continue
            outcome = _dispatch(message, progress, bars)
        process.join(timeout=60)  # its last words are in; what does not exit by then is killed below
    finally:
        for manager, _ in bars.values():
            manager.__exit__(None, None, None)
        if process.is_alive():
            process.kill()
            process.join()
        _reap(process.pid)
    if outcome is None:
        raise UnitFailed(_death(process.exitcode, kind))
    if outcome[0] == "error":
        raise UnitFailed(outcome[1], outcome[2])
    return outcome[1]


def _reap(group: int | None) -> None:
    """Kill what is left of a unit's process group: children it started and did not stop, also after it
    finished, failed or was killed."""
    import os

    if group is None:
        return
    try:
        os.killpg(group, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # nothing left


def _dispatch(
    message: tuple[Any, ...], progress: RunProgress, bars: dict[int, tuple[Any, Bar]]
) -> tuple[Any, ...] | None:
    kind = message[0]
    if kind == "log":
        progress.log(**message[1])
    elif kind == "bar":
        manager = progress.bar(message[2], message[3])
        bars[message[1]] = (manager, manager.__enter__())
    elif kind == "advance":
        if message[1] in bars:
            bars[message[1]][1].advance(message[2])
    elif kind == "bar_end":
        if message[1] in bars:
            bars.pop(message[1])[0].__exit__(None, None, None)
    else:
        return message
    return None


def _death(exitcode: int | None, kind: str) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (killed: out of memory?)" if name == "SIGKILL" else ""
        return f"the {kind} process died of {name}{hint}"
    return f"the {kind} process exited with status {exitcode} without a result"
