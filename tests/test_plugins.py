"""The plugin manager: entry points, safe mode, a broken plugin, misspelt hooks, the conformance kit."""

from __future__ import annotations

import json
import sys
import types

import pytest

from harness import hookimpl
from harness.plugins import load_plugins
from harness.testing import ConformanceError, check_plugin

from conftest import docs_plugin_source


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
    record = check_plugin(docs_plugin(tmp_path), tmp_path=tmp_path, settings={"smoothing": 0.5})
    assert record.metrics["accuracy"] > 0.8
    assert record.speed["requests_per_s"] > 0


def test_the_docs_engine_passes_the_kit_over_the_plugin_it_serves(tmp_path):
    module = docs_plugin(tmp_path)
    record = check_plugin(module.tables, tmp_path=tmp_path, name="naive-bayes-tables", serves=module)
    assert record.metrics["accuracy"] > 0.8 and record.serving["dtype"] == "float64"
    assert record.training["identity"]["approach"] == "naive-bayes"


def test_conformance_kit_catches_a_plugin_that_loses_the_order(tmp_path):
    module = docs_plugin(tmp_path)
    original = module.harness_predict

    @hookimpl
    def harness_predict(task, artifact, examples, settings, progress):
        ordered = sorted(examples, key=lambda ex: len(ex.text))  # bucketed, but never put back in order
        return original(task=task, artifact=artifact, examples=ordered, settings=settings, progress=progress)

    module.harness_predict = harness_predict
    with pytest.raises(ConformanceError, match="depend on the order"):
        check_plugin(module, tmp_path=tmp_path, launcher="inline")  # the patch lives in this process only


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

    record = check_plugin(module_from(tmp_path, "regex_extractor", REGEX_EXTRACTOR), tmp_path=tmp_path,
                          task=TINY_EXTRACTION, launcher="inline")
    assert 0.5 < record.metrics["exact_match"] <= 1.0 and record.metrics["per_field"]["city"] > 0.5


def test_the_kit_compares_scores_not_only_labels(tmp_path):
    module = docs_plugin(tmp_path)
    original = module.harness_predict

    @hookimpl
    def harness_predict(task, artifact, examples, settings, progress):
        predictions = original(task=task, artifact=artifact, examples=examples, settings=settings, progress=progress)
        if len(examples) == 1:  # one at a time: the same label, scores pulled towards uniform
            for p in predictions:
                p.scores = {label: 0.9 * score + 0.1 / len(p.scores) for label, score in p.scores.items()}
        return predictions

    module.harness_predict = harness_predict
    with pytest.raises(ConformanceError, match="one-at-a-time predictions differ"):
        check_plugin(module, tmp_path=tmp_path, launcher="inline")


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
    assert rows["bert"]["hooks"] == ["harness_describe", "harness_load", "harness_predict", "harness_reference",
                                     "harness_train"]
    assert rows["qwen"]["hooks"] == rows["bert"]["hooks"]
    assert rows["naive-bayes"] == {**rows["naive-bayes"], "version": "0.3", "builtin": False}
    warnings = result.stderr.strip().splitlines()
    assert len(warnings) == 1 and "broken-import" in warnings[0] and "ModuleNotFoundError" in warnings[0]


def test_safe_mode_loads_no_third_party_plugin_but_keeps_builtins(cli):
    result = cli("plugins", "--json", env={"HARNESS_LOAD_PLUGINS": ""})
    assert {row["name"] for row in json.loads(result.stdout)} == {"bert", "metrics", "qwen"}
    assert result.stderr == ""
    only = cli("plugins", "--json", env={"HARNESS_LOAD_PLUGINS": "naive-bayes"})
    assert {row["name"] for row in json.loads(only.stdout)} == {"bert", "metrics", "qwen", "naive-bayes"}


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
    assert rows["agnews"]["task"] == "classification" and rows["agnews"]["plugins"] == ["bert", "qwen"]
    assert rows["agnews"]["dataset"] == "fancyzhx/ag_news"
