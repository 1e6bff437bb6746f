"""The plugin manager: entry points, safe mode, a broken plugin, misspelt hooks, the conformance kit."""

from __future__ import annotations

import json
import sys
import types

import pytest

from conftest import docs_plugin_source
from harness import hookimpl
from harness.plugins import load_plugins
from harness.testing import ConformanceError, check_plugin


def docs_plugin(folder) -> types.ModuleType:
    """The docs' plugin as a real module file, as a user's package would have it."""
    import importlib.util

    path = folder / "harness_naive_bayes_docs.py"
    path.write_text(docs_plugin_source(), encoding="utf-8")
    spec = importlib.util.spec_from_file_location("harness_naive_bayes_docs", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module.__name__] = module  # as an import would; the engine object is found through it
    spec.loader.exec_module(module)
    return module


def test_docs_tutorial_plugin_passes_the_conformance_kit(tmp_path):
    record = check_plugin(docs_plugin(tmp_path), tmp_path=tmp_path, name="naive-bayes", settings={"smoothing": 0.5})
    assert record.metrics["accuracy"] > 0.8
    assert record.speed["requests_per_s"] > 0
    assert record.settings["smoothing"] == 0.5 and "seed" in record.settings


def test_the_docs_engine_passes_the_kit_over_the_plugin_it_serves(tmp_path):
    module = docs_plugin(tmp_path)
    record = check_plugin(module, tmp_path=tmp_path, name="naive-bayes-tables")  # one module registers both
    assert record.metrics["accuracy"] > 0.8 and record.serving["dtype"] == "float64"
    assert record.training["identity"]["approach"] == "naive-bayes"


def test_the_kit_asks_which_approach_when_a_module_registers_several(tmp_path):
    with pytest.raises(ConformanceError, match="registers naive-bayes, naive-bayes-tables: pass name="):
        check_plugin(docs_plugin(tmp_path), tmp_path=tmp_path)


def test_conformance_kit_catches_a_plugin_that_loses_the_order(tmp_path):
    module = docs_plugin(tmp_path)

    class Unordered(module.NaiveBayes):
        def predict(self, task, artifact, examples, settings, context):
            ordered = sorted(examples, key=lambda ex: len(ex.text))  # bucketed, but never put back in order
            return super().predict(task, artifact, ordered, settings, context)

    with pytest.raises(ConformanceError, match="depend on the order"):
        check_plugin(Unordered(), tmp_path=tmp_path, launcher="inline")  # defined in this test: inline


REGEX_EXTRACTOR = '''
"""Reads a recipient and a city from shipping notes with patterns learnt from the training notes."""
import json
import re
from pathlib import Path

from harness import ApproachInfo, Artifact, Prediction, hookimpl


@hookimpl
def harness_describe():
    return ApproachInfo(task_types=("extraction",), settings={})


@hookimpl
def harness_train(train, workdir):
    names = sorted({ex.fields["name"] for ex in train})
    cities = sorted({ex.fields["city"] for ex in train})
    path = Path(workdir) / "vocabulary.json"
    path.write_text(json.dumps({"name": names, "city": cities}))
    return Artifact(path=path, train_samples=len(train))


@hookimpl
def harness_predict(artifact, examples):
    vocabulary = json.loads(Path(artifact.path).read_text())
    out = []
    for ex in examples:
        found = {field: next((w for w in re.findall(r"[A-Z][a-z]+", ex.text) if w in words), "")
                 for field, words in vocabulary.items()}
        out.append(Prediction(fields=found, raw=json.dumps(found)))
    return out
'''


def module_from(folder, name: str, source: str) -> types.ModuleType:
    import importlib.util

    path = folder / f"{name}.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_the_kit_checks_an_extraction_approach(tmp_path):
    from harness.testing import TINY_EXTRACTION

    record = check_plugin(
        module_from(tmp_path, "regex_extractor", REGEX_EXTRACTOR),
        tmp_path=tmp_path,
        task=TINY_EXTRACTION,
        launcher="inline",
    )
    assert 0.5 < record.metrics["exact_match"] <= 1.0 and record.metrics["per_field"]["city"]["accuracy"] > 0.5


def test_a_hook_style_plugin_is_adapted_once_into_an_approach_with_a_deprecation_warning(tmp_path):
    from harness import Approach
    from harness.testing import TINY_EXTRACTION

    module = module_from(tmp_path, "regex_extractor_adapted", REGEX_EXTRACTOR)
    plugins = load_plugins(entry_points=False)
    with pytest.warns(
        DeprecationWarning,
        match=r"^plugin 'regex' is written as hook functions \(describe, predict, train\), which is deprecated: "
        r"register an harness.Approach",
    ):
        plugins.register(module, "regex")
    # The core holds an Approach and calls its methods; the hooks it stands for are listed as before.
    assert isinstance(plugins.approach("regex"), Approach)
    assert plugins.hooks_of("regex") == ["harness_describe", "harness_predict", "harness_train"]
    assert plugins.describe("regex").task_types == ("extraction",)
    # The kit passes it unchanged, its units in processes of their own (which adapt it again).
    with pytest.warns(DeprecationWarning, match="regex_extractor_adapted|kit-candidate"):
        record = check_plugin(module, tmp_path=tmp_path, task=TINY_EXTRACTION)
    assert record.status == "ok" and record.metrics["exact_match"] > 0.5


