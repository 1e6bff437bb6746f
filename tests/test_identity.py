"""Run identity and isolation: what retrains, what only re-measures, what a crash costs.

Every compare here is the real CLI in a subprocess, each approach's training and measuring in processes
of their own, with plugins installed for real in a site directory on PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import docs_plugin_source, install_site, make_cli
from harness.identity import model_identity

COMMON = ["--spec", "agnews", "--limit-train", "120", "--limit-test", "40", "--latency-samples", "4"]

# An approach that trains nothing; each misfit below adds its own predict.
TRAINS_NOTHING = """
from harness import ApproachInfo, Artifact, Prediction, hookimpl

@hookimpl
def harness_describe():
    return ApproachInfo(task_types=("classification",), settings={})

@hookimpl
def harness_train(task, train):
    return Artifact(train_samples=len(train))
"""

ABORTS_IN_PREDICT = (
    TRAINS_NOTHING
    + """
import os

@hookimpl
def harness_predict(examples):
    os.abort()  # a segfault in native code looks the same to the parent: a process dead of a signal
"""
)

NUMPY_SCORES = (
    TRAINS_NOTHING
    + """
import numpy as np

@hookimpl
def harness_predict(task, examples):
    probabilities = np.full(len(task.labels), 1.0 / len(task.labels), dtype=np.float32)
    return [Prediction(label=task.labels[int(np.argmax(probabilities))],
                       scores=dict(zip(task.labels, probabilities))) for _ in examples]
