from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import UserError
from harness.spec import load_spec, parse_overrides, resolve_settings


def test_agnews_spec_carries_seed_000_bert_settings():
    spec = load_spec("agnews")
    assert spec.task.labels == ["World", "Sports", "Business", "Sci/Tech"]
    assert spec.dataset.hub == "fancyzhx/ag_news"
    bert = spec.plugins["bert"]
    assert bert == {
        "model": "google-bert/bert-base-cased", "max_length": 512, "learning_rate": 1e-5, "num_train_epochs": 5,
        "per_device_train_batch_size": 64, "per_device_eval_batch_size": 256, "gradient_accumulation_steps": 1,
        "lr_scheduler_type": "cosine", "weight_decay": 1e-6, "eval_steps": 0.1,
    }
    task = spec.to_task()
    assert "{text}" in task.prompt.user and "{options}" in task.prompt.user and task.prompt.user.endswith("Answer:/no_think")
    assert task.option_labels[3] == "Science/Technology"


def spec_file(tmp_path: Path, body: str) -> str:
    path = tmp_path / "s.yaml"
    path.write_text(body, encoding="utf-8")
    return str(path)


BASE = "name: s\ntask: {type: classification, labels: [a, b]}\ndataset: {train: t.jsonl, test: t.jsonl}\n"


@pytest.mark.parametrize(
    "body, message",
    [
        (BASE + "seeed: 3\n", "s.yaml: seeed: unknown key"),
        (BASE.replace("labels: [a, b]", "labels: [a, b], prompt: 3"), "s.yaml: task.prompt: Input should be a valid string"),
        (BASE + "validation: 1.5\n", "s.yaml: validation must be a fraction"),
        (BASE.replace("labels: [a, b]", "labels: [a]"), "s.yaml: task: a classification task needs at least two labels"),
        (BASE + "plugins: [bert]\n", "s.yaml: plugins: Input should be a valid dictionary"),
        ("name: s\ntask: [\n", "s.yaml:3: not valid YAML"),
    ],
)
def test_spec_errors_name_the_file_and_key(tmp_path, body, message):
    with pytest.raises(UserError) as info:
        load_spec(spec_file(tmp_path, body))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_settings_merge_defaults_spec_and_overrides_with_types(tmp_path):
    spec = load_spec(spec_file(tmp_path, BASE + "plugins:\n  x: {lr: 2, name: m}\n"))
    defaults = {"lr": 0.1, "epochs": 3, "name": "", "flag": True, "optional": None}
    overrides = parse_overrides(["x.epochs=1", "x.flag=false", "x.optional=abc", "x.lr=5e-5"])["x"]
    assert resolve_settings("x", defaults, spec, overrides) == {
        "lr": 5e-5, "epochs": 1, "name": "m", "flag": False, "optional": "abc"
    }
    with pytest.raises(UserError, match=r"--set x.epochs: expected int, got 'many'"):
        resolve_settings("x", defaults, spec, {"epochs": "many"})
    with pytest.raises(UserError, match=r"--set x.flag: expected bool, got 1"):
        resolve_settings("x", defaults, spec, {"flag": "1"})


def test_override_syntax_errors():
    with pytest.raises(UserError, match="--set: expected PLUGIN.KEY=VALUE"):
        parse_overrides(["bert.lr"])


def test_unknown_spec_name_lists_known_ones():
    with pytest.raises(UserError, match=r"--spec: unknown spec 'agnws'; known: .*agnews"):
        load_spec("agnws")
