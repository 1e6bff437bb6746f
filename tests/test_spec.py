from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import UserError
from harness.settings import parse_overrides, resolve_settings, settings_class
from harness.spec import load_spec
from harness.types import Prompt


def test_agnews_spec_carries_seed_000_bert_settings():
    spec = load_spec("agnews")
    assert spec.task.labels == ["World", "Sports", "Business", "Sci/Tech"]
    assert spec.dataset.hub == "fancyzhx/ag_news"
    bert = spec.plugins["bert"]
    assert bert == {
        "model": "google-bert/bert-base-cased",
        "max_length": 512,
        "learning_rate": 1e-5,
        "num_train_epochs": 5,
        "per_device_train_batch_size": 64,
        "per_device_eval_batch_size": 256,
        "gradient_accumulation_steps": 1,
        "lr_scheduler_type": "cosine",
        "weight_decay": 1e-6,
        "eval_steps": 0.1,
    }
    task = spec.to_task()
    assert (
        "{text}" in task.prompt.user
        and "{options}" in task.prompt.user
        and task.prompt.user.endswith("Answer:/no_think")
    )
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
        (
            BASE.replace("labels: [a, b]", "labels: [a, b], prompt: 3"),
            "s.yaml: task.prompt: a prompt is a string (the user template) or a mapping of system, user and raw",
        ),
        (BASE + "validation: 1.5\n", "s.yaml: validation must be a fraction"),
        (
            BASE.replace("labels: [a, b]", "labels: [a]"),
            "s.yaml: task: a classification task needs at least two labels",
        ),
        (BASE + "plugins: [bert]\n", "s.yaml: plugins: Input should be a valid dictionary"),
        ("name: s\ntask: [\n", "s.yaml:3: not valid YAML"),
        (BASE + "seed: -1\n", "s.yaml: seed: a seed is an integer from 0 to 4294967295, got -1"),
        (BASE + "seed: 4294967296\n", "s.yaml: seed: a seed is an integer from 0 to 4294967295, got 4294967296"),
        (BASE + "seeds: [1, -3]\n", "s.yaml: seeds: a seed is an integer from 0 to 4294967295, got -3"),
        (BASE.replace("name: s", "name: a/b"), "s.yaml: name: letters, digits, '.', '_' and '-' only"),
        (BASE.replace("name: s", "name: 'a\\b'"), "s.yaml: name: letters, digits"),
        (BASE.replace("name: s", "name: a..b"), "s.yaml: name: letters, digits"),
        (BASE.replace("name: s", "name: ''"), "s.yaml: name: letters, digits"),
        (BASE.replace("name: s", "name: 'a b'"), "s.yaml: name: letters, digits"),
        (BASE.replace("name: s", "name: " + "a" * 101), "s.yaml: name: letters, digits"),
    ],
)
def test_spec_errors_name_the_file_and_key(tmp_path, body, message):
    with pytest.raises(UserError) as info:
        load_spec(spec_file(tmp_path, body))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_seeds_at_the_ends_of_the_range_and_file_name_spec_names_load(tmp_path):
    spec = load_spec(
        spec_file(tmp_path, BASE.replace("name: s", "name: News_v1.2-b") + "seed: 4294967295\nseeds: [0, 4294967295]\n")
    )
    assert (spec.name, spec.seed, spec.training_seeds) == ("News_v1.2-b", 4294967295, [0, 4294967295])
    assert load_spec(spec_file(tmp_path, BASE.replace("name: s", "name: " + "a" * 100))).name == "a" * 100


def test_settings_merge_defaults_spec_and_overrides_with_types(tmp_path):
    spec = load_spec(spec_file(tmp_path, BASE + "plugins:\n  x: {lr: 2, name: m}\n"))
    defaults = {"lr": 0.1, "epochs": 3, "name": "", "flag": True, "optional": None}
    overrides = parse_overrides(["x.epochs=1", "x.flag=false", "x.optional=abc", "x.lr=5e-5"])["x"]
    assert resolve_settings("x", settings_class("x", defaults), spec, overrides) == {
        "lr": 5e-5,
        "epochs": 1,
        "name": "m",
        "flag": False,
        "optional": "abc",
    }
    with pytest.raises(UserError, match=r"--set x.epochs: expected int, got 'many'"):
        resolve_settings("x", settings_class("x", defaults), spec, {"epochs": "many"})
    with pytest.raises(UserError, match=r"--set x.flag: expected bool, got 1"):
        resolve_settings("x", settings_class("x", defaults), spec, {"flag": "1"})


