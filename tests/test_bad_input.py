"""Bad input ends in one line naming the file and place, exit status 2, and nothing in the store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


GOOD = '{"text": "Stocks rally on rate cut hopes", "label": 2}\n{"text": "Team wins the final", "label": 1}\n'


@pytest.mark.parametrize(
    "case, expected",
    [
        ("unknown-spec-key", "bad.yaml: datset: unknown key"),
        ("wrong-type", "bad.yaml: plugins.naive-bayes.smoothing: expected float, got 'lots'"),
        ("not-json", "train.jsonl:2: not valid JSON"),
        ("label-outside", "train.jsonl:2: label id 7 outside the spec's 4 labels"),
        ("label-name-outside", "train.jsonl:1: label 'Weather' is not one of the spec's labels"),
        ("empty-text", "test.jsonl:1: empty text"),
        ("missing-file", "missing.jsonl: no such file"),
        (
            "unknown-plugin",
            "--plugins: unknown plugin 'bret'; known: bert, bert-onnx, failing-train, naive-bayes, naive-bayes-tables, "
            "openai, qwen, qwen-lora, seqgpt, vllm, vllm-lora",
        ),
        ("unknown-setting", "--set naive-bayes.smoth: unknown setting for naive-bayes; known: smoothing"),
        ("not-a-choice", "--set qwen.scoring: 'leter' is not one of letter, perplexity, likelihood"),
        (
            "checkpointing-not-a-choice",
            "--set qwen.gradient_checkpointing: 'sometimes' is not one of true, false, auto",
        ),
        ("superscript-label", "train.jsonl:1: label '²' is not one of the spec's labels"),
        ("invisible-text", "test.jsonl:1: empty text (nothing visible in it)"),
        (
            "unknown-metric",
            "bad.yaml: metrics: unknown metric 'f1_wieghted' for classification; known: f1_weighted, accuracy",
        ),
        ("batch-below-one", "--set bert.per_device_train_batch_size: must be >= 1, got 0"),
        ("learning-rate-zero", "--set bert.learning_rate: must be > 0, got 0.0"),
        ("epochs-not-finite", "--set bert.num_train_epochs: must be a finite number, got inf"),
        ("spec-max-new-tokens", "bad.yaml: plugins.qwen.max_new_tokens: must be >= 1, got 0"),
        (
            "seed-as-setting",
            "--set bert.seed: the seed is not a plugin setting: the spec's seed: or seeds:, or --seeds",
        ),
        ("seeds-repeated", "--seeds: expected distinct integer seeds separated by commas, got '1,1'"),
        ("argparse", "harness: error: argument --limit-train: invalid int value: 'abc' (see harness compare --help)"),
        ("json-is-a-directory", "is a directory; --json takes a file path"),
        ("store-is-a-file", "is not a directory; --store takes a directory"),
        ("empty-setting", "--set naive-bayes.smoothing: needs a float value"),
        ("no-plugins", "--plugins: expected distinct plugin names separated by commas, got ','"),
        ("latency-zero", "--latency-samples: must be at least 1, got 0"),
        ("bad-limit", "--limit-test: must be positive, got 0"),
        ("not-utf8", "train.jsonl:1: not UTF-8 text (byte 0xe9 at offset 13 of the file)"),
        # Past the decoder's first chunks (64 KiB and more): the offset counts from the start of the file.
        ("not-utf8-far", "train.jsonl:1401: not UTF-8 text (byte 0xe9 at offset 69313 of the file)"),
        ("not-utf8-far-csv", "train.csv:3002: not UTF-8 text (byte 0xe9 at offset 66014 of the file)"),
        ("spec-not-utf8", "bad.yaml:2: not UTF-8 text (byte 0xe9 at offset 51 of the file)"),
        ("data-is-a-directory", "folder.jsonl: cannot be read (Is a directory)"),
        ("spec-is-a-directory", "bad.yaml: cannot be read (Is a directory)"),
        ("csv-quoted-newlines", "train.csv:6: label id 7 outside the spec's 4 labels"),  # the physical line
        ("prompt-placeholder", "bad.yaml: task.prompt.user: unknown placeholder {txt}"),
        ("approach-prompt", "bad.yaml: plugins.naive-bayes.prompt: needs the {text} placeholder"),
        ("set-prompt", "--set naive-bayes.prompt: the prompt is set in the spec"),
        ("data-part", "--data: expected train=PATH,test=PATH with an optional validation=PATH, got 'valid="),
        ("validation-not-json", "dev.jsonl:1: not valid JSON"),
        ("validation-and-test", "--data: validation= and "),
        ("spec-validation-and-test", "bad.yaml: validation: 'test' and dataset.validation both say how checkpoints"),
        ("no-data", "bad.yaml: dataset: the spec names no hub dataset or files: give --data train=PATH,test=PATH"),
        ("waybill-field-missing", "train.jsonl:2: field 'phone' of the spec is missing"),
        ("waybill-field-unknown", "test.jsonl:1: field 'zip' is not one of the spec's fields (name, phone"),
        ("unknown-named-prompt", "bad.yaml: plugins.qwen.prompt: 'long' is not one of task.prompts (instruction)"),
        ("variant-of-nothing", "bad.yaml: plugins.zero.approach: unknown approach 'qwne' (known:"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(cli, tmp_path, case, expected):
    train = write(tmp_path / "train.jsonl", GOOD)
    test = write(tmp_path / "test.jsonl", GOOD)
    plugins, spec, extra = "naive-bayes", "agnews", []
    data = None  # train= and test= below, unless a case gives the whole option
    classification = "name: bad\ntask: {type: classification, labels: [World, Sports, Business, Sci/Tech]"
    if case in ("batch-below-one", "learning-rate-zero", "epochs-not-finite", "seed-as-setting"):
        plugins, extra = (
            "bert",
            [
                "--set",
                {
                    "batch-below-one": "bert.per_device_train_batch_size=0",
                    "learning-rate-zero": "bert.learning_rate=0",
                    "seed-as-setting": "bert.seed=3",
                    "epochs-not-finite": "bert.num_train_epochs=inf",
                }[case],
            ],
        )
    elif case == "spec-max-new-tokens":
        plugins = "qwen"
        spec = write(
            tmp_path / "bad.yaml",
            classification + "}\ndataset: {train: train.jsonl, test: test.jsonl}\n"
            "plugins:\n  qwen: {max_new_tokens: 0}\n",
        )
    elif case == "seeds-repeated":
        extra = ["--seeds", "1,1"]
    elif case == "unknown-spec-key":
        spec = write(
            tmp_path / "bad.yaml", "name: bad\ntask: {type: classification, labels: [a, b]}\ndatset: {hub: x}\n"
        )
    elif case == "wrong-type":
        spec = write(
            tmp_path / "bad.yaml",
            "name: bad\ntask: {type: classification, labels: [a, b]}\n"
            "dataset: {train: train.jsonl, test: test.jsonl}\nplugins:\n  naive-bayes: {smoothing: lots}\n",
        )
    elif case == "not-json":
        train = write(tmp_path / "train.jsonl", GOOD.splitlines()[0] + "\n{text: oops}\n")
    elif case == "label-outside":
        train = write(tmp_path / "train.jsonl", GOOD.splitlines()[0] + '\n{"text": "x", "label": 7}\n')
    elif case == "label-name-outside":
        train = write(tmp_path / "train.jsonl", '{"text": "Rain all week", "label": "Weather"}\n')
    elif case == "empty-text":
        test = write(tmp_path / "test.jsonl", '{"text": "  ", "label": 0}\n')
    elif case == "missing-file":
        train = str(tmp_path / "missing.jsonl")
    elif case == "unknown-plugin":
        plugins = "bret"
    elif case == "unknown-setting":
        extra = ["--set", "naive-bayes.smoth=2"]
    elif case == "superscript-label":
        train = write(tmp_path / "train.jsonl", '{"text": "Rain all week", "label": "\u00b2"}\n')
    elif case == "invisible-text":
        test = write(tmp_path / "test.jsonl", r'{"text": "\u200b\ufeff\u2060\u0007 ", "label": 0}' + "\n")
    elif case == "unknown-metric":
        spec = write(
            tmp_path / "bad.yaml",
            classification + "}\ndataset: {train: train.jsonl, test: test.jsonl}\nmetrics: [f1_wieghted]\n",
        )
    elif case == "argparse":
        extra = ["--limit-train", "abc"]
    elif case == "json-is-a-directory":
        extra = ["--json", str(tmp_path)]
    elif case == "store-is-a-file":
        extra = ["--store", write(tmp_path / "store.txt", "not a store")]
    elif case == "not-a-choice":
        plugins, extra = "qwen", ["--set", "qwen.scoring=leter"]
    elif case == "checkpointing-not-a-choice":
        plugins, extra = "qwen", ["--set", "qwen.gradient_checkpointing=sometimes"]
    elif case == "empty-setting":
        extra = ["--set", "naive-bayes.smoothing="]
    elif case == "no-plugins":
        plugins = ","
    elif case == "latency-zero":
        extra = ["--latency-samples", "0"]
    elif case == "bad-limit":
        extra = ["--limit-test", "0"]
    elif case == "not-utf8":
        (tmp_path / "train.jsonl").write_bytes('{"text": "caf\u00e9", "label": 0}\n'.encode("latin-1"))
    elif case == "not-utf8-far":
        (tmp_path / "train.jsonl").write_bytes((GOOD * 700 + '{"text": "caf\u00e9", "label": 0}\n').encode("latin-1"))
    elif case == "not-utf8-far-csv":
        train = str(tmp_path / "train.csv")
        (tmp_path / "train.csv").write_bytes(
            ("text,label\n" + "Team wins the final,1\n" * 3000 + "caf\u00e9,1\n").encode("latin-1")
        )
    elif case == "spec-not-utf8":
        (tmp_path / "bad.yaml").write_bytes((classification.replace("World", "Caf\u00e9") + "}\n").encode("latin-1"))
        spec = str(tmp_path / "bad.yaml")
    elif case == "data-is-a-directory":
        (tmp_path / "folder.jsonl").mkdir()
        train = str(tmp_path / "folder.jsonl")
    elif case == "spec-is-a-directory":
        (tmp_path / "bad.yaml").mkdir()
        spec = str(tmp_path / "bad.yaml")
    elif case == "csv-quoted-newlines":
        train = write(
            tmp_path / "train.csv",
            'text,label\nTeam wins the final,1\n"Stocks rally\non rate\ncut hopes",2\nRain all week,7\n',
        )
    elif case == "prompt-placeholder":
        spec = write(tmp_path / "bad.yaml", classification + ", prompt: {user: 'Article: {txt}'}}\n")
    elif case == "approach-prompt":
        spec = write(
            tmp_path / "bad.yaml", classification + "}\ndataset: {hub: x}\nplugins:\n  naive-bayes: {prompt: Article}\n"
        )
    elif case == "set-prompt":
        extra = ["--set", "naive-bayes.prompt={text}"]
    elif case == "data-part":
        data = f"train={train},valid={test},test={test}"
    elif case == "validation-not-json":
        data = f"train={train},validation={write(tmp_path / 'dev.jsonl', '{text: oops}')},test={test}"
    elif case == "validation-and-test":
        spec = write(
            tmp_path / "seedlike.yaml", classification + "}\ndataset: {hub: fancyzhx/ag_news}\nvalidation: test\n"
        )
        data = f"train={train},validation={test},test={test}"
    elif case == "spec-validation-and-test":
        spec = write(
            tmp_path / "bad.yaml",
            classification + "}\ndataset: {train: train.jsonl, test: test.jsonl, "
            "validation: test.jsonl}\nvalidation: test\n",
        )
    elif case.startswith("waybill"):
        plugins, spec = "qwen", "waybill"
        line = (
            '{"text": "13552664307姜骏炜云南省德宏州盈江县平原镇", '
            '"fields": {"name": "姜骏炜", "phone": "13552664307", '
            '"province": "云南省", "city": "德宏州", "district": "盈江县", "specific_location": null}}\n'
        )
        train = write(
            tmp_path / "train.jsonl",
            line + (line.replace(', "phone": "13552664307"', "") if case == "waybill-field-missing" else line),
        )
        test = write(
            tmp_path / "test.jsonl",
            line.replace('"name"', '"zip": "1", "name"') if case == "waybill-field-unknown" else line,
        )
    elif case in ("unknown-named-prompt", "variant-of-nothing"):
        spec = write(
            tmp_path / "bad.yaml",
            "name: bad\ntask: {type: extraction, fields: [name], prompt: '{text}', "
            "prompts: {instruction: 'Name in {text}?'}}\ndataset: {train: train.jsonl, test: test.jsonl}\n"
            + (
                "plugins:\n  qwen: {prompt: long}\n"
                if case == "unknown-named-prompt"
                else "plugins:\n  zero: {approach: qwne}\n"
            ),
        )
        plugins = "qwen" if case == "unknown-named-prompt" else "zero"
    elif case == "no-data":
        spec = write(tmp_path / "bad.yaml", classification + "}\ndataset: {text_field: text}\n")
    args = [
        "compare",
        "--plugins",
        plugins,
        "--spec",
        spec,
        *extra,
        *([] if "--json" in extra else ["--json", "out.json"]),
    ]
    if not spec.endswith("bad.yaml"):
        args += ["--data", data or f"train={train},test={test}"]
    result = cli(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if not line.startswith("harness: plugin 'broken-import'")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("harness: error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / ".harness").exists() and not (tmp_path / "out.json").exists()


def test_spec_file_relative_paths_and_csv(cli, tmp_path):
    (tmp_path / "data").mkdir()
    rows = ["text,label"] + [
        f"sunny warm day number {i},weather" if i % 2 else f"goal scored in match {i},sport" for i in range(40)
    ]
    write(tmp_path / "data" / "train.csv", "\n".join(rows) + "\n")
    write(tmp_path / "data" / "test.csv", "\n".join(rows[:11]) + "\n")
    spec = write(
        tmp_path / "mine.yaml",
        "name: mine\ntask: {type: classification, labels: [sport, weather]}\n"
        "dataset: {train: data/train.csv, test: data/test.csv}\nvalidation: none\n",
    )
    result = cli("compare", "--plugins", "naive-bayes", "--spec", spec, "--json", "out.json")
    assert result.returncode == 0, result.stderr
    run = json.loads((tmp_path / "out.json").read_text())["runs"][0]
    assert (run["n_train"], run["n_validation"], run["n_test"]) == (40, 0, 10)
    assert run["metrics"]["accuracy"] == 1.0


def test_report_on_an_empty_store_is_a_one_line_error(cli, tmp_path):
    result = cli("report")
    assert result.returncode == 2 and result.stderr.strip() == "harness: error: .harness: no comparison stored yet"
    missing_dir = cli("report", "--json", "no/such/dir/out.json")
    assert missing_dir.returncode == 2 and "no/such/dir/out.json: directory does not exist" in missing_dir.stderr


def test_store_faults_are_one_line_before_anything_trains(cli, tmp_path):
    data = write(tmp_path / "train.jsonl", GOOD)
    common = ["compare", "--plugins", "naive-bayes", "--spec", "agnews", "--data", f"train={data},test={data}"]
    store = tmp_path / ".harness"
    store.mkdir()
    (store / "runs.db").write_bytes(b"this is not an SQLite database, just garbage " * 50)
    for args in (common, ["report"]):
        result = cli(*args)
        lines = [line for line in result.stderr.splitlines() if not line.startswith("harness: plugin 'broken-import'")]
        assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert lines[0].startswith(f"harness: error: {Path('.harness') / 'runs.db'}: not a usable results index"), lines
    assert sorted(p.name for p in store.iterdir()) == ["runs.db"]  # nothing trained, nothing written

    (store / "runs.db").unlink()
    assert cli(*common, "--json", "out.json").returncode == 0
    run_id = json.loads((tmp_path / "out.json").read_text())["runs"][0]["run_id"]
    record = store / "runs" / run_id / "record.json"
    record.write_text(record.read_text()[:100])  # truncated
    result = cli("report")  # the comparison still reports; the damaged run's row says why it is missing
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "missing" in result.stdout and "not a readable run record" in result.stdout
    climbing = cli(
        "bench",
        "--plugin",
        "naive-bayes",
        "--spec",
        "agnews",
        "--run",
        "../../etc",
        "--data",
        f"train={data},test={data}",
    )
    assert climbing.returncode == 2 and "run id: not a run id: '../../etc'" in climbing.stderr, climbing.stderr


def test_likely_mistakes_are_one_warning_line_each_and_counted_in_the_record(cli, tmp_path):
    # A duplicate; World and Sci/Tech never seen, and the one Sports text is held out for validation.
    train = write(tmp_path / "train.jsonl", GOOD + GOOD.splitlines()[0] + "\n")
    test = write(tmp_path / "test.jsonl", GOOD.splitlines()[1] + '\n{"text": "Rain again", "label": 0}\n')
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
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("harness: warning: ")]
    assert warnings == [
        "harness: warning: 1 test texts also appear in train or validation: leakage inflates the test figures",
        "harness: warning: 1 training texts are duplicates of others",
        "harness: warning: 3 labels have no training example",
    ]
    (run,) = json.loads((tmp_path / "out.json").read_text())["runs"]
    assert run["environment"]["data_checks"] == {
        "test_texts_in_train": 1,
        "duplicate_train_texts": 1,
        "duplicate_test_texts": 0,
        "labels_without_training_examples": 3,
    }


def one_line_error(result, tmp_path: Path) -> str:
    """The one error line of a run that stopped on bad input: exit status 2, no traceback, nothing written."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if not line.startswith("harness: plugin 'broken-import'")]
    assert len(lines) == 1 and lines[0].startswith("harness: error: "), result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / ".harness").exists() and not (tmp_path / "out.json").exists()
    return lines[0].removeprefix("harness: error: ")


