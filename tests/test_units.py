"""Units that host engines: a unit may start processes of its own (an engine's workers), they count in its
serving memory, and they are reaped with it whether it finishes or its parent is killed; what harness_load
derives from a trained model is built once in a cache of its own and timed apart. Real processes."""

from __future__ import annotations

import json
import mmap
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import install_site, make_cli
from test_store_recovery import FAST, spawn

# An engine-like approach: its load derives a file from the "trained model" into its cache (once), and
# starts a worker process holding 300 MB that it never stops, as a serving engine's core would.
HOSTS_A_WORKER = '''
import multiprocessing
import os
import time
from pathlib import Path

from harness import ApproachInfo, Artifact, Prediction, Serving, hookimpl


def hold(megabytes, ready):
    ballast = b"x" * (megabytes * 2**20)
    ready.set()
    time.sleep(600)


@hookimpl
def harness_describe():
    return ApproachInfo(task_types=("classification",), settings={})


@hookimpl
def harness_train(task, train):
    return Artifact(train_samples=len(train))


@hookimpl
def harness_load(task, artifact, cache_dir):
    derived = Path(cache_dir) / "derived.txt"
    if not derived.is_file():
        time.sleep(0.3)  # an export takes a while
        derived.write_text("exported")
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    worker = context.Process(target=hold, args=(300, ready))  # fails in a daemonic unit
    worker.start()
    ready.wait(60)
    with open(os.environ["WORKER_PIDS"], "a") as pids:
        pids.write(f"{worker.pid}\\n")
    artifact.state["worker"] = worker
    return Serving(device="cpu")


@hookimpl
def harness_predict(task, examples):
    time.sleep(0.005 * len(examples))  # a killed compare finds it still serving
    return [Prediction(label=task.labels[0]) for _ in examples]


class Engine:
    """Serves what hosts-worker trains, without a worker; it has no train of its own."""

    @hookimpl
    def harness_describe(self):
        return ApproachInfo(task_types=("classification",), settings={}, serves="hosts-worker")

    @hookimpl
    def harness_load(self, artifact, cache_dir):
        assert artifact.train_samples == 0  # built by hosts-worker's train, untrained
        return Serving(device="cpu", notes=[f"cache {Path(cache_dir).name}"])

    @hookimpl
    def harness_predict(self, task, examples):
        return [Prediction(label=task.labels[-1]) for _ in examples]


engine = Engine()
'''


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def setup(tmp_path: Path):
    site = install_site(
        tmp_path / "site",
        {"hosts_a_worker": HOSTS_A_WORKER},
        {"hosts-worker": "hosts_a_worker", "worker-engine": "hosts_a_worker:engine"},
    )
    work = tmp_path / "work"
    work.mkdir()
    pids = tmp_path / "pids.txt"
    return site, work, pids


def test_a_unit_hosts_a_worker_counts_its_memory_reaps_it_and_builds_once(tmp_path, ag_news_data):
    site, work, pids = setup(tmp_path)
    cli = make_cli(site, work)
    args = ["compare", "--plugins", "hosts-worker", "--data", ag_news_data, *FAST]
    env = {"WORKER_PIDS": str(pids), "HARNESS_LOAD_PLUGINS": "hosts-worker"}
    first = cli(*args, "--json", "1.json", env=env)
    assert first.returncode == 0, first.stderr
    (run,) = json.loads((work / "1.json").read_text())["runs"]
    assert run["status"] == "ok", run["error"]
    assert run["memory"]["predict_rss_peak_mb"] > 300  # the worker's 300 MB are serving memory
    assert run["speed"]["build_seconds"] >= 0.3 and run["speed"]["load_seconds"] < run["speed"]["build_seconds"]
    assert "built what it serves from the trained model" in first.stdout
    (cache,) = [p for p in (work / ".harness" / "cache").glob("*/hosts-worker-*") if p.is_dir()]
    assert (cache / "derived.txt").read_text() == "exported" and (cache / ".built").is_file()
    workers = [int(line) for line in pids.read_text().split()]
    assert len(workers) == 2  # the build's load and the timed load
    assert all(gone(pid) for pid in workers)  # reaped with the unit, though nobody stopped them

    again = cli(*args, "--latency-samples", "4", "--json", "2.json", env=env)  # measured again, same cache
    assert again.returncode == 0, again.stderr
    (remeasured,) = json.loads((work / "2.json").read_text())["runs"]
    assert remeasured["training"]["trained_in"] == run["run_id"] and remeasured["speed"]["build_seconds"] is None
    assert len(pids.read_text().split()) == 3 and all(gone(int(pid)) for pid in pids.read_text().split())