def test_override_syntax_errors():
    with pytest.raises(UserError, match="--set: expected PLUGIN.KEY=VALUE"):
        parse_overrides(["bert.lr"])


def test_unknown_spec_name_lists_known_ones():
    with pytest.raises(UserError, match=r"--spec: unknown spec 'agnws'; known: .*agnews"):
        load_spec("agnws")


def task_prompt(tmp_path: Path, prompt: str, plugins: str = "") -> str:
    """A spec file whose task.prompt is the given YAML mapping, followed by a plugins section."""
    indented = "".join(f"    {line}\n" for line in prompt.splitlines())
    body = BASE.replace(
        "task: {type: classification, labels: [a, b]}\n",
        "task:\n  type: classification\n  labels: [a, b]\n  prompt:\n" + indented,
    )
    return spec_file(tmp_path, body + plugins)


def test_a_string_prompt_is_the_user_template(tmp_path):
    spec = load_spec(
        spec_file(tmp_path, BASE.replace("labels: [a, b]", "labels: [a, b], prompt: 'Q: {text} {options}'"))
    )
    assert spec.to_task().prompt == Prompt(user="Q: {text} {options}")
    assert spec.to_task("anything").prompt == spec.to_task().prompt
    assert load_spec(spec_file(tmp_path, BASE)).to_task().prompt is None


def test_a_prompt_with_roles_and_a_raw_prompt(tmp_path):
    spec = load_spec(task_prompt(tmp_path, "system: 'You sort news into {options}.'\nuser: '{text}'"))
    prompt = spec.to_task().prompt
    assert prompt == Prompt(user="{text}", system="You sort news into {options}.")
    assert prompt.plain() == "You sort news into {options}.\n\n{text}"
    # Seed 002's SeqGPT prompt: no chat template, the whole prompt is raw; chat models get it as the user message.
    seqgpt = 'raw: "输入: {text}\\n分类: a，b\\n输出: [GEN]"'
    raw_only = load_spec(task_prompt(tmp_path, seqgpt)).to_task().prompt
    assert raw_only.raw == raw_only.user == raw_only.plain() == "输入: {text}\n分类: a，b\n输出: [GEN]"
    assert raw_only.system is None


PER_APPROACH = """plugins:
  qwen:
    lr: 2
    prompt: 'Answer briefly. {text}'
  seqgpt:
    prompt: {raw: 'Input: {text} Output: [GEN]'}
  plain:
    prompt: {system: ''}
"""


def test_approach_prompts_merge_field_by_field_and_stay_with_their_approach(tmp_path):
    spec = load_spec(task_prompt(tmp_path, "system: Be exact.\nuser: 'Article: {text}'", PER_APPROACH))
    task_only = Prompt(user="Article: {text}", system="Be exact.")
    assert spec.to_task().prompt == task_only
    assert spec.to_task("bert").prompt == task_only
    # A string override replaces the user template and keeps the task's system message.
    assert spec.to_task("qwen").prompt == Prompt(user="Answer briefly. {text}", system="Be exact.")
    assert spec.to_task("seqgpt").prompt == Prompt(
        user="Article: {text}", system="Be exact.", raw="Input: {text} Output: [GEN]"
    )
    # "" removes the task's system message for that approach alone.
    assert spec.to_task("plain").prompt == Prompt(user="Article: {text}")
    # The prompt is not a setting: it never reaches resolve_settings or a plugin.
    assert spec.plugins == {"qwen": {"lr": 2}, "seqgpt": {}, "plain": {}}
    assert resolve_settings("qwen", settings_class("qwen", {"lr": 0.1}), spec, {}) == {"lr": 2.0}
    assert resolve_settings("seqgpt", settings_class("seqgpt", {"model": "m"}), spec, {}) == {"model": "m"}


