"""Predict throughput of every built-in approach on tiny models (pytest-benchmark), and gates that hold
on a noisy machine because they compare two things measured in the same run.

Normal runs pass --benchmark-disable (each benchmark runs once, untimed, and still asserts);
docs/benchmarking.md has the commands that save a baseline and fail a slower change.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from conftest import AG_NEWS, MINILM, ROOT

AG = {"train": str(AG_NEWS / "train.jsonl"), "test": str(AG_NEWS / "test.jsonl")}


def test_bert_predict_throughput(harness_benchmark, tiny_bert):
    predictions = harness_benchmark(
        "bert",
        "agnews",
        data=AG,
        limit_train=64,
        limit_test=256,
        settings={"model": tiny_bert, "num_train_epochs": 1},
        rounds=5,
    )
    assert len(predictions) == 256 and all(p.label for p in predictions)


def test_qwen_predict_throughput(harness_benchmark, tiny_qwen):
    predictions = harness_benchmark(
        "qwen",
        "agnews",
        data=AG,
        limit_train=64,
        limit_test=128,
        settings={
            "model": tiny_qwen,
            "num_train_epochs": 1,
            "per_device_train_batch_size": 16,
            "gradient_accumulation_steps": 1,
        },
        rounds=3,
    )
    assert len(predictions) == 128 and all(abs(sum(p.scores.values()) - 1) < 1e-4 for p in predictions)


def test_length_buckets_and_packing_beat_padded_file_order_in_the_same_run(shared):
    """MiniLM on 128 AG News texts, batches of 32, measured interleaved: padded batches bucketed by length
    must beat padded batches in file order, and so must packed batches in file order (harness.packing,
    bert's default on CPU), with the same answers."""
    import harness_plugins.bert as bert
    from harness.data_files import read_examples
    from harness.progress import SILENT
    from harness.spec import load_spec
    from harness.units import without_answers

    task = load_spec("agnews").to_task()
    examples = without_answers(read_examples(AG_NEWS / "test.jsonl", task, "text", "label", "fields")[:128])
    from harness import RunContext

    settings = bert.BertSettings(model=str(MINILM), num_train_epochs=0.0, predict_batch_size=32, device="cpu")
    approach, context = bert.Bert(), RunContext(batch_size=32, workdir=Path("."), progress=SILENT)
    artifact = approach.train(task, [], [], settings, context)
    ways = {
        "padded, by length": {"packing": "padded", "bucket_by_length": True},
        "padded, file order": {"packing": "padded", "bucket_by_length": False},
        "packed, file order": {"packing": "packed", "bucket_by_length": False},
    }
    timings: dict[str, list[float]] = {way: [] for way in ways}
    answers = {}

    def run(way: str) -> float:
        way_settings = settings.model_copy(update=ways[way])
        approach.load(task, artifact, way_settings, context)  # packing is decided at load
        start = time.perf_counter()
        answers[way] = approach.predict(task, artifact, examples, way_settings, context)
        return time.perf_counter() - start

    for way in ways:  # warm-up every path
        run(way)
    for _ in range(3):
        for way in ways:
            timings[way].append(run(way))
    median = {way: statistics.median(times) for way, times in timings.items()}
    print({way: f"{len(examples) / seconds:.1f} texts/s" for way, seconds in median.items()})
    assert median["padded, by length"] / median["padded, file order"] < 0.9
    assert median["packed, file order"] / median["padded, file order"] < 0.9
    assert [p.label for p in answers["packed, file order"]] == [p.label for p in answers["padded, file order"]]


GATED_TEST = '''
import os, time
from harness.plugins import load_plugins
import harness_naive_bayes


def slowed(predict):
    """predict made slower by SLOWDOWN seconds a call: the regression the gate must catch."""

    def slow_predict(*args, **kwargs):
        result = predict(*args, **kwargs)
        time.sleep(float(os.environ.get("SLOWDOWN", "0")))
        return result

    return slow_predict


def test_naive_bayes_speed(harness_benchmark):
    plugins = load_plugins(entry_points=False)
    plugins.register(harness_naive_bayes, "naive-bayes")
    approach = plugins.approach("naive-bayes")
    approach.predict = slowed(approach.predict)
    data = {"train": os.environ["TRAIN"], "test": os.environ["TEST"]}
    predictions = harness_benchmark(
        "naive-bayes", "agnews", data=data, limit_train=400, limit_test=200, plugins=plugins, rounds=7
    )
    assert len(predictions) == 200
'''


def test_the_gate_fails_a_slowed_predict_and_passes_the_normal_code(tmp_path, plugin_site, shared):
    (tmp_path / "test_gated.py").write_text(GATED_TEST)
    storage = f"file://{tmp_path / 'benchmarks'}"
    # A pytest of its own, not an xdist worker: it must save and compare benchmarks itself.
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")},
        "TRAIN": AG["train"],
        "TEST": AG["test"],
        "PYTHONPATH": os.pathsep.join([str(plugin_site), str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }

    def pytest_run(*args: str, slowdown: str = "0") -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "--rootdir",
                str(tmp_path),
                f"--benchmark-storage={storage}",
                str(tmp_path / "test_gated.py"),
                *args,
            ],
            cwd=tmp_path,
            env={**env, "SLOWDOWN": slowdown},
            capture_output=True,
            text=True,
            timeout=300,
        )

    baseline = pytest_run("--benchmark-save=main")
    assert baseline.returncode == 0, baseline.stdout + baseline.stderr
    gate = ("--benchmark-compare=0001", "--benchmark-compare-fail=median:500%")
    slowed = pytest_run(*gate, slowdown="0.25")
    assert slowed.returncode != 0 and "Performance has regressed" in slowed.stdout + slowed.stderr, slowed.stdout
    normal = pytest_run(*gate)
    assert normal.returncode == 0, normal.stdout + normal.stderr


