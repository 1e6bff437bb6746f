"""harness grid: approaches x settings x seeds as runs, one comparison per spec; locally one after another,
and on a real local Ray (ray.init(num_cpus=2)) with a worker killed during a run (Ray retries it once); every run
in the store, the report's mean ± sd per row, and a second identical grid training nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import bert_args
from harness.errors import UserError
from harness.grid import row_name, split_values, variants


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


def grid_args(tiny_bert, ag_news_data, *extra):
    return [
        "grid",
        "--spec",
        "agnews",
        "--plugins",
        "naive-bayes,bert",
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
        *bert_args(tiny_bert),
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
def test_a_grid_on_ray_survives_a_killed_worker_and_reports_mean_and_sd(plugin_site, tmp_path, tiny_bert, ag_news_data):
    pytest.importorskip("ray")
    args = [
        sys.executable,
        "-m",
        "harness",
        *grid_args(tiny_bert, ag_news_data, "--executor", "ray", "--cpus", "2", "--json", "grid.json"),
    ]
    env = {**os.environ, "PYTHONPATH": str(plugin_site)}
    killed: list[int] = []

    def kill_one_worker() -> None:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not killed:
            found = subprocess.run(
                ["pgrep", "-f", "ray::harness_train_unit"], capture_output=True, text=True
            ).stdout.split()
            if found:
                time.sleep(1.0)  # inside its unit: the unit's own process is still importing torch
                os.kill(int(found[0]), signal.SIGKILL)
                killed.append(int(found[0]))
            time.sleep(0.2)

    killer = threading.Thread(target=kill_one_worker, daemon=True)
    killer.start()
    grid = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    killer.join(timeout=5)
    assert killed, "no Ray worker was seen running a train unit"
    assert grid.returncode == 0, grid.stderr[-3000:]
    # The killed worker's unit ran again (Ray's one retry): every run finished and is in the store.
    assert statuses(tmp_path / "grid.json") == [
        ("bert", 0, "ok"),
        ("bert", 1, "ok"),
        ("naive-bayes", 0, "ok"),
        ("naive-bayes", 1, "ok"),
    ]
    report = subprocess.run(
        [sys.executable, "-m", "harness", "report"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert "2/2 seeds" in report.stdout and " sd" in report.stdout
    again = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {status for *_, status in statuses(tmp_path / "grid.json")} == {"reused"}
