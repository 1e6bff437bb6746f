"""Measuring like a benchmark: warm-up first, CUDA synchronised around every timed region, medians.

``harness compare`` and (later) ``harness bench`` both time through these functions, so they never disagree.
"""

from __future__ import annotations

import functools
import os
import platform
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, ClassVar, Sequence, TypeVar

T = TypeVar("T")


def _torch():
    """torch if the approach already imported it, whole; the core never imports it on its own. The memory
    sampler's thread asks while the unit's main thread may be halfway through ``import torch``: a module
    still initialising is not there yet."""
    torch = sys.modules.get("torch")
    if torch is None or getattr(getattr(torch, "__spec__", None), "_initializing", False):
        return None
    return torch


def cuda_sync() -> None:
    torch = _torch()
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """Run ``fn`` once between two CUDA synchronisations; return its result and the seconds it took."""
    cuda_sync()
    start = time.perf_counter()
    result = fn()
    cuda_sync()
    return result, time.perf_counter() - start


@dataclass
class PeakMemory:
    """Peak RSS of this process and every process it started, and peak CUDA memory, over a ``with`` block: an
    engine's workers count as the serving memory they are. On a GPU, NVML's per-process figures (the
    ``[nvml]`` extra, nvidia-ml-py) give the whole tree's device memory, which torch's own counter cannot see;
    without NVML it is this process's torch allocations.

    The instrument must not slow what it measures. On Linux this process's peak is the kernel's own (VmHWM,
    reset at the start of the block through ``/proc/self/clear_refs``): exact, and free. A thread samples what
    the kernel does not give: the descendants' RSS every 0.1 s (every ``interval`` on a GPU, whose memory it
    samples too), their list, a scan of every process on the machine, renewed every ``children_every``
    seconds. Elsewhere, or in a block inside another, the thread samples this process too, every
    ``interval``. A thread that listed the whole tree often competed with the model for the cores
    (docs/benchmarks.md, "bf16 against fp32 on AG News", has what it cost)."""

    interval: float = 0.01
    children_every: float = 0.5
    rss_peak_mb: float = 0.0
    gpu_peak_mb: float | None = None
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _tree_gpu_mb: float = 0.0
    _kernel_peak: bool = field(default=False, repr=False)
    _children_peak_mb: float = field(default=0.0, repr=False)
    _open: ClassVar[int] = 0  # blocks open in this process: only the outermost may reset the kernel's peak

    def __enter__(self) -> PeakMemory:
        import psutil

        process = psutil.Process(os.getpid())
        self._kernel_peak = PeakMemory._open == 0 and _reset_peak_rss()
        PeakMemory._open += 1
        self.rss_peak_mb = tree_rss_mb(process)
        gpu = on_gpu()
        if gpu:
            _torch().cuda.reset_peak_memory_stats()
        interval = self.interval if gpu or not self._kernel_peak else max(self.interval, 0.1)

        def sample() -> None:
            members, scanned = [process], -float("inf")
            while not self._stop.wait(interval):
                if time.monotonic() - scanned >= self.children_every:
                    members, scanned = [process, *_children(process)], time.monotonic()
                if self._kernel_peak:
                    self._children_peak_mb = max(self._children_peak_mb, _rss_mb(members[1:]))
                else:
                    self.rss_peak_mb = max(self.rss_peak_mb, _rss_mb(members))
                if gpu:
                    self._tree_gpu_mb = max(self._tree_gpu_mb, tree_gpu_mb(process, members) or 0.0)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        import psutil

        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        PeakMemory._open -= 1
        process = psutil.Process(os.getpid())
        self.rss_peak_mb = max(self.rss_peak_mb, tree_rss_mb(process))
        if self._kernel_peak:  # this process's exact peak, with the descendants' sampled one beside it
            own = _kernel_peak_rss_mb()
            if own is not None:
                self.rss_peak_mb = max(self.rss_peak_mb, own + self._children_peak_mb)
        if on_gpu():  # the block may have imported torch and started CUDA
            self.gpu_peak_mb = max(_torch().cuda.max_memory_allocated() / 2**20, self._tree_gpu_mb)


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS, where Linux lets it: True if it did."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return _kernel_peak_rss_mb() is not None
    except OSError:
        return False


def _kernel_peak_rss_mb() -> float | None:
    """This process's peak RSS since the last reset (VmHWM), in MiB, or None where the kernel does not say."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


def tree_rss_mb(process: Any) -> float:
    """RSS of ``process`` and its descendants, in MiB (a child that exits between listing and reading is skipped)."""
    return _rss_mb([process, *_children(process)])


def _children(process: Any) -> list[Any]:
    import psutil

    try:
        return process.children(recursive=True)
    except psutil.Error:
        return []


def _rss_mb(members: list[Any]) -> float:
    """The summed RSS of ``members`` in MiB; one that has exited counts nothing."""
    import psutil

    total = 0
    for member in members:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            continue
    return total / 2**20


@functools.cache
def _nvml() -> Any:
    """pynvml, initialised once per process (the sampler asks every 10 ms), or None without it or a driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:
        return None


