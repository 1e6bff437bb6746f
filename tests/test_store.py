"""The store's pieces: JSON that cannot break a run, artifacts rebuilt from disk, the data cache, old stores."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from harness.data_cache import read_data_cache, write_data_cache
from harness.data_load import Datasets
from harness.progress import RunProgress
from harness.store import Store
from harness.store.records import jsonable, load_artifact, read_predictions, save_artifact, write_predictions
from harness.types import Artifact, Example, Prediction


def test_numpy_values_become_plain_json_and_other_objects_are_named():
    value = {"scores": {"a": np.float32(0.25), "b": np.float64(0.75)}, "ids": np.arange(3), "pair": (1, 2)}
    assert jsonable(value, "x") == {"scores": {"a": 0.25, "b": 0.75}, "ids": [0, 1, 2], "pair": [1, 2]}
    with pytest.raises(TypeError, match=r"prediction 3\['raw'\] is a builtins.object"):
        jsonable({"raw": object()}, "prediction 3")


def test_predictions_round_trip_through_the_store(tmp_path):
    predictions = [Prediction(label="a", scores={"a": np.float32(1.0)}, truncated=True), Prediction(raw="x")]
    write_predictions(tmp_path / "p.jsonl", predictions)
    assert read_predictions(tmp_path / "p.jsonl") == [
        Prediction(label="a", scores={"a": 1.0}, truncated=True),
        Prediction(raw="x"),
    ]


def test_an_artifact_is_rebuilt_from_disk_with_an_empty_state(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    artifact = Artifact(
        path=model,
        state={"model": object()},
        train_samples=12,
        parameters=3,
        model="m",
        dtype="float32",
        device="cpu",
        notes=["a note"],
        info={"best_metric": np.float64(0.5)},
    )
    stored = load_artifact(save_artifact(artifact, tmp_path))
    assert stored.path == model and stored.state == {}
    assert (stored.train_samples, stored.parameters, stored.notes, stored.info) == (
        12,
        3,
        ["a note"],
        {"best_metric": 0.5},
    )
    assert load_artifact(save_artifact(Artifact(), tmp_path)).path is None  # zero-shot: nothing trained


def test_the_data_cache_is_written_once_and_read_back_identically(tmp_path):
    data = Datasets(
        [Example("1", "a", label="x")], [Example("2", "b", label="y")], [Example("3", "c", label="x")], "train"
    )
    path = write_data_cache(data, tmp_path)
    stamp = path.stat().st_mtime_ns
    assert write_data_cache(data, tmp_path) == path and path.stat().st_mtime_ns == stamp
    assert read_data_cache(path) == data


def test_phases_are_exclusive_so_an_evaluation_is_not_training_time():
    progress = RunProgress()
    with progress.phase("train_loop"):
        time.sleep(0.05)
        with progress.phase("evaluation"):
            time.sleep(0.1)
        time.sleep(0.05)
    with progress.phase("evaluation"):  # a phase entered again adds up
        time.sleep(0.02)
    assert 0.09 < progress.phases["train_loop"] < 0.15
    assert 0.12 < progress.phases["evaluation"] < 0.2


def test_a_store_from_before_two_identities_is_kept_for_reports_and_never_reused(tmp_path: Path):
    db = sqlite3.connect(tmp_path / "runs.db")
    db.execute(
        "CREATE TABLE runs (run_id TEXT PRIMARY KEY, approach TEXT NOT NULL, spec TEXT NOT NULL, "
        "status TEXT NOT NULL, reuse_key TEXT NOT NULL, created TEXT NOT NULL)"
    )
    db.execute("INSERT INTO runs VALUES ('old', 'bert', 'agnews', 'ok', 'k', '2026')")
    db.commit()
    db.close()
    store = Store(tmp_path)
    assert store.find_measured("k") is None and store.find_trained("k") is None
    assert store.db.execute("SELECT count(*) FROM runs_v1").fetchone() == (1,)


def test_torch_is_seeded_when_first_imported_not_imported_to_be_seeded():
    import subprocess
    import sys

    # transformers probes with find_spec('torch') before it imports it: the probe must not use up the seeding.
    code = (
        "import sys, importlib.util; from harness.seeding import seed_everything; seed_everything(3); "
        "assert 'torch' not in sys.modules; importlib.util.find_spec('torch'); import transformers, torch; "
        "a = torch.rand(3); torch.manual_seed(3); assert torch.equal(a, torch.rand(3)); print('ok')"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "ok\n"
