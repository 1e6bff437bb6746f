"""Run identity and isolation: what retrains, what only re-measures, what a crash costs.

Every compare here is the real CLI in a subprocess, each approach's training and measuring in processes
of their own, with plugins installed for real in a site directory on PYTHONPATH.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from harness.identity import model_identity
from conftest import docs_plugin_source, install_site, make_cli

COMMON = ["--spec", "agnews", "--limit-train", "120", "--limit-test", "40", "--latency-samples", "4"]

# An approach that trains nothing; each misfit below adds its own predict.
TRAINS_NOTHING = '''
from harness import ApproachInfo, Artifact, Prediction, hookimpl

@hookimpl
def harness_describe():
    return ApproachInfo(task_types=("classification",), settings={})

@hookimpl
def harness_train(task, train):
    return Artifact(train_samples=len(train))
'''

ABORTS_IN_PREDICT = TRAINS_NOTHING + '''
import os

@hookimpl
def harness_predict(examples):
    os.abort()  # a segfault in native code looks the same to the parent: a process dead of a signal
'''

NUMPY_SCORES = TRAINS_NOTHING + '''
import numpy as np

@hookimpl
def harness_predict(task, examples):
    probabilities = np.full(len(task.labels), 1.0 / len(task.labels), dtype=np.float32)
    return [Prediction(label=task.labels[int(np.argmax(probabilities))],
                       scores=dict(zip(task.labels, probabilities))) for _ in examples]
'''


def runs(tmp_path: Path, name: str) -> list[dict]:
    return json.loads((tmp_path / name).read_text())["runs"]


@pytest.fixture
def site_cli(tmp_path):
    """A CLI whose third-party plugins are copies the test may edit: the docs' plugin and two misfits."""
    site = install_site(
        tmp_path / "site",
        {"harness_naive_bayes": docs_plugin_source(), "aborts_plugin": ABORTS_IN_PREDICT, "numpy_plugin": NUMPY_SCORES},
        {"naive-bayes": "harness_naive_bayes", "naive-bayes-tables": "harness_naive_bayes:tables",
         "aborts": "aborts_plugin", "numpy-scores": "numpy_plugin"},
    )
    work = tmp_path / "work"
    work.mkdir()
    return site, work, make_cli(site, work)


def test_editing_the_plugin_source_retrains_and_a_predict_setting_only_remeasures(site_cli, ag_news_data):
    site, work, cli = site_cli
    first = cli("compare", "--plugins", "naive-bayes", "--data", ag_news_data, *COMMON, "--json", "1.json")
    assert first.returncode == 0, first.stderr
    (trained,) = runs(work, "1.json")
    assert trained["training"]["trained_in"] == trained["run_id"]

    # smoothing is a predict setting of the docs' plugin: measured again on the stored model.
    smoothed = cli("compare", "--plugins", "naive-bayes", "--data", ag_news_data, *COMMON,
                   "--set", "naive-bayes.smoothing=0.5", "--json", "2.json")
    assert smoothed.returncode == 0, smoothed.stderr
    (remeasured,) = runs(work, "2.json")
    assert remeasured["status"] == "ok" and remeasured["run_id"] != trained["run_id"]
    assert remeasured["training"]["trained_in"] == trained["run_id"]
    assert "smoothing 1.0 -> 0.5" in remeasured["training"]["reason"]
    assert "training reused from run" in smoothed.stdout

    # The same command again: the whole row is reused.
    same = cli("compare", "--plugins", "naive-bayes", "--data", ag_news_data, *COMMON, "--json", "3.json")
    assert [r["status"] for r in runs(work, "3.json")] == ["reused"]
    assert runs(work, "3.json")[0]["run_id"] == trained["run_id"], same.stderr

    # An edit of the plugin's source, even a comment, is new code: it trains again.
    module = site / "harness_naive_bayes.py"
    module.write_text(module.read_text() + "\n# an edit\n")
    edited = cli("compare", "--plugins", "naive-bayes", "--data", ag_news_data, *COMMON, "--json", "4.json")
    assert edited.returncode == 0, edited.stderr
    (retrained,) = runs(work, "4.json")
    assert retrained["status"] == "ok" and retrained["training"]["trained_in"] == retrained["run_id"]
    assert retrained["training"]["identity"]["code"] != trained["training"]["identity"]["code"]


def test_an_engine_serves_the_trained_model_without_training_it_again(site_cli, ag_news_data):
    _, work, cli = site_cli
    result = cli("compare", "--plugins", "naive-bayes,naive-bayes-tables", "--data", ag_news_data, *COMMON,
                 "--json", "out.json")
    assert result.returncode == 0, result.stderr
    bayes, tables = runs(work, "out.json")
    assert tables["approach"] == "naive-bayes-tables" and tables["status"] == "ok"
    assert tables["training"]["trained_in"] == bayes["run_id"]
    assert tables["training"]["key"] == bayes["training"]["key"]
    assert tables["metrics"]["accuracy"] == bayes["metrics"]["accuracy"]  # the same model, served another way
    assert tables["serving"]["dtype"] == "float64"
    assert "served by naive-bayes-tables" in tables["training"]["reason"]

    # Asked for alone in a later compare, the engine still finds the stored training.
    alone = cli("compare", "--plugins", "naive-bayes-tables", "--data", ag_news_data, *COMMON, "--json", "alone.json")
    assert alone.returncode == 0, alone.stderr
    assert runs(work, "alone.json")[0]["status"] == "reused"

    # The docs' plugin and its engine can be benched from the stored run: the artifact contract is all bench needs.
    small = ["--data", ag_news_data, "--limit-test", "16", "--batch-sizes", "4", "--rounds", "1", "--latency-samples", "4",
             "--concurrency", "2", "--requests", "8"]
    for approach in ("naive-bayes", "naive-bayes-tables"):
        bench = cli("bench", "--plugin", approach, "--spec", "agnews", "--run", bayes["run_id"], *small, "--json", "b.json")
        assert bench.returncode == 0, bench.stderr
        assert json.loads((work / "b.json").read_text())["throughput"][0]["samples_per_s"] > 0