@pytest.mark.parametrize(
    "prompt, plugins, message",
    [
        ("user: 'Article: {txt}'", "", "s.yaml: task.prompt.user: unknown placeholder {txt}"),
        ("user: '{text}'\nsystem: 'Label as {label}'", "", "s.yaml: task.prompt.system: unknown placeholder {label}"),
        ("raw: 'Input: [GEN]'", "", "s.yaml: task.prompt.raw: needs the {text} placeholder"),
        ("user: 'Describe it.'", "", "s.yaml: task.prompt.user: needs the {text} placeholder"),
        ("user: '{text} as {\"name\": ...}'", "", 'task.prompt.user: unknown placeholder {"name": ...}'),
        ("user: '{text} {'", "", "s.yaml: task.prompt.user: unbalanced brace; write a literal { or } as {{ or }}"),
        ("user: '{text!r}'", "", "s.yaml: task.prompt.user: unknown placeholder {text!r}"),
        ("system: 'Be exact.'", "", "s.yaml: task.prompt: a system message needs a user template with {text} too"),
        ("usr: '{text}'", "", "s.yaml: task.prompt.usr: unknown key"),
        (
            "user: '{text}'",
            "plugins:\n  qwen: {prompt: 'Q {txt}'}\n",
            "s.yaml: plugins.qwen.prompt: unknown placeholder {txt}",
        ),
        (
            "user: '{text}'",
            "plugins:\n  qwen: {prompt: {user: 'Q {txt}'}}\n",
            "s.yaml: plugins.qwen.prompt.user: unknown placeholder {txt}",
        ),
        (
            "user: '{text}'",
            "plugins:\n  qwen: {prompt: {sytem: x}}\n",
            "s.yaml: plugins.qwen.prompt.sytem: unknown key",
        ),
        (
            "raw: '{text} [GEN]'",
            "plugins:\n  qwen: {prompt: {system: Be exact.}}\n",
            "s.yaml: plugins.qwen.prompt: a system message needs a user template with {text} too, "
            "here or in task.prompt",
        ),
        ("user: '{text}'", "plugins:\n  qwen: {prompt: [a]}\n", "s.yaml: plugins.qwen.prompt: a prompt is a string"),
    ],
)
def test_prompt_templates_are_checked_on_load(tmp_path, prompt, plugins, message):
    with pytest.raises(UserError) as info:
        load_spec(task_prompt(tmp_path, prompt, plugins))
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_literal_braces_are_escaped_as_in_str_format(tmp_path):
    spec = load_spec(task_prompt(tmp_path, "user: 'Reply as {{\"name\": ...}}: {text}'"))
    assert spec.to_task().prompt.user.format(text="x", options="") == 'Reply as {"name": ...}: x'


CHOICES = {"scoring": ("letter", "likelihood", "perplexity")}


def test_enumerated_settings_are_checked_from_the_spec_and_the_command_line(tmp_path):
    defaults = {"scoring": "letter", "lr": 0.1}
    good = load_spec(spec_file(tmp_path, BASE + "plugins:\n  qwen: {scoring: likelihood}\n"))
    assert (
        resolve_settings("qwen", settings_class("qwen", defaults, choices=CHOICES), good, {})["scoring"] == "likelihood"
    )
    assert (
        resolve_settings("qwen", settings_class("qwen", defaults, choices=CHOICES), good, {"scoring": "perplexity"})[
            "scoring"
        ]
        == "perplexity"
    )
    with pytest.raises(UserError) as info:
        resolve_settings("qwen", settings_class("qwen", defaults, choices=CHOICES), good, {"scoring": "leter"})
    assert str(info.value) == "--set qwen.scoring: 'leter' is not one of letter, likelihood, perplexity"
    bad = load_spec(spec_file(tmp_path, BASE + "plugins:\n  qwen: {scoring: leter}\n"))
    with pytest.raises(UserError) as info:
        resolve_settings("qwen", settings_class("qwen", defaults, choices=CHOICES), bad, {})
    assert str(info.value).endswith(
        "s.yaml: plugins.qwen.scoring: 'leter' is not one of letter, likelihood, perplexity"
    )
    # Without choices (an approach that declares none) any value of the right type passes, as before.
    assert resolve_settings("qwen", settings_class("qwen", defaults), bad, {})["scoring"] == "leter"
    # Choices compare after type conversion: "8" from the command line is the int 8.
    assert resolve_settings("x", settings_class("x", {"bits": 4}, choices={"bits": (4, 8)}), good, {"bits": "8"}) == {
        "bits": 8
    }