def tree_gpu_mb(process: Any, members: list[Any] | None = None) -> float | None:
    """Device memory NVML sees used by ``process`` and its descendants (or the ``members`` of its tree already
    listed), in MiB, or None without NVML."""
    pynvml = _nvml()
    if pynvml is None:
        return None
    try:
        pids = {member.pid for member in (members or [process, *_children(process)])}
        used = 0
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            for running in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if running.pid in pids and running.usedGpuMemory:
                    used += running.usedGpuMemory
        return used / 2**20
    except Exception:  # no driver, no permission: the torch counter stands alone
        return None


def release_memory() -> None:
    """Free what a finished approach left behind, so the next one's peak memory is its own."""
    import gc

    gc.collect()
    torch = _torch()
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    _malloc_trim()


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's OutOfMemoryError (CUDA), or a RuntimeError that says it ran out of accelerator memory."""
    return type(exc).__name__ == "OutOfMemoryError" or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def _malloc_trim() -> None:
    """Hand freed heap back to the OS (glibc keeps it otherwise), so RSS after training is not
    counted again as prediction memory."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name and platform.system() == "Linux":
        try:
            ctypes.CDLL(name).malloc_trim(0)
        except (OSError, AttributeError):  # not glibc
            pass


@dataclass
class Latency:
    samples_ms: list[float]

    def summary(self) -> dict[str, float | None]:
        from harness.stats_intervals import percentile

        if not self.samples_ms:
            return {
                "latency_p50_ms": None,
                "latency_p95_ms": None,
                "latency_p99_ms": None,
                "requests_per_s": None,
                "latency_samples": 0,
            }
        total_s = sum(self.samples_ms) / 1000
        return {
            "latency_p50_ms": statistics.median(self.samples_ms),
            "latency_p95_ms": percentile(self.samples_ms, 95),
            "latency_p99_ms": percentile(self.samples_ms, 99),
            "requests_per_s": len(self.samples_ms) / total_s if total_s > 0 else float("inf"),
            "latency_samples": len(self.samples_ms),
        }


def batch1_latency(predict_one: Callable[[Any], object], items: Sequence[Any], *, warmup: int = 3) -> Latency:
    """Time ``predict_one`` on each item, one request at a time, after ``warmup`` untimed calls.

    Sequential requests/s is the reciprocal of the mean latency: one client, no batching.
    """
    return interleaved_batch1_latency([predict_one], items, warmup=warmup)[0]


def interleaved_batch1_latency(
    predict_ones: Sequence[Callable[[Any], object]], items: Sequence[Any], *, warmup: int = 3
) -> list[Latency]:
    """:func:`batch1_latency` of several functions over the same items, interleaved: each item goes to
    every function in turn, the order reversed every other item, so that a noisy machine moves them alike."""
    for predict_one in predict_ones:
        for item in items[:warmup]:
            predict_one(item)
    samples: list[list[float]] = [[] for _ in predict_ones]
    for k, item in enumerate(items):
        order = range(len(predict_ones)) if k % 2 == 0 else reversed(range(len(predict_ones)))
        for i in order:
            _, seconds = timed(functools.partial(predict_ones[i], item))
            samples[i].append(seconds * 1000)
    return [Latency(times) for times in samples]


def on_gpu() -> bool:
    torch = _torch()
    return torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized()


def sampled_batch1_latency(predict_one: Callable[[Any], object], items: Sequence[Any], samples: int) -> Latency:
    """:func:`batch1_latency` on a seeded sample of ``samples`` items: the same requests for every approach,
    in compare and in bench alike."""
    return batch1_latency(predict_one, latency_sample(items, samples))


def latency_sample(items: Sequence[Any], samples: int) -> list[Any]:
    """The seeded sample of requests that batch-1 latency is timed on."""
    import random

    return random.Random(0).sample(list(items), min(samples, len(items)))


def device_name(device: str | None = None) -> str:
    """The GPU's name when ``device`` (an approach's torch device) is a CUDA one, else the CPU's."""
    torch = _torch()
    if device and device.startswith("cuda") and torch is not None and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU: {_cpu_model()} ({_cpu_threads()} threads)"


def machine() -> str:
    """Which machine measured: a stored run is reused only on the machine that timed it."""
    return f"{platform.node()} {_cpu_model()} {platform.machine()}"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def unit_threads() -> int:
    """The CPU threads a unit process will compute on: ``OMP_NUM_THREADS`` where it is set, else every
    core this process may use. Part of a measurement's identity: a row timed on 1 thread is not reused
    for a compare on all of them."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _cpu_threads() -> int:
    torch = _torch()
    if torch is not None:
        return torch.get_num_threads()
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def environment(device: str | None = None) -> dict[str, Any]:
    """The machine and library versions a figure was measured with; ``device`` as for :func:`device_name`."""
    versions = {}
    for name in (
        "harness-compare",
        "torch",
        "transformers",
        "peft",
        "accelerate",
        "scikit-learn",
        "onnxruntime",
        "vllm",
    ):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    torch = _torch()
    env: dict[str, Any] = {
        "device": device_name(device),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }
    if torch is not None and device and device.startswith("cuda"):
        env["cuda"] = torch.version.cuda
    return env
