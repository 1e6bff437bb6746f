"""harness bench's measuring functions on stand-in predicts: each path's peak memory is its own."""

from __future__ import annotations

import sys
import time
import types

import pytest

from harness.bench import batch_throughput, latency_rows
from harness.types import Example

EXAMPLES = [Example(id=str(i), text=f"text {i}") for i in range(4)]
HUNGRY_MB = 100


def hungry(examples, settings):
    """Holds 100 MB (touched, so resident) long enough for the 10 ms RSS sampler to see it."""
    block = b"x" * (HUNGRY_MB * 2**20)
    time.sleep(0.04)
    del block
    return []


def light(examples, settings):
    time.sleep(0.04)
    return []


def assert_own_memory(rows: dict[str, dict]) -> None:
    assert rows["hungry"]["rss_added_mb"] > 0.75 * HUNGRY_MB
    # Taking turns in one process, a single peak would give the light path the hungry one's 100 MB.
    assert rows["light"]["rss_added_mb"] < 0.25 * HUNGRY_MB
    assert rows["light"]["rss_peak_mb"] < rows["hungry"]["rss_peak_mb"] - 0.5 * HUNGRY_MB
    assert all(row["rss_peak_mb"] > 0 and row["gpu_peak_mb"] is None for row in rows.values())


@pytest.mark.parametrize("order", [("hungry", "light"), ("light", "hungry")])
def test_bench_throughput_memory_is_each_paths_own_in_either_order(order):
    predicts = {"hungry": hungry, "light": light}
    rows = batch_throughput([predicts[name] for name in order], EXAMPLES, {}, batch_size=2, rounds=2)
    assert [row["rounds"] for row in rows] == [2, 2]
    assert_own_memory(dict(zip(order, rows)))


@pytest.mark.parametrize("order", [("hungry", "light"), ("light", "hungry")])
def test_bench_latency_memory_is_each_paths_own_in_either_order(order):
    predicts = {"hungry": hungry, "light": light}
    rows = latency_rows([predicts[name] for name in order], EXAMPLES, {}, samples=2)
    assert [row["latency_samples"] for row in rows] == [2, 2]
    assert_own_memory(dict(zip(order, rows)))


class FakeCuda:
    """torch.cuda's memory counters, on a machine without a GPU: 1,000 MB of weights stay allocated."""

    def __init__(self) -> None:
        self.allocated = self.peak = 1000 * 2**20

    def is_available(self) -> bool:
        return True

    is_initialized = is_available

    def reset_peak_memory_stats(self) -> None:
        self.peak = self.allocated

    def memory_allocated(self) -> int:
        return self.allocated

    def max_memory_allocated(self) -> int:
        return self.peak

    def synchronize(self) -> None:
        pass

    empty_cache = synchronize


def test_bench_gpu_memory_is_each_paths_own(monkeypatch):
    cuda = FakeCuda()
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))

    def gpu_hungry(examples, settings):  # 300 MB of activations for the length of the call
        cuda.peak = max(cuda.peak, cuda.allocated + 300 * 2**20)
        return []

    hungry_row, light_row = batch_throughput([gpu_hungry, lambda examples, settings: []], EXAMPLES, {}, 2, rounds=1)
    assert (hungry_row["gpu_peak_mb"], hungry_row["gpu_added_mb"]) == (1300, 300)
    assert (light_row["gpu_peak_mb"], light_row["gpu_added_mb"]) == (1000, 0)
