"""Out of accelerator memory: predict halves its batch until it fits and says so; training fails its row with
the settings to lower. The runner, launcher processes and store are real; the approach is a small plugin
that raises torch's own OutOfMemoryError past a batch size, as a GPU would (CI has no GPU to fill)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from harness.data_load import Datasets
from harness.planning import CompareOptions, plan_settings
from harness.plugins import load_plugins
from harness.report_terminal import comparison_table
from harness.runner import run_approach
from harness.spec import Spec
from harness.store import Store
from harness.testing import tiny_dataset
from harness.types import Comparison

GREEDY = """
import json
from pathlib import Path

import torch

from harness import ApproachInfo, Artifact, Prediction, hookimpl

FITS = 8  # the largest batch this "GPU" holds


@hookimpl
def harness_describe():
    return ApproachInfo(task_types=("classification",), predict_settings=("predict_batch_size",),
                        settings={"predict_batch_size": 64, "per_device_train_batch_size": 32, "max_length": 128})


def out_of_memory(batch):
    return torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {batch * 64} MiB")


@hookimpl
def harness_train(task, train, settings, workdir):
    if settings["per_device_train_batch_size"] > FITS:
        raise out_of_memory(settings["per_device_train_batch_size"])
    path = Path(workdir) / "label.json"
    path.write_text(json.dumps(train[0].label))
    return Artifact(path=path, train_samples=len(train))


@hookimpl
def harness_predict(examples, artifact, settings):
    label = json.loads(Path(artifact.path).read_text())
    batch = settings["predict_batch_size"]
    for start in range(0, len(examples), batch):
        if len(examples[start:start + batch]) > FITS:
            raise out_of_memory(batch)
    return [Prediction(label=label) for _ in examples]
"""


def run(tmp_path: Path, **settings):
    path = tmp_path / "greedy_plugin.py"
    path.write_text(GREEDY, encoding="utf-8")
    module_spec = importlib.util.spec_from_file_location("greedy_plugin", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    plugins = load_plugins(entry_points=False)
    plugins.register(module, "greedy")
    spec = Spec.model_validate(
        {
            "name": "oom",
            "task": {"type": "classification", "labels": ["sport", "weather", "money"]},
            "dataset": {"train": "t.jsonl", "test": "t.jsonl"},
            "plugins": {"greedy": settings},
        }
    )
    plan = plan_settings(plugins, spec, ["greedy"], {})["greedy"]
    train, test = tiny_dataset()
    data = Datasets(train, [], test, "none")
    return run_approach(plugins, spec, data, plan, Store(tmp_path / "store"), CompareOptions(latency_samples=3))


def test_predict_out_of_memory_halves_the_batch_until_it_fits_and_says_so(tmp_path):
    record = run(tmp_path, per_device_train_batch_size=8)
    assert record.status == "ok", record.error
    assert record.speed["predict_batch_size"] == 8  # 64 -> 32 -> 16 -> 8
    note = "predict_batch_size 64 ran out of accelerator memory; measured at 8, the largest halving that fit"
    assert note in record.model["notes"]
    table = comparison_table(Comparison("c", "oom", record.created, [record]))
    assert note in str(table.caption)


def test_training_out_of_memory_fails_the_row_naming_the_settings_to_lower(tmp_path):
    record = run(tmp_path)
    assert record.status == "failed"
    assert record.error == (
        "OutOfMemory: out of accelerator memory while training; lower per_device_train_batch_size "
        "(now 32) or max_length (now 128), and raise gradient_accumulation_steps to keep the "
        "effective batch"
    )


def test_training_out_of_memory_names_gradient_checkpointing_where_the_approach_has_it_off():
    from harness.units import training_memory_advice

    settings = {"per_device_train_batch_size": 12, "max_length": 2048}
    assert "checkpointing" not in training_memory_advice(settings)
    assert "checkpointing" not in training_memory_advice({**settings, "gradient_checkpointing": True})
    for value, said in (("auto", "auto"), (False, "false")):
        assert training_memory_advice({**settings, "gradient_checkpointing": value}).endswith(
            f"; or set gradient_checkpointing: true (now {said})"
        )