def test_string_settings_take_the_command_line_text_as_typed(tmp_path):
    spec = load_spec(spec_file(tmp_path, BASE))
    defaults = {"think_prefix": "<think>\n\n</think>\n\n", "tokenizer": "", "epochs": 1.0, "optional": None}
    overrides = parse_overrides(["qwen.think_prefix=", "qwen.tokenizer=on", "qwen.optional="])["qwen"]
    assert resolve_settings("qwen", settings_class("qwen", defaults), spec, overrides) == {
        "think_prefix": "",
        "tokenizer": "on",
        "epochs": 1.0,
        "optional": None,
    }
    typed = {"think_prefix": "{text}", "tokenizer": "1.0e-5"}
    assert resolve_settings("qwen", settings_class("qwen", defaults), spec, typed) == {**defaults, **typed}
    # A quoted YAML string is still read as one: the way to pass a newline.
    assert (
        resolve_settings("qwen", settings_class("qwen", defaults), spec, {"think_prefix": '"a\\nb"'})["think_prefix"]
        == "a\nb"
    )
    with pytest.raises(UserError, match=r"--set qwen.epochs: needs a float value$"):
        resolve_settings("qwen", settings_class("qwen", defaults), spec, {"epochs": ""})
    null = load_spec(spec_file(tmp_path, BASE + "plugins:\n  qwen: {think_prefix: null}\n"))
    with pytest.raises(
        UserError, match=r'plugins.qwen.think_prefix: needs a str value \(write "" for an empty string\)'
    ):
        resolve_settings("qwen", settings_class("qwen", defaults), null, {})


def test_the_prompt_is_not_a_command_line_setting(tmp_path):
    with pytest.raises(
        UserError, match=r"--set qwen.prompt: the prompt is set in the spec: task.prompt, or plugins.qwen.prompt"
    ):
        resolve_settings(
            "qwen", settings_class("qwen", {"lr": 0.1}), load_spec(spec_file(tmp_path, BASE)), {"prompt": "{text}"}
        )


@pytest.mark.parametrize(
    "dataset, validation, message",
    [
        (
            "{train: t.jsonl, test: t.jsonl, validation: v.jsonl}",
            "test",
            "s.yaml: validation: 'test' and dataset.validation both say how checkpoints are selected; remove one",
        ),
        (
            "{hub: some/dataset, validation_split: dev}",
            "none",
            "s.yaml: validation: 'none' and dataset.validation_split both say how checkpoints are selected",
        ),
        ("{hub: some/dataset, validation: v.jsonl}", "0.1", "s.yaml: dataset: validation is a local file beside"),
        (
            "{train: t.jsonl, test: t.jsonl, validation_split: dev}",
            "0.1",
            "s.yaml: dataset: validation_split names a split of the hub dataset",
        ),
        ("{train: t.jsonl}", "0.1", "s.yaml: dataset: give both train and test files"),
    ],
)
def test_validation_set_conflicts_are_spec_errors(tmp_path, dataset, validation, message):
    body = f"name: s\ntask: {{type: classification, labels: [a, b]}}\ndataset: {dataset}\nvalidation: {validation}\n"
    with pytest.raises(UserError) as info:
        load_spec(spec_file(tmp_path, body))
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)


def seed_001_system_prompt(shared: Path) -> str:
    seed = next((shared / "seeds").glob("001_*.txt")).read_text(encoding="utf-8")
    return next(line.strip() for line in seed.splitlines() if line.startswith("你是一个专业的信息抽取助手"))


