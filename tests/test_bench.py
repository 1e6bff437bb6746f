"""harness bench's measuring functions on stand-in predicts: each path's peak memory is its own; and what bench
and the harness_benchmark fixture build and call for a spec row of another approach (a real plugin, the real CLI)."""

from __future__ import annotations

import json
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


# An approach that writes down what train got and which prompt predict asked with (RECORDER_LOG, a JSONL file).
RECORDER = """
import json
import os

from harness import Approach, Artifact, Prediction, Settings, hookimpl, setting


class RecorderSettings(Settings):
    num_train_epochs: float = setting(1.0, ge=0)


def log(**entry):
    with open(os.environ["RECORDER_LOG"], "a", encoding="utf-8") as file:
        file.write(json.dumps(entry) + "\\n")


class Recorder(Approach):
    name = "recorder"
    task_types = ("classification",)
    settings = RecorderSettings

    def train(self, task, train, validation, settings, context):
        log(hook="train", examples=len(train) + len(validation), epochs=settings.num_train_epochs,
            random_weights=context.random_weights)
        return Artifact(train_samples=len(train))

    def predict(self, task, artifact, examples, settings, context):
        log(hook="predict", prompt=task.prompt.user)
        return [Prediction(label=task.labels[0]) for _ in examples]


@hookimpl
def harness_register_approaches(register):
    register(Recorder())
"""

# A row of another approach with a prompt of its own, as compare runs it: hooks go to recorder, asked with "O {text}".
ROW_SPEC = """name: rows
task: {type: classification, labels: [a, b], prompt: 'Q {text}', prompts: {other: {user: 'O {text}'}}}
dataset: {train: data.jsonl, test: data.jsonl}
validation: 0.25
plugins:
  rec-copy: {approach: recorder, prompt: other}
"""


@pytest.fixture
def row_spec(tmp_path, monkeypatch):
    """The spec, 16 examples, the recorder importable, and its log: (spec path, log path)."""
    lines = [json.dumps({"text": f"text number {i}", "label": "ab"[i % 2]}) for i in range(16)]
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "rows.yaml").write_text(ROW_SPEC, encoding="utf-8")
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "recorder_plugin.py").write_text(RECORDER, encoding="utf-8")
    monkeypatch.setenv("RECORDER_LOG", str(tmp_path / "log.jsonl"))
    return tmp_path / "rows.yaml", tmp_path / "log.jsonl"


def logged(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("random_weights", [True, False])
def test_the_benchmark_fixture_builds_a_spec_row_as_bench_and_compare_do(
    harness_benchmark, row_spec, monkeypatch, random_weights
):
    """``random_weights``: train gets no examples and harness.bench.UNTRAINED, as `harness bench
    --random-weights` builds it; either way the row's hooks go to its approach, asked with the row's prompt."""
    import importlib

    from harness.bench import UNTRAINED
    from harness.plugins import load_plugins

    spec, log = row_spec
    monkeypatch.syspath_prepend(str(spec.parent / "site"))
    plugins = load_plugins(entry_points=False)
    plugins.register(importlib.import_module("recorder_plugin"), "recorder-plugin")
    predictions = harness_benchmark(
        "rec-copy", str(spec), plugins=plugins, random_weights=random_weights, rounds=1, warmup_rounds=0
    )
    assert len(predictions) == 16
    train, *predicts = logged(log)
    expected = (
        {"examples": 0, "epochs": UNTRAINED["num_train_epochs"], "random_weights": True}
        if random_weights
        else {"examples": 16, "epochs": 1.0, "random_weights": False}
    )
    assert train == {"hook": "train", **expected}
    assert predicts and all(entry == {"hook": "predict", "prompt": "O {text}"} for entry in predicts)


def test_bench_random_weights_runs_a_spec_row_through_its_approach(row_spec, tmp_path):
    """`harness bench --plugin ROW --random-weights` for a row of another approach: the untrained build
    (harness.bench.untrained), then predict called on the approach the row runs, with the row's prompt."""
    import os
    import subprocess

    from conftest import install_site

    spec, log = row_spec
    site = install_site(tmp_path / "site", {}, {"recorder": "recorder_plugin"})
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
        "HARNESS_LOAD_PLUGINS": "recorder",
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness",
            "bench",
            "--plugin",
            "rec-copy",
            "--spec",
            str(spec),
            "--random-weights",
            "--batch-sizes",
            "4",
            "--rounds",
            "1",
            "--latency-samples",
            "2",
            "--concurrency",
            "2",
            "--requests",
            "4",
            "--json",
            str(tmp_path / "bench.json"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads((tmp_path / "bench.json").read_text())
    assert (out["approach"], out["source"], out["n_examples"]) == ("rec-copy", "random weights", 16)
    train, *predicts = logged(log)
    assert train == {"hook": "train", "examples": 0, "epochs": 0.0, "random_weights": True}
    assert predicts and all(entry == {"hook": "predict", "prompt": "O {text}"} for entry in predicts)
