"""harness grid: approaches x settings x seeds as runs, one comparison per spec; locally one after another, and on
a real local Ray (ray.init(num_cpus=2)); every run in the store, the report's mean ± sd per row, a second identical
grid training nothing, and a spec's teacher labelling once for every student. On two Ray nodes that share no disk:
tests/test_cluster.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import bert_args
from harness.errors import UserError
from harness.grid import row_name, split_values, variants
from openai_server import Faults


def test_multi_valued_settings_are_rows_and_an_escaped_comma_stays_in_its_value():
    assert split_values("1e-5,2e-5") == ["1e-5", "2e-5"] and split_values(r"q_proj\,v_proj") == ["q_proj,v_proj"]
    shared, combos = variants(
        [
            "bert.learning_rate=1e-5,2e-5",
            "bert.num_train_epochs=1,2",
            "qwen.max_length=256",
            r"qwen-lora.target_modules=q_proj\,v_proj",
        ]
    )
    assert shared == {"qwen": {"max_length": "256"}, "qwen-lora": {"target_modules": "q_proj,v_proj"}}
    assert [row_name("bert", c) for c in combos["bert"]] == [
        "bert@learning_rate=1e-5@num_train_epochs=1",
        "bert@learning_rate=1e-5@num_train_epochs=2",
        "bert@learning_rate=2e-5@num_train_epochs=1",
        "bert@learning_rate=2e-5@num_train_epochs=2",
    ]
    with pytest.raises(UserError, match="repeat"):
        variants(["bert.learning_rate=1e-5,1e-5"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--resource", "gpu_a10"], "expected NAME=AMOUNT with an amount above 0, got 'gpu_a10'"),
        (["--resource", "a10=0"], "expected NAME=AMOUNT with an amount above 0, got 'a10=0'"),
        (["--resource", "a10=1"], "custom resources are Ray's: add --executor ray"),
    ],
)
def test_a_bad_resource_is_one_line_before_the_store_exists(cli, tmp_path, ag_news_data, extra, message):
    result = cli("grid", "--spec", "agnews", "--plugins", "naive-bayes", "--data", ag_news_data, *extra)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if not line.startswith("harness: plugin 'broken-import'")]
    assert lines == [f"harness: error: --resource: {message}"] and not (tmp_path / ".harness").exists()


def grid_args(tiny_bert, ag_news_data, *extra):
    """A grid of naive-bayes and a tiny bert (naive-bayes alone without ``tiny_bert``), seeds 0 and 1."""
    return [
        "grid",
        "--spec",
        "agnews",
        "--plugins",
        "naive-bayes,bert" if tiny_bert else "naive-bayes",
        "--seeds",
        "0,1",
        "--data",
        ag_news_data,
        "--limit-train",
        "60",
        "--limit-test",
        "24",
        "--latency-samples",
        "2",
        *(bert_args(tiny_bert) if tiny_bert else []),
        *extra,
    ]


def statuses(path):
    return sorted(
        (r["approach"], r["seed"], r["status"]) for c in json.loads(path.read_text())["comparisons"] for r in c["runs"]
    )


@pytest.mark.grid
def test_a_local_grid_runs_every_cell_and_a_second_one_trains_nothing(cli, tmp_path, tiny_bert, ag_news_data):
    first = cli(*grid_args(tiny_bert, ag_news_data, "--json", "grid.json"))
    assert first.returncode == 0, first.stderr
    assert statuses(tmp_path / "grid.json") == [
        ("bert", 0, "ok"),
        ("bert", 1, "ok"),
        ("naive-bayes", 0, "ok"),
        ("naive-bayes", 1, "ok"),
    ]
    again = cli(*grid_args(tiny_bert, ag_news_data, "--json", "again.json"))
    assert again.returncode == 0, again.stderr
    assert {status for *_, status in statuses(tmp_path / "again.json")} == {"reused"}
    report = cli("report")
    assert report.returncode == 0, report.stderr
    assert "2/2 seeds" in report.stdout and " sd" in report.stdout


@pytest.mark.ray
def test_a_grid_on_a_local_ray_runs_every_cell_with_each_units_machine(plugin_site, tmp_path, ag_news_data):
    """Without --address harness starts a local Ray (a killed node, S3 storage, reuse: tests/test_cluster.py)."""
    pytest.importorskip("ray")
    args = [
        sys.executable,
        "-m",
        "harness",
        *grid_args(None, ag_news_data, "--executor", "ray", "--cpus", "2", "--json", "grid.json"),
    ]
    env = {**os.environ, "PYTHONPATH": str(plugin_site)}
    grid = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert grid.returncode == 0, grid.stderr[-3000:]
    assert statuses(tmp_path / "grid.json") == [("naive-bayes", 0, "ok"), ("naive-bayes", 1, "ok")]
    for run in json.loads((tmp_path / "grid.json").read_text())["comparisons"][0]["runs"]:
        # Read by the measuring unit in its Ray worker: the identity's machine is the one the record names.
        assert run["measurement"]["identity"]["machine"].startswith(os.uname().nodename)
        assert run["environment"]["device"].startswith("CPU: ")


@pytest.mark.grid
def test_a_specs_teacher_labels_once_for_every_student_of_a_grid(cli, tmp_path, shared):
    """``teacher: openai`` in the spec: a grid asks the teacher each train text once, before its students train, from
    compare's cache; every row's record says it learnt from the teacher's labels, and the second grid asks nothing."""
    from conftest import AG_NEWS
    from openai_server import OpenAIServer

    labels = ["World", "Sports", "Business", "Sci/Tech"]
    lines = (AG_NEWS / "train.jsonl").read_text(encoding="utf-8").splitlines()[:40]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    gold = {json.loads(line)["text"]: labels[json.loads(line)["label"]] for line in lines}
    spec = tmp_path / "taught.yaml"
    text = (Path(__file__).resolve().parent.parent / "specs" / "agnews.yaml").read_text(encoding="utf-8")
    spec.write_text(text + "teacher: openai\n", encoding="utf-8")
    wrong = set(list(gold)[:5])
    with OpenAIServer(gold, labels, faults=Faults(wrong=wrong)) as server:
        args = [
            "grid",
            "--spec",
            str(spec),
            "--plugins",
            "naive-bayes",
            "--seeds",
            "0,1",
            "--data",
            f"train={tmp_path / 'train.jsonl'},test={AG_NEWS / 'test.jsonl'}",
            "--limit-test",
            "24",
            "--latency-samples",
            "2",
            "--set",
            f"openai.base_url={server.base_url}",
            "--set",
            "openai.model=test-model",
            "--set",
            "openai.api_key_env=",
            "--json",
            "grid.json",
        ]
        first = cli(*args)
        assert first.returncode == 0, first.stderr
        asked = [e["text"] for e in server.log if e["path"].endswith("completions")]
        # Each train text once, for both seeds' students (the validation split carved from train keeps gold).
        assert len(asked) == len(set(asked)) and set(asked) <= set(gold) and len(asked) >= 30
        runs = json.loads((tmp_path / "grid.json").read_text())["comparisons"][0]["runs"]
        agreeing = len(set(asked) - wrong) / len(asked)
        for run in runs:
            teacher = run["environment"]["teacher"]
            assert teacher["asked"] == len(asked) and teacher["kept"] == len(asked)
            assert teacher["agreement_with_gold"] == pytest.approx(agreeing) and agreeing < 1
        assert "trained on the labels of teacher openai" in first.stdout
        again = cli(*args)
        assert again.returncode == 0, again.stderr
        assert len([e for e in server.log if e["path"].endswith("completions")]) == len(asked)
        assert statuses(tmp_path / "grid.json") == [("naive-bayes", 0, "reused"), ("naive-bayes", 1, "reused")]