def compare_on_good_data(cli, tmp_path: Path, *extra: str):
    data = f"train={write(tmp_path / 'train.jsonl', GOOD)},test={write(tmp_path / 'test.jsonl', GOOD)}"
    return cli("compare", "--plugins", "naive-bayes", "--spec", "agnews", "--data", data, "--json", "out.json", *extra)


# numpy takes seeds from 0 to 2**32 - 1; outside that a run used to start and fail inside it, stored as failed.
def test_a_negative_seed_on_the_command_line_is_refused_before_anything_runs(cli, tmp_path):
    error = one_line_error(compare_on_good_data(cli, tmp_path, "--seeds=-1"), tmp_path)
    assert error == "--seeds: a seed is an integer from 0 to 4294967295, got -1"


def test_a_seed_past_32_bits_on_the_command_line_is_refused_before_anything_runs(cli, tmp_path):
    error = one_line_error(compare_on_good_data(cli, tmp_path, "--seeds", "0,4294967296"), tmp_path)
    assert error == "--seeds: a seed is an integer from 0 to 4294967295, got 4294967296"


SPEC_ON_FILES = (
    "name: {name}\ntask: {{type: classification, labels: [World, Sports, Business, Sci/Tech]}}\n"
    "dataset: {{train: train.jsonl, test: test.jsonl}}\n"
)


