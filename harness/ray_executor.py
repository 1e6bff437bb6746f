"""Units on a Ray cluster (the ``[ray]`` extra): ``harness grid --executor ray`` hands each train and measure
unit to Ray as a task instead of starting its process here.

- Each unit is a Ray task asking for what a run needs (``cpus`` CPUs, ``gpus`` GPUs), in a fresh worker
  process (``max_calls=1``); inside it the unit runs in a process of its own as locally, so its memory figures
  are the run's own. A task whose worker dies (killed, out of memory, a lost node) is retried once
  (``max_retries=1``); a unit that fails with an error is not retried: its row fails, as locally.
- The data is shipped through Ray's object store: the driver puts each data file's bytes once, and a worker
  writes them to its own disk before the unit reads them, so every worker sees byte-identical examples.
- Results, training logs, the unit's notes and its machine (:func:`harness.identity.host`) come back to the
  driver, which alone writes the store's index and records. The unit writes its model and predictions under
  the store's run directory, or with ``--storage`` to storage (:mod:`harness.storage`): a cluster whose nodes
  share no disk needs storage, as ``docs/grid.md`` says.
"""

from __future__ import annotations

import functools
import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from harness.errors import UserError


def ray_module() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'harness-compare[ray]'", where="--executor") from None
    return ray


CONNECT_SECONDS = 60.0  # joining a cluster that has not answered by then is one line, not minutes of Ray's retries


def start(address: str | None, cpus: int | None, connect_seconds: float = CONNECT_SECONDS) -> None:
    """Connect to the cluster at ``address`` (``auto``: the one this machine belongs to), or start a local one
    with ``cpus`` CPUs. A cluster that does not answer within ``connect_seconds`` is a :class:`UserError`."""
    ray = ray_module()
    if ray.is_initialized():
        return
    quiet = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if not address:
        ray.init(num_cpus=cpus or os.cpu_count(), **quiet)
        return
    _reachable(address, connect_seconds)
    # Ray retries a head that accepts connections but does not answer as one for minutes, in calls that cannot
    # be interrupted: it joins in a thread of its own, given up on (it dies with the process) past the deadline.
    import logging
    import threading

    outcome: dict[str, BaseException | None] = {}

    def join() -> None:
        try:
            ray.init(address=address, **quiet)
            outcome["error"] = None
        except BaseException as exc:  # handed to the main thread
            outcome["error"] = exc

    # Off the main thread Ray warns that it set no SIGTERM handler: harness's own handling is unchanged.
    logging.getLogger("ray._private.worker").addFilter(lambda record: "SIGTERM handler" not in record.getMessage())
    thread = threading.Thread(target=join, name="harness-ray-join", daemon=True)
    thread.start()
    thread.join(connect_seconds)
    if "error" not in outcome:
        raise UserError(f"no Ray cluster answered at {address} within {connect_seconds:g} s", where="--address")
    if outcome["error"] is not None:
        error = outcome["error"]
        raise UserError(
            f"cannot join the Ray cluster at {address}: {type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}",
            where="--address",
        ) from None


def _reachable(address: str, seconds: float) -> None:
    """A ``host:port`` (or ``ray://host:port``) address takes a TCP connection within ``seconds``: a wrong port is
    one line at once instead of Ray's minutes of retries. ``auto`` is left to Ray."""
    import socket

    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=seconds):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(f"no Ray cluster answers at {address} ({reason})", where="--address") from None


@functools.cache
def _data_ref(path: str) -> Any:
    """The data file's bytes in the object store, put once per file."""
    return ray_module().put(Path(path).read_bytes())


def _materialise(name: str, data: bytes) -> Path:
    """The shipped data on this worker's disk, written once (atomically) per data file."""
    folder = Path(tempfile.gettempdir()) / "harness-ray-data"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if not path.is_file():
        scratch = folder / f".{name}.{os.getpid()}"
        scratch.write_bytes(data)
        os.replace(scratch, path)
    return path


def _run(kind: str, job: Any, setup: Any, data: bytes) -> dict[str, Any]:
    from harness.launch import _in_process
    from harness.progress import RunProgress

    class Collected(RunProgress):
        def __init__(self) -> None:
            super().__init__()
            self.entries: list[dict[str, Any]] = []

        def log(self, **entry: Any) -> None:
            self.entries.append(entry)

    job = replace(job, data_file=_materialise(Path(job.data_file).name, data))
    progress = Collected()
    result = _in_process(kind, job, setup, progress)
    return {"result": result, "logs": progress.entries, "node": os.uname().nodename, "worker_pid": os.getpid()}


@functools.cache
def _tasks() -> dict[str, Any]:
    """One remote function per unit kind (named so, in ``ps`` and Ray's dashboard: ray::harness_train_unit)."""
    ray = ray_module()

    def harness_train_unit(job: Any, setup: Any, data: bytes) -> dict[str, Any]:
        return _run("train", job, setup, data)

    def harness_measure_unit(job: Any, setup: Any, data: bytes) -> dict[str, Any]:
        return _run("measure", job, setup, data)

    options = {"max_calls": 1, "max_retries": 1, "retry_exceptions": False}
    return {"train": ray.remote(**options)(harness_train_unit), "measure": ray.remote(**options)(harness_measure_unit)}


# What each unit asks for: CPUs, GPUs and custom resources (a node started with --resources); harness grid sets them.
RESOURCES: dict[str, Any] = {"cpus": 1, "gpus": 0, "custom": {}}


def worker_host() -> dict[str, Any]:
    """The machine a unit would run on (:func:`harness.identity.host`), read by a task that asks for what a unit asks
    for: what the grid's identities are looked up with before its units run (each unit's own answer is recorded)."""
    from harness.identity import host

    ray = ray_module()
    probe = ray.remote(max_calls=1)(host).options(
        num_cpus=RESOURCES["cpus"], num_gpus=RESOURCES["gpus"], resources=dict(RESOURCES["custom"])
    )
    return dict(ray.get(probe.remote()))


def run_unit_on_ray(kind: str, job: Any, setup: Any, progress: Any) -> dict[str, Any]:
    """Run one unit as a Ray task and return its result; its training log entries are replayed into
    ``progress`` (the driver writes them to the run's log). A unit that failed raises UnitFailed."""
    from harness.launch import UnitFailed

    ray = ray_module()
    task = _tasks()[kind].options(
        num_cpus=RESOURCES["cpus"], num_gpus=RESOURCES["gpus"], resources=dict(RESOURCES["custom"])
    )
    try:
        answer = ray.get(task.remote(job, setup, _data_ref(str(job.data_file))))
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if isinstance(getattr(exc, "cause", None), UnitFailed) else None
        if cause is not None:
            raise cause from None
        raise UnitFailed(f"{type(exc.cause).__name__}: {exc.cause}".splitlines()[0]) from None
    except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as exc:
        raise UnitFailed(f"its Ray worker died twice (retried once): {type(exc).__name__}") from None
    for entry in answer["logs"]:
        progress.log(**entry)
    return answer["result"]