def test_a_process_that_dies_is_a_failed_row_and_numpy_scores_are_stored(site_cli, ag_news_data):
    _, work, cli = site_cli
    result = cli("compare", "--plugins", "aborts,numpy-scores,naive-bayes", "--data", ag_news_data, *COMMON,
                 "--json", "out.json")
    assert result.returncode == 1, result.stderr
    aborted, numpy_run, bayes = runs(work, "out.json")
    assert aborted["status"] == "failed" and "measure process died of SIGABRT" in aborted["error"]
    assert aborted["training"]["trained_in"] == aborted["run_id"]  # its training finished and is kept
    assert numpy_run["status"] == "ok" and bayes["status"] == "ok"
    store = work / ".harness" / "runs"
    scores = json.loads((store / numpy_run["run_id"] / "predictions.jsonl").read_text().splitlines()[0])["scores"]
    assert scores == {label: 0.25 for label in ("World", "Sports", "Business", "Sci/Tech")}
    assert not list(store.glob("*.partial"))


def test_predict_settings_and_latency_options_remeasure_while_new_weights_retrain(tmp_path, plugin_site, tiny_bert, ag_news_data):
    model = tmp_path / "model"
    shutil.copytree(tiny_bert, model)
    cli = make_cli(plugin_site, tmp_path)
    # Inline: what is reused is the runner's decision, whichever launcher runs the units (saves 4 process starts).
    bert = ["--plugins", "bert", "--data", ag_news_data, *COMMON, "--set", f"bert.model={model}",
            "--set", "bert.num_train_epochs=1", "--launcher", "inline"]
    first = cli("compare", *bert, "--json", "1.json")
    assert first.returncode == 0, first.stderr
    (trained,) = runs(tmp_path, "1.json")
    assert trained["training"]["identity"]["models"]["model"].startswith("local:")

    batch = cli("compare", *bert, "--set", "bert.predict_batch_size=8", "--json", "2.json")
    assert batch.returncode == 0, batch.stderr
    (by_batch,) = runs(tmp_path, "2.json")
    assert by_batch["training"]["trained_in"] == trained["run_id"] and by_batch["speed"]["predict_batch_size"] == 8
    assert by_batch["metrics"]["accuracy"] == trained["metrics"]["accuracy"]

    latency = cli("compare", *[a if a != "4" else "6" for a in bert], "--json", "3.json")
    assert latency.returncode == 0, latency.stderr
    (by_latency,) = runs(tmp_path, "3.json")
    assert by_latency["training"]["trained_in"] == trained["run_id"]
    assert "latency_samples 4 -> 6" in by_latency["training"]["reason"]

    from transformers import BertModel

    BertModel.from_pretrained(model).apply(lambda m: m.reset_parameters() if hasattr(m, "reset_parameters") else None) \
        .save_pretrained(model)
    changed = cli("compare", *bert, "--json", "4.json")
    assert changed.returncode == 0, changed.stderr
    (retrained,) = runs(tmp_path, "4.json")
    assert retrained["training"]["trained_in"] == retrained["run_id"]
    assert retrained["training"]["identity"]["models"] != trained["training"]["identity"]["models"]


def test_a_hub_model_is_identified_by_the_commit_its_revision_resolves_to(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert model_identity("org/tiny") == "hub:org/tiny@unresolved"
    refs = tmp_path / "models--org--tiny" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text("a" * 40)
    assert model_identity("org/tiny") == f"hub:org/tiny@{'a' * 40}"
    (refs / "main").write_text("b" * 40)  # the branch moved: another model
    assert model_identity("org/tiny") == f"hub:org/tiny@{'b' * 40}"
    assert model_identity(f"org/tiny@{'c' * 40}") == f"hub:org/tiny@{'c' * 40}"


def test_a_local_model_is_identified_by_its_files_content(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    before = model_identity(str(tmp_path))
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "noise").write_text("x")  # hidden folders are not the model
    assert model_identity(str(tmp_path)) == before
    (tmp_path / "model.safetensors").write_bytes(b"other weights")
    assert model_identity(str(tmp_path)) != before


def test_a_validation_file_is_used_as_given_and_is_part_of_the_training_identity(site_cli, ag_news_data, shared):
    _, work, cli = site_cli
    lines = (shared / "data" / "ag_news" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    (work / "dev.jsonl").write_text("\n".join(lines[-50:]) + "\n", encoding="utf-8")
    train, test = ag_news_data.split(",")
    result = cli("compare", "--plugins", "naive-bayes", "--data", f"{train},validation={work / 'dev.jsonl'},{test}",
                 *COMMON, "--json", "out.json")
    assert result.returncode == 0, result.stderr
    (run,) = runs(work, "out.json")
    assert (run["n_train"], run["n_validation"], run["environment"]["validation_source"]) == (120, 50, "file")
    assert run["training"]["identity"]["validation_source"] == "file"
    assert "validation 50 (file)" in result.stdout