def test_a_killed_compare_takes_its_units_workers_with_it(tmp_path, ag_news_data):
    site, work, pids = setup(tmp_path)
    os.environ["WORKER_PIDS"] = str(pids)
    try:
        process = spawn(
            site,
            work,
            "compare",
            "--plugins",
            "hosts-worker",
            "--data",
            ag_news_data,
            *FAST,
            "--latency-samples",
            "100000",
        )
    finally:
        del os.environ["WORKER_PIDS"]
    deadline = time.monotonic() + 120
    while not (pids.is_file() and len(pids.read_text().split()) == 2):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.1)
    unit = psutil.Process(int(pids.read_text().split()[-1])).parent()
    os.killpg(process.pid, signal.SIGKILL)  # the compare's group: the unit has a group of its own
    process.wait()
    deadline = time.monotonic() + 10
    while not (gone(unit.pid) and all(gone(int(pid)) for pid in pids.read_text().split())):
        assert time.monotonic() < deadline, "the unit or its worker outlived the killed compare"
        time.sleep(0.1)


def test_bench_builds_an_engines_model_through_the_approach_that_trains_it(tmp_path, ag_news_data):
    site, work, _ = setup(tmp_path)
    result = make_cli(site, work)(
        "bench",
        "--plugin",
        "worker-engine",
        "--spec",
        "agnews",
        "--random-weights",
        "--data",
        ag_news_data,
        "--limit-test",
        "16",
        "--batch-sizes",
        "4",
        "--rounds",
        "1",
        "--latency-samples",
        "4",
        "--concurrency",
        "2",
        "--requests",
        "8",
        "--json",
        "b.json",
        env={"HARNESS_LOAD_PLUGINS": "hosts-worker,worker-engine"},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((work / "b.json").read_text())["throughput"][0]["samples_per_s"] > 0


def test_the_memory_sampler_ignores_a_torch_still_being_imported(monkeypatch):
    """The sampler thread runs while the unit imports torch: a half-imported module has no ``cuda`` yet, and
    asking it killed the thread (and with it the row's peak memory)."""
    import importlib.machinery
    import types

    from harness import measure

    half = types.ModuleType("torch")
    half.__spec__ = importlib.machinery.ModuleSpec("torch", None)
    half.__spec__._initializing = True
    monkeypatch.setitem(sys.modules, "torch", half)
    assert measure._torch() is None and measure.on_gpu() is False
    with measure.PeakMemory(interval=0.001) as memory:
        time.sleep(0.05)
    assert memory.rss_peak_mb > 0 and memory._thread is not None and not memory._thread.is_alive()


def test_the_memory_sampler_counts_a_process_started_inside_the_block():
    """An engine's server starts while serving is measured: the sampler renews its list of descendants every
    ``children_every`` seconds (not at every sample, which cost throughput), and the child's memory counts."""
    from harness import measure

    code = "import time; block = b'x' * (300 * 2**20); time.sleep(1.5)"
    with measure.PeakMemory() as alone:
        time.sleep(0.1)
    with measure.PeakMemory() as memory:
        subprocess.run([sys.executable, "-c", code], check=True)
    assert memory.rss_peak_mb >= alone.rss_peak_mb + 250


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's peak RSS is Linux's")
def test_the_peak_is_the_kernels_own_for_the_block_alone():
    """A spike shorter than any sampling interval is in the peak (the kernel's VmHWM, reset when the block
    starts), and a larger one before the block is not."""
    from harness import measure

    def touch(mb: int) -> None:
        """``mb`` MiB made resident and given back to the kernel at once: an anonymous mapping, whatever the
        allocator's state (a malloc'd buffer may stay resident after it is freed, hiding the next spike)."""
        with mmap.mmap(-1, mb * 2**20) as block:
            for offset in range(0, mb * 2**20, mmap.PAGESIZE):
                block[offset] = 1

    touch(400)
    with measure.PeakMemory(interval=60, children_every=60) as memory:  # the thread never samples
        touch(150)
    with measure.PeakMemory(interval=60, children_every=60) as quiet:
        pass
    assert memory._kernel_peak and quiet._kernel_peak
    assert memory.rss_peak_mb >= quiet.rss_peak_mb + 120
    assert quiet.rss_peak_mb < memory.rss_peak_mb < quiet.rss_peak_mb + 300  # the 400 MB before it is not counted