def test_waybill_spec_is_seed_001_with_its_short_system_prompt(shared):
    spec = load_spec("waybill")
    task = spec.to_task("qwen")
    assert task.type == "extraction"
    assert task.fields == ("name", "phone", "province", "city", "district", "specific_location")
    assert task.prompt == Prompt(user="{text}", system=seed_001_system_prompt(shared))
    # The data is not on the hub in this shape: the spec names none, and is run with --data.
    assert not spec.dataset.hub and not spec.dataset.train
    # The zero-shot row is qwen untuned, asked with the long instruction that lists every field.
    assert spec.approach_of("zero-shot") == "qwen" and spec.plugins["zero-shot"] == {"num_train_epochs": 0}
    instruction = spec.to_task("zero-shot").prompt
    assert instruction.user == "{text}" and all(field in instruction.system for field in task.fields)
    assert spec.metrics == ["exact_match", "valid_rate"]


def test_a_row_of_another_approach_layers_its_settings_over_that_approachs(tmp_path):
    body = (
        BASE.replace(
            "labels: [a, b]", "labels: [a, b], prompt: 'Q {text}', prompts: {long: {system: S, user: 'L {text}'}}"
        )
        + "plugins:\n  qwen: {learning_rate: 0.001, max_length: 64}\n"
        "  untuned: {approach: qwen, num_train_epochs: 0, prompt: long}\n"
    )
    spec = load_spec(spec_file(tmp_path, body))
    defaults = {"learning_rate": 1e-5, "max_length": 512, "num_train_epochs": 1.0}
    settings = resolve_settings(
        "untuned",
        settings_class("untuned", defaults),
        spec,
        {"max_length": "32"},
        base_overrides={"max_length": "128", "num_train_epochs": "3"},
    )
    # Defaults, then qwen's section and --set, then the row's section and --set: the row's own word wins.
    assert settings == {"learning_rate": 0.001, "max_length": 32, "num_train_epochs": 0.0}
    assert spec.to_task("untuned").prompt == Prompt(user="L {text}", system="S")  # the named prompt, whole
    assert spec.to_task("qwen").prompt == Prompt(user="Q {text}")
    assert spec.prompt_name("untuned") == "long" and spec.approach_of("qwen") == "qwen"


def test_settings_declared_as_a_dict_are_checked_by_a_settings_class_with_the_shared_ranges(tmp_path):
    """A hook-style plugin declares defaults, choices and limits in a dict; they become a pydantic Settings class,
    the one validator, and the settings every approach shares (the Trainer's, predict_batch_size) keep their
    ranges there too."""
    from harness.approach import Settings

    spec = load_spec(spec_file(tmp_path, BASE))
    declared = settings_class(
        "x",
        {"learning_rate": 1e-5, "predict_batch_size": 0, "temperature": 1.0, "bits": 4},
        limits={"temperature": ((">", 0), 2)},
        choices={"bits": (4, 8)},
    )
    assert issubclass(declared, Settings)
    for given, message in (
        ({"learning_rate": "0"}, "--set x.learning_rate: must be > 0, got 0.0"),
        ({"predict_batch_size": "-1"}, "--set x.predict_batch_size: must be >= 0, got -1"),
        ({"temperature": "0"}, "--set x.temperature: must be > 0, got 0.0"),
        ({"temperature": "2.5"}, "--set x.temperature: must be <= 2, got 2.5"),
        ({"temperature": "nan"}, "--set x.temperature: must be a finite number, got nan"),
        ({"bits": "6"}, "--set x.bits: 6 is not one of 4, 8"),
        ({"bits": "true"}, "--set x.bits: expected int, got True"),
    ):
        with pytest.raises(UserError) as info:
            resolve_settings("x", declared, spec, given)
        assert str(info.value) == message
    assert resolve_settings("x", declared, spec, {"temperature": "2", "bits": "8"}) == {
        "learning_rate": 1e-5,
        "predict_batch_size": 0,
        "temperature": 2.0,
        "bits": 8,
    }