def test_onnx_runtime_against_pytorch_as_ratios_in_the_same_run(shared, tmp_path):
    """MiniLM (its head untrained, saved as a bert run would be) on 128 AG News texts, batches of 64: bert's own
    packed PyTorch path, ONNX Runtime fp32 and int8 on the same model, timed interleaved in one process. The
    ratios are printed; the gates are what holds on any CPU: fp32 gives PyTorch's answers, and int8 weights
    run faster than fp32 in ONNX Runtime."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import harness_plugins.bert as bert
    import harness_plugins.bert_onnx as bert_onnx
    from harness import Artifact, RunContext
    from harness.data_files import read_examples
    from harness.progress import SILENT
    from harness.spec import load_spec
    from harness.units import without_answers

    task = load_spec("agnews").to_task()
    examples = without_answers(read_examples(AG_NEWS / "test.jsonl", task, "text", "label", "fields")[:128])
    model_dir = tmp_path / "model"
    AutoModelForSequenceClassification.from_pretrained(str(MINILM), num_labels=4).save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(str(MINILM)).save_pretrained(model_dir)
    context = RunContext(batch_size=64, progress=SILENT)
    paths = {
        "bert (PyTorch, packed)": (bert.Bert(), bert.BertSettings(model=str(MINILM), device="cpu"), None),
        "onnx fp32": (bert_onnx.BertOnnx(), bert_onnx.BertOnnxSettings(), tmp_path / "fp32"),
        "onnx int8": (bert_onnx.BertOnnx(), bert_onnx.BertOnnxSettings(precision="int8"), tmp_path / "int8"),
    }
    artifacts, timings, answers = {}, {name: [] for name in paths}, {}
    for name, (approach, settings, cache) in paths.items():
        artifacts[name] = Artifact(path=model_dir)
        approach.load(task, artifacts[name], settings, RunContext(cache_dir=cache))

    def run(name: str) -> float:
        approach, settings, _ = paths[name]
        start = time.perf_counter()
        answers[name] = approach.predict(task, artifacts[name], examples, settings, context)
        return time.perf_counter() - start

    for name in paths:  # warm-up
        run(name)
    for _ in range(2):
        for name in paths:
            timings[name].append(run(name))
    median = {name: statistics.median(times) for name, times in timings.items()}
    base = median["bert (PyTorch, packed)"]
    print(
        {
            name: f"{len(examples) / seconds:.1f} texts/s ({base / seconds:.2f}x bert)"
            for name, seconds in median.items()
        }
    )
    assert [p.label for p in answers["onnx fp32"]] == [p.label for p in answers["bert (PyTorch, packed)"]]
    assert median["onnx int8"] < median["onnx fp32"]