def compare_with_spec(cli, tmp_path: Path, body: str):
    write(tmp_path / "train.jsonl", GOOD)
    write(tmp_path / "test.jsonl", GOOD)
    spec = write(tmp_path / "mine.yaml", body)
    return cli("compare", "--plugins", "naive-bayes", "--spec", spec, "--json", "out.json")


def test_a_negative_seed_in_the_spec_seeds_is_refused_on_load(cli, tmp_path):
    error = one_line_error(
        compare_with_spec(cli, tmp_path, SPEC_ON_FILES.format(name="mine") + "seeds: [0, -3]\n"), tmp_path
    )
    assert error == f"{tmp_path / 'mine.yaml'}: seeds: a seed is an integer from 0 to 4294967295, got -3"


def test_a_negative_spec_seed_is_refused_on_load(cli, tmp_path):
    error = one_line_error(compare_with_spec(cli, tmp_path, SPEC_ON_FILES.format(name="mine") + "seed: -1\n"), tmp_path)
    assert error == f"{tmp_path / 'mine.yaml'}: seed: a seed is an integer from 0 to 4294967295, got -1"


# The spec's name starts the comparison id, a file name in the store: it used to fail only after training.
@pytest.mark.parametrize(
    "name",
    ["news/v2", "'news\\v2'", "..", "''", "'news: v2'", "'new\u00e9'"],
    ids=["slash", "backslash", "dot-dot", "empty", "colon-space", "not-ascii"],
)
def test_a_spec_name_that_cannot_be_a_file_name_is_refused_on_load(cli, tmp_path, name):
    error = one_line_error(compare_with_spec(cli, tmp_path, SPEC_ON_FILES.format(name=name)), tmp_path)
    assert error.startswith(f"{tmp_path / 'mine.yaml'}: name: letters, digits, '.', '_' and '-' only"), error