def test_a_registered_approach_is_not_deprecated(tmp_path):
    import warnings

    plugins = load_plugins(entry_points=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        plugins.register(docs_plugin(tmp_path), "naive-bayes-docs")
    assert {"naive-bayes", "naive-bayes-tables"} <= set(plugins.approaches())


def test_the_kit_compares_scores_not_only_labels(tmp_path):
    module = docs_plugin(tmp_path)

    class Flattened(module.NaiveBayes):
        def predict(self, task, artifact, examples, settings, context):
            predictions = super().predict(task, artifact, examples, settings, context)
            if len(examples) == 1:  # one at a time: the same label, scores pulled towards uniform
                for p in predictions:
                    p.scores = {label: 0.9 * score + 0.1 / len(p.scores) for label, score in p.scores.items()}
            return predictions

    with pytest.raises(ConformanceError, match="one-at-a-time predictions differ"):
        check_plugin(Flattened(), tmp_path=tmp_path, launcher="inline")


# A majority-class approach whose train and predict each call a helper of their own through self.
COUNTS = """
import json

from harness import Approach, Artifact, Prediction, hookimpl


class Counts(Approach):
    name = "counts"

    def train(self, task, train, validation, settings, context):
        path = context.workdir / "counts.json"
        path.write_text(json.dumps(self._fit(task, train)))
        return Artifact(path=path, train_samples=len(train))

    def _fit(self, task, train):
        counts = {label: 0 for label in task.labels}
        for example in train:
            counts[example.label] += 1
        return counts

    def predict(self, task, artifact, examples, settings, context):
        scores = self._scores(task, json.loads(artifact.path.read_text()))
        return [Prediction(label=max(scores, key=scores.get), scores=scores) for _ in examples]

    def _scores(self, task, counts):
        total = sum(counts.values()) + len(task.labels)
        return {label: (counts[label] + 1) / total for label in task.labels}


@hookimpl
def harness_register_approaches(register):
    register(Counts())
"""


def test_the_kit_passes_a_plugin_whose_train_calls_a_helper_through_self(tmp_path):
    record = check_plugin(module_from(tmp_path, "counts_plugin", COUNTS), tmp_path=tmp_path, launcher="inline")
    assert "counts_plugin.Counts._fit" in record.training["identity"]["code"]


def test_the_kit_fails_a_plugin_whose_helper_edits_would_not_train_again(tmp_path):
    # A wrapper without functools.wraps: what train calls through self is `logging`, which hides _fit.
    hidden = COUNTS.replace(
        "class Counts(Approach):",
        """def logged(fit):
    def logging(*args):
        return fit(*args)
    return logging


class Counts(Approach):""",
    ).replace("    def _fit(", "    @logged\n    def _fit(")
    with pytest.raises(
        ConformanceError,
        match=r"editing hidden_counts\.Counts\._fit, which train calls, leaves the "
        "training identity as it was",
    ):
        check_plugin(module_from(tmp_path, "hidden_counts", hidden), tmp_path=tmp_path, launcher="inline")


MEAN_LENGTH = """
from harness import ApproachInfo, Artifact, Prediction, hookimpl


@hookimpl
def harness_describe():
    return ApproachInfo(task_types=("classification",), settings={})


@hookimpl
def harness_train(train):
    mean = sum(len(example.text) for example in train) / len(train)
    return Artifact(train_samples=len(train), info={"mean_length": mean})


@hookimpl
def harness_predict(task, examples):
    return [Prediction(label=task.labels[0]) for _ in examples]
"""


def test_the_kit_runs_train_as_bench_random_weights_does_with_no_examples(tmp_path):
    with pytest.raises(
        ConformanceError,
        match=r"`harness bench --random-weights` failed: train gets no examples .*"
        "ZeroDivisionError: division by zero",
    ) as caught:
        check_plugin(module_from(tmp_path, "mean_length", MEAN_LENGTH), tmp_path=tmp_path, launcher="inline")
    assert "\n" not in str(caught.value) and isinstance(caught.value.__cause__, ZeroDivisionError)


def test_a_misspelt_hook_fails_loudly():
    class Typo:
        @hookimpl
        def harness_trian(self, task):
            return None

    plugins = load_plugins(entry_points=False)
    with pytest.raises(Exception, match="harness_trian"):
        plugins.register(Typo(), "typo")


def test_plugins_lists_builtins_and_third_party_and_warns_once_for_a_broken_one(cli):
    result = cli("plugins", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert {"bert", "metrics", "naive-bayes", "failing-train"} <= rows.keys()
    assert rows["bert"]["builtin"] and rows["bert"]["task_types"] == ["classification"]
    assert rows["bert"]["hooks"] == [
        "harness_describe",
        "harness_load",
        "harness_predict",
        "harness_reference",
        "harness_train",
    ]
    assert rows["qwen"]["hooks"] == rows["bert"]["hooks"]
    assert rows["naive-bayes"] == {**rows["naive-bayes"], "version": "0.3", "builtin": False}
    warnings = result.stderr.strip().splitlines()
    assert len(warnings) == 1 and "broken-import" in warnings[0] and "ModuleNotFoundError" in warnings[0]


def test_safe_mode_loads_no_third_party_plugin_but_keeps_builtins(cli):
    result = cli("plugins", "--json", env={"HARNESS_LOAD_PLUGINS": ""})
    assert {row["name"] for row in json.loads(result.stdout)} == {
        "bert",
        "bert-onnx",
        "metrics",
        "openai",
        "qwen",
        "qwen-lora",
        "seqgpt",
        "vllm",
        "vllm-lora",
    }
    assert result.stderr == ""
    only = cli("plugins", "--json", env={"HARNESS_LOAD_PLUGINS": "naive-bayes"})
    # The one module registers two approaches: the approach and its engine.
    assert {row["name"] for row in json.loads(only.stdout)} == {
        "bert",
        "bert-onnx",
        "metrics",
        "openai",
        "qwen",
        "qwen-lora",
        "seqgpt",
        "vllm",
        "vllm-lora",
        "naive-bayes",
        "naive-bayes-tables",
    }


def test_listing_and_help_import_no_torch():
    code = (
        "import sys, contextlib; from harness.cli import main\n"
        "assert main(['plugins', '--json']) == 0 and main(['specs', '--json']) == 0\n"
        "with contextlib.suppress(SystemExit): main(['--help'])\n"
        "heavy = {'torch', 'transformers', 'sklearn'} & set(sys.modules); print(sorted(heavy))"
    )
    result = __import__("subprocess").run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_specs_lists_the_shipped_agnews_spec(cli):
    result = cli("specs", "--json")
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["agnews"]["task"] == "classification" and rows["agnews"]["plugins"] == [
        "bert",
        "bert-onnx-int8",
        "qwen",
        "qwen-fp32",
    ]
    assert rows["agnews"]["dataset"] == "fancyzhx/ag_news"


SECRETIVE = """
from harness import Approach, Artifact, Settings, hookimpl, setting


class KeySettings(Settings):
    api_key: str = setting("", secret=True, help="the endpoint's key; prefer the environment")
    retries: int = setting(2, ge=0, predict=True)
    pin: int = setting(0, ge=0, secret=True)


class Secretive(Approach):
    name = "secretive"
    settings = KeySettings

    def train(self, task, train, validation, settings, context):
        return Artifact(train_samples=len(train))

    def predict(self, task, artifact, examples, settings, context):
        raise RuntimeError(f"the server refused key {settings.api_key} after {settings.retries} retries")


@hookimpl
def harness_register_approaches(register):
    register(Secretive())
"""


def test_a_secret_setting_reaches_the_approach_and_nothing_else(tmp_path, ag_news_data):
    from conftest import install_site, make_cli

    site = install_site(tmp_path / "site", {"secretive": SECRETIVE}, {"secretive": "secretive"})
    cli = make_cli(site, tmp_path)
    key = "sk-TOPSECRET-4f9a"
    result = cli(
        "compare",
        "--plugins",
        "secretive",
        "--spec",
        "agnews",
        "--data",
        ag_news_data,
        "--limit-train",
        "40",
        "--limit-test",
        "8",
        "--set",
        f"secretive.api_key={key}",
        "--json",
        "out.json",
    )
    assert result.returncode == 1  # the approach got the key: its error quotes it
    (run,) = json.loads((tmp_path / "out.json").read_text())["runs"]
    assert run["error"] == "RuntimeError: the server refused key <secret> after 2 retries"
    assert run["settings"]["api_key"] == "<secret>" and "api_key" not in run["training"]["identity"]["settings"]
    written = [p for p in tmp_path.rglob("*") if p.is_file() and "site" not in p.parts]
    assert written and not [p for p in written if key.encode() in p.read_bytes()]
    assert key not in result.stdout + result.stderr

    wrong = cli(
        "compare",
        "--plugins",
        "secretive",
        "--spec",
        "agnews",
        "--data",
        ag_news_data,
        "--set",
        "secretive.pin=sk-NOT-A-NUMBER",
    )
    assert wrong.returncode == 2 and "sk-NOT-A-NUMBER" not in wrong.stderr
    assert "--set secretive.pin: not a valid int (a secret: its value is not shown)" in wrong.stderr