"""
)


def runs(tmp_path: Path, name: str) -> list[dict]:
    return json.loads((tmp_path / name).read_text())["runs"]


@pytest.fixture
def site_cli(tmp_path):
    """A CLI whose third-party plugins are copies the test may edit: the docs' plugin and two misfits."""
    site = install_site(
        tmp_path / "site",
        {"harness_naive_bayes": docs_plugin_source(), "aborts_plugin": ABORTS_IN_PREDICT, "numpy_plugin": NUMPY_SCORES},
        {"naive-bayes": "harness_naive_bayes", "aborts": "aborts_plugin", "numpy-scores": "numpy_plugin"},
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
    assert trained["training"]["reason"] == "no model of this row stored yet"

    # smoothing is a predict setting of the docs' plugin: measured again on the stored model.
    smoothed = cli(
        "compare",
        "--plugins",
        "naive-bayes",
        "--data",
        ag_news_data,
        *COMMON,
        "--set",
        "naive-bayes.smoothing=0.5",
        "--json",
        "2.json",
    )
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

    # A comment or a docstring is no code: the whole row is reused.
    module = site / "harness_naive_bayes.py"
    module.write_text(module.read_text().replace('"""log P(label)', '"""The log P(label)') + "\n# an edit\n")
    commented = cli("compare", "--plugins", "naive-bayes", "--data", ag_news_data, *COMMON, "--json", "4.json")
    assert [r["status"] for r in runs(work, "4.json")] == ["reused"], commented.stderr

    # An edit of a function predict calls re-measures the stored model; it does not train again.
    module.write_text(module.read_text().replace("top = max(log_p.values())", "top = max(log_p.values()) + 0.0"))
    predict_edit = cli("compare", "--plugins", "naive-bayes", "--data", ag_news_data, *COMMON, "--json", "5.json")
    (remeasured,) = runs(work, "5.json")
    assert remeasured["status"] == "ok" and remeasured["training"]["trained_in"] == trained["run_id"], (
        predict_edit.stderr
    )
    assert "measuring code: harness_naive_bayes.classify" in remeasured["training"]["reason"]

    # An edit of the training code trains again, and the identity names what changed.
    module.write_text(module.read_text().replace("json.dumps(model)", "json.dumps(model, sort_keys=True)"))
    edited = cli("compare", "--plugins", "naive-bayes", "--data", ag_news_data, *COMMON, "--json", "6.json")
    assert edited.returncode == 0, edited.stderr
    (retrained,) = runs(work, "6.json")
    assert retrained["status"] == "ok" and retrained["training"]["trained_in"] == retrained["run_id"]
    before, after = trained["training"]["identity"]["code"], retrained["training"]["identity"]["code"]
    assert [name for name in after if before.get(name) != after[name]] == ["harness_naive_bayes.NaiveBayes.train"]
    assert retrained["training"]["reason"] == "training code: harness_naive_bayes.NaiveBayes.train"
    # The runs that trained this row, newest first: what the reason compares with (the re-measured runs did not train).
    from harness.store import Store

    assert Store(work / ".harness").trained_runs("naive-bayes", "agnews") == [retrained["run_id"], trained["run_id"]]
    assert Store(work / ".harness").trained_runs("naive-bayes", "another-spec") == []


def test_a_row_measured_on_one_thread_is_not_reused_for_a_compare_on_all_of_them(site_cli, ag_news_data):
    _, work, cli = site_cli
    args = ["compare", "--plugins", "naive-bayes", "--data", ag_news_data, *COMMON]
    assert cli(*args, "--json", "1.json", env={"OMP_NUM_THREADS": "1"}).returncode == 0
    again = cli(*args, "--json", "2.json", env={"OMP_NUM_THREADS": "2"})
    (first,), (second,) = runs(work, "1.json"), runs(work, "2.json")
    assert second["status"] == "ok" and second["training"]["trained_in"] == first["run_id"], again.stderr
    assert "threads 1 -> 2" in second["training"]["reason"]
    inline = cli(*args, "--json", "3.json", "--launcher", "inline", env={"OMP_NUM_THREADS": "2"})
    assert "launcher process -> inline" in runs(work, "3.json")[0]["training"]["reason"], inline.stderr


EXTRA_SCORER = """
from harness import hookimpl

@hookimpl
def harness_score(examples, predictions):
    return {"right_answers": sum(p.label == ex.label for p, ex in zip(predictions, examples))}
"""


def test_a_reused_row_is_scored_again_by_the_scorers_installed_now(site_cli, ag_news_data):
    site, work, cli = site_cli
    args = ["compare", "--plugins", "naive-bayes", "--data", ag_news_data, *COMMON]
    assert cli(*args, "--json", "1.json").returncode == 0
    (first,) = runs(work, "1.json")
    assert "right_answers" not in first["metrics"]
    install_site(
        site, {"extra_scorer": EXTRA_SCORER}, {"naive-bayes": "harness_naive_bayes", "extra-scorer": "extra_scorer"}
    )
    again = cli(*args, "--json", "2.json")
    (reused,) = runs(work, "2.json")
    assert reused["status"] == "reused" and reused["run_id"] == first["run_id"], again.stderr
    assert reused["metrics"]["right_answers"] == round(first["metrics"]["accuracy"] * first["n_test"])
    assert reused["metrics"]["accuracy"] == first["metrics"]["accuracy"]


def test_the_training_code_is_what_training_calls_and_nothing_else():
    from harness import identity
    from harness.plugins import load_plugins

    plugins = load_plugins()
    code = identity.training_code(plugins.code_roots("bert", ("train",)))
    for trains in (
        "harness_plugins.bert.Bert.train",
        "harness.hf_trainer.train_with_trainer",
        "harness.models.LengthBucketSampler",
        "harness.models.length_bucket_order",
        "harness.seeding.seed_everything",
        "harness.units.train_unit",
    ):
        assert trains in code
    for serves in (
        "harness_plugins.bert.Bert.predict",
        "harness_plugins.bert.Bert.load",
        "harness.units.measure_unit",
        "harness.packing.packed_calls",
    ):
        assert serves not in code
    assert not [name for name in code if name.split(".")[1] in ("measure", "store", "report", "bench", "progress")]
    assert "harness.packing.packed_calls" in identity.measuring_code(plugins.code_roots("bert", ("predict",)))


def test_a_docstring_comment_or_error_message_changes_no_fingerprint_and_a_step_does(tmp_path, monkeypatch):
    from harness import identity

    source = '''
def harness_train(task, train, settings):
    """Train."""
    if not train:
        raise ValueError("no examples")  # a message
    return step(train, settings["learning_rate"])

def step(train, lr):
    return [lr * len(ex.text) for ex in train]

def harness_predict(examples):
    return [None for _ in examples]
'''
    monkeypatch.syspath_prepend(str(tmp_path))

    def fingerprint(text: str, name: str) -> dict[str, str]:
        (tmp_path / f"{name}.py").write_text(text)
        import importlib

        code = identity.training_code([importlib.import_module(name).harness_train])
        assert "harness.units.train_unit" in code  # the core's training path, the same for every approach
        return {key.removeprefix(f"{name}."): value for key, value in code.items() if key.startswith(name)}

    base = fingerprint(source, "fp_base")
    assert set(base) == {"harness_train", "step"}
    quiet = source.replace('"no examples"', '"no training examples: check --limit-train"').replace('"""Train."""', "")
    assert fingerprint(quiet + "\n# more\n", "fp_quiet") == base
    predict = source.replace("return [None for _ in examples]", "return [0 for _ in examples]")
    assert fingerprint(predict, "fp_predict") == base
    changed = fingerprint(source.replace("lr * len(ex.text)", "lr * len(ex.text) ** 2"), "fp_step")
    assert changed["harness_train"] == base["harness_train"] and changed["step"] != base["step"]


# An approach whose train reaches a helper and a class constant through self; predict has a helper of its own.
HELPERS = """
from harness import Approach, Artifact, Prediction


class Base(Approach):
    step = 1

    def _fit(self, train):
        return sum(self.step for _ in train)


class Counting(Base):
    name = "counting"

    def train(self, task, train, validation, settings, context):
        return Artifact(train_samples=self._fit(train))

    def predict(self, task, artifact, examples, settings, context):
        return [self._answer(task) for _ in examples]

    def _answer(self, task):
        return Prediction(label=task.labels[0])
"""


def test_the_training_code_follows_self_into_the_methods_and_constants_train_reaches(tmp_path, monkeypatch):
    import importlib

    from harness import identity
    from harness.plugins import load_plugins
    from harness.run_identity import what_changed

    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # each reload compiles the file as edited
    path = tmp_path / "counting_plugin.py"

    def training_code(source: str) -> dict[str, str]:
        path.write_text(source)  # the same file edited, as a plugin author edits it
        module = importlib.reload(importlib.import_module("counting_plugin"))
        plugins = load_plugins(entry_points=False)
        plugins.register(module.Counting(), "counting")
        code = identity.training_code(plugins.code_roots("counting", ("train",)))
        return {key: value for key, value in code.items() if key.startswith("counting_plugin.")}

    base = training_code(HELPERS)
    # Its own train, the base class's _fit found through self, and the constant _fit reads through self.
    assert set(base) == {"counting_plugin.Counting.train", "counting_plugin.Base._fit", "counting_plugin.Counting.step"}
    fit = training_code(HELPERS.replace("sum(self.step for _ in train)", "sum(2 * self.step for _ in train)"))
    assert what_changed({"code": base}, {"code": fit}, training=True) == ["training code: counting_plugin.Base._fit"]
    step = training_code(HELPERS.replace("step = 1", "step = 10"))
    assert what_changed({"code": base}, {"code": step}, training=True) == [
        "training code: counting_plugin.Counting.step"
    ]
    # What train never reaches, predict's helper, trains nothing again.
    assert training_code(HELPERS.replace("label=task.labels[0]", "label=task.labels[-1]")) == base


# A subclass that keeps its base's train and overrides the helper that train calls through self.
INHERITED_TRAIN = """
from harness import Approach, Artifact, Prediction


class Fitting(Approach):
    name = "fitting"

    def train(self, task, train, validation, settings, context):
        return Artifact(train_samples=self._fit(train))

    def predict(self, task, artifact, examples, settings, context):
        return [Prediction(label=task.labels[0]) for _ in examples]

    def _fit(self, train):
        return len(train)


class Doubling(Fitting):
    name = "doubling"

    def _fit(self, train):
        return 2 * len(train)
"""


def test_an_inherited_train_reaches_the_subclasss_own_helper(tmp_path, monkeypatch):
    """``self._fit`` in a train inherited from the base is looked up on the registered approach's class, as
    Python calls it: editing the subclass's ``_fit`` changes the subclass's training identity."""
    import importlib

    from harness import identity
    from harness.plugins import load_plugins
    from harness.run_identity import what_changed

    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # each reload compiles the file as edited
    path = tmp_path / "inheriting_plugin.py"

    def training_code(source: str, name: str) -> dict[str, str]:
        path.write_text(source)
        module = importlib.reload(importlib.import_module("inheriting_plugin"))
        plugins = load_plugins(entry_points=False)
        plugins.register(module.Fitting(), "fitting")
        plugins.register(module.Doubling(), "doubling")
        code = identity.training_code(plugins.code_roots(name, ("train",)))
        return {key: value for key, value in code.items() if key.startswith("inheriting_plugin.")}

    base = training_code(INHERITED_TRAIN, "doubling")
    assert set(base) == {"inheriting_plugin.Fitting.train", "inheriting_plugin.Doubling._fit"}
    edited = INHERITED_TRAIN.replace("return 2 * len(train)", "return 3 * len(train)")
    assert what_changed({"code": base}, {"code": training_code(edited, "doubling")}, training=True) == [
        "training code: inheriting_plugin.Doubling._fit"
    ]
    # The base approach keeps its own helper, which the subclass's edit does not touch.
    parent = training_code(INHERITED_TRAIN, "fitting")
    assert set(parent) == {"inheriting_plugin.Fitting.train", "inheriting_plugin.Fitting._fit"}
    assert training_code(edited, "fitting") == parent


def test_the_prompt_types_are_training_code():
    from harness import identity
    from harness.plugins import load_plugins

    # Prompt.plain builds every prompt of a model without a chat template: qwen's training code holds it.
    code = identity.training_code(load_plugins().code_roots("qwen", ("train",)))
    assert {"harness.types.Prompt", "harness.types.Example", "harness.types.Task"} <= set(code)
    assert "harness.decoder.Prompter" in code


def test_an_engine_serves_the_trained_model_without_training_it_again(site_cli, ag_news_data):
    _, work, cli = site_cli
    result = cli(
        "compare", "--plugins", "naive-bayes,naive-bayes-tables", "--data", ag_news_data, *COMMON, "--json", "out.json"
    )
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
    small = [
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
    ]
    for approach in ("naive-bayes", "naive-bayes-tables"):
        bench = cli(
            "bench", "--plugin", approach, "--spec", "agnews", "--run", bayes["run_id"], *small, "--json", "b.json"
        )
        assert bench.returncode == 0, bench.stderr
        assert json.loads((work / "b.json").read_text())["throughput"][0]["samples_per_s"] > 0


def test_a_process_that_dies_is_a_failed_row_and_numpy_scores_are_stored(site_cli, ag_news_data):
    _, work, cli = site_cli
    result = cli(
        "compare", "--plugins", "aborts,numpy-scores,naive-bayes", "--data", ag_news_data, *COMMON, "--json", "out.json"
    )
    assert result.returncode == 1, result.stderr
    aborted, numpy_run, bayes = runs(work, "out.json")
    assert aborted["status"] == "failed" and "measure process died of SIGABRT" in aborted["error"]
    assert aborted["training"]["trained_in"] == aborted["run_id"]  # its training finished and is kept
    assert numpy_run["status"] == "ok" and bayes["status"] == "ok"
    store = work / ".harness" / "runs"
    scores = json.loads((store / numpy_run["run_id"] / "predictions.jsonl").read_text().splitlines()[0])["scores"]
    assert scores == {label: 0.25 for label in ("World", "Sports", "Business", "Sci/Tech")}
    assert not list(store.glob("*.partial"))


def test_predict_settings_and_latency_options_remeasure_while_new_weights_retrain(
    tmp_path, plugin_site, tiny_bert, ag_news_data
):
    model = tmp_path / "model"
    shutil.copytree(tiny_bert, model)
    cli = make_cli(plugin_site, tmp_path)
    # Inline: what is reused is the runner's decision, whichever launcher runs the units (saves 4 process starts).
    bert = [
        "--plugins",
        "bert",
        "--data",
        ag_news_data,
        *COMMON,
        "--set",
        f"bert.model={model}",
        "--set",
        "bert.num_train_epochs=1",
        "--launcher",
        "inline",
    ]
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

    BertModel.from_pretrained(model).apply(
        lambda m: m.reset_parameters() if hasattr(m, "reset_parameters") else None
    ).save_pretrained(model)
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
    result = cli(
        "compare",
        "--plugins",
        "naive-bayes",
        "--data",
        f"{train},validation={work / 'dev.jsonl'},{test}",
        *COMMON,
        "--json",
        "out.json",
    )
    assert result.returncode == 0, result.stderr
    (run,) = runs(work, "out.json")
    assert (run["n_train"], run["n_validation"], run["environment"]["validation_source"]) == (120, 50, "file")
    assert run["training"]["identity"]["validation_source"] == "file"
    assert "validation 50 (file)" in result.stdout


def test_a_subclass_in_another_package_is_followed_into_its_own_helper(tmp_path, monkeypatch):
    """The subclass's package is tracked though train is defined in the base's: a user's ``MyApproach(Fitting)``
    in a package of their own trains again when its ``_fit`` is edited."""
    import importlib

    from harness import identity
    from harness.plugins import load_plugins

    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    base, _, sub = INHERITED_TRAIN.partition("class Doubling(Fitting):")
    (tmp_path / "fitting_base.py").write_text(base)
    importlib.reload(importlib.import_module("fitting_base"))

    def training_code(body: str) -> dict[str, str]:
        (tmp_path / "doubling_elsewhere.py").write_text(
            "from fitting_base import Fitting\n\n\nclass Doubling(Fitting):" + body
        )
        module = importlib.reload(importlib.import_module("doubling_elsewhere"))
        plugins = load_plugins(entry_points=False)
        plugins.register(module.Doubling(), "doubling")
        return identity.training_code(plugins.code_roots("doubling", ("train",)))

    first = training_code(sub)
    assert "doubling_elsewhere.Doubling._fit" in first and "fitting_base.Fitting.train" in first
    assert training_code(sub.replace("return 2 * len(train)", "return 3 * len(train)")) != first


def test_a_frozenset_constant_has_one_digest_whatever_the_hash_seed():
    """vllm's redaction reads a frozenset of words: its measuring identity was another in every process
    (string hashes, and so a set's order, change with PYTHONHASHSEED), so a vllm row was never reused."""
    script = (
        "from harness import identity; from harness.plugins import load_plugins; "
        "print(identity.digest(identity.measuring_code(load_plugins().code_roots('vllm', ('load', 'predict')))))"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(digests) == 1