def test_a_csv_cell_over_the_csv_module_limit_is_read(cli, tmp_path):
    long_text = "Stocks rally on rate cut hopes " * 6500  # 201,500 characters: the csv module's limit is 131,072
    rows = ["text,label", f'"{long_text}",2', "Team wins the final,1", "Rain all week,0", "Chips get faster,3"]
    write(tmp_path / "train.csv", "\n".join(rows) + "\n")
    write(tmp_path / "test.csv", "\n".join(rows[:3]) + "\n")
    result = cli(
        "compare",
        "--plugins",
        "naive-bayes",
        "--spec",
        "agnews",
        "--data",
        f"train={tmp_path / 'train.csv'},test={tmp_path / 'test.csv'}",
        "--json",
        "out.json",
    )
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    (run,) = json.loads((tmp_path / "out.json").read_text())["runs"]
    assert (run["n_train"] + run["n_validation"], run["n_test"]) == (4, 2)


def test_an_unterminated_csv_quote_names_the_line_where_it_opens(cli, tmp_path):
    # The quote on line 35 never closes: the csv module reads the rest of the file into that one text, silently.
    rows = ["text,label"] + [f"headline number {i},{i % 4}" for i in range(64)]
    rows[34] = '"' + rows[34]
    train = write(tmp_path / "train.csv", "\n".join(rows) + "\n")
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
    error = one_line_error(result, tmp_path)
    assert error == f"{train}:35: unterminated quote starting on line 35: its field runs to the end of the file"
