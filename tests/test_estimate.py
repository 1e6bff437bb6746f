"""The plan a compare prints before anything trains: each row's fate, steps and estimated cost, ``--dry-run``,
``--budget``, and the estimate kept in the record beside what was measured (harness.estimate, harness.calibration)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import bert_args
from harness.estimate import evaluations, parse_duration, training_steps

COMMON = ["--spec", "agnews", "--limit-train", "160", "--limit-test", "48", "--latency-samples", "4"]


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and modification time: what "nothing written" compares."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def test_steps_and_evaluations_follow_the_trainers_arithmetic():
    settings = {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 2, "num_train_epochs": 1.5}
    assert training_steps(settings, 100) == math.ceil(math.ceil(100 / 16) * 1.5) == 11
    assert training_steps({**settings, "num_train_epochs": 0}, 100) == 0
    assert training_steps({"model": "x"}, 100) is None  # an approach without Trainer settings
    assert evaluations({"eval_steps": 0.25}, 11, 20) == 3  # every ceil(0.25 * 11) = 3 steps
    assert evaluations({"eval_steps": 4}, 11, 20) == 2
    assert evaluations({"eval_steps": 4}, 11, 0) == 0  # no validation, no evaluation


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("15m", 900), ("2h", 7200), ("1h30m", 5400), ("45", 45), ("1.5h", 5400)]
)
def test_budget_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("budget", ["0", "abc", "-5m", ""])
def test_a_bad_budget_is_one_line_and_exit_2_before_anything_is_read(cli, budget, tmp_path):
    result = cli("compare", "--plugins", "bert", "--spec", "agnews", f"--budget={budget}", "--store", "st")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("harness: error: --budget: ")
    assert not (tmp_path / "st").exists()


@pytest.fixture(scope="module")
def stored(workspace, tiny_bert, ag_news_data):
    """One bert run, its plan calibrated: the store holds its figures and its calibration afterwards."""
    tmp_path, cli = workspace
    args = [
        "--plugins",
        "bert",
        "--data",
        ag_news_data,
        *COMMON,
        *bert_args(tiny_bert, "per_device_train_batch_size=8"),
        "--store",
        "st",
    ]
    ran = cli("compare", *args, "--json", "first.json", env={"HARNESS_CALIBRATE": "1"})
    assert ran.returncode == 0, ran.stderr
    return args, ran, json.loads((tmp_path / "first.json").read_text())


def _plan_line(output: str, row: str = "bert") -> str:
    return next(line for line in output.splitlines() if line.startswith(f"{row} "))


def test_the_plan_is_printed_before_training_with_a_calibrated_estimate(stored, workspace):
    tmp_path = workspace[0]
    _, ran, first = stored
    # 144 training examples (16 of 160 held out), batch 8: 18 steps of one epoch.
    line = _plan_line(ran.stdout)
    assert "trained" in line and " 18 " in line and "calibrated: 4 timed steps" in line
    assert "?" not in line.split("│")[4]  # a training time, estimated
    assert ran.stdout.index("calibrating bert") < ran.stdout.index("plan for agnews") < ran.stdout.index("train_loss")
    assert (tmp_path / "st" / "calibrations").is_dir()  # kept for the next plan of this shape


def test_a_dry_run_on_no_store_trains_nothing_and_creates_nothing(cli, tmp_path, tiny_bert, ag_news_data):
    args = ["--plugins", "bert", "--data", ag_news_data, *COMMON, *bert_args(tiny_bert), "--store", "st"]
    result = cli("compare", *args, "--dry-run", "--json", "out.json")
    assert result.returncode == 0, result.stderr
    line = _plan_line(result.stdout)
    # With calibration off (HARNESS_CALIBRATE=0) and an empty store, there is nothing to estimate from.
    assert "trained" in line and "not estimated" in line
    assert not (tmp_path / "st").exists() and not (tmp_path / "out.json").exists()


def test_the_record_keeps_the_estimate_beside_what_was_measured(stored):
    _, ran, first = stored
    run = first["runs"][0]
    estimate = run["estimate"]
    assert estimate["fate"] == "trained" and estimate["steps"] == 18
    assert estimate["train_seconds"] > 0 and estimate["serve_seconds"] > 0 and estimate["peak_rss_mb"] > 0
    assert run["speed"]["train_seconds"] > 0  # the actual figure, beside it
    assert estimate["source"] == "calibrated: 4 timed steps"
    # Under the table: the estimate beside what the run took.
    assert "bert: trained in " in ran.stdout and "(calibrated: 4 timed steps)" in ran.stdout


def test_a_dry_run_on_a_store_reads_it_and_changes_nothing(stored, workspace, tiny_bert):
    tmp_path, cli = workspace
    args = stored[0]
    before = _tree(tmp_path / "st")
    # The same row again: reused. A row of the same shape with two epochs: trained, estimated from the stored run.
    again = cli("compare", *args, "--dry-run")
    longer = cli("compare", *args, "--set", "bert.num_train_epochs=2", "--dry-run")
    assert again.returncode == 0 and longer.returncode == 0, (again.stderr, longer.stderr)
    assert "reused" in _plan_line(again.stdout)
    line = _plan_line(longer.stdout)
    assert "trained" in line and " 36 " in line and "stored run" in line
    assert _tree(tmp_path / "st") == before


def test_over_budget_stops_before_training_in_one_line(stored, workspace):
    tmp_path, cli = workspace
    args = stored[0]
    before = _tree(tmp_path / "st")
    result = cli("compare", *args, "--set", "bert.num_train_epochs=50", "--budget", "1s")
    assert result.returncode == 2
    assert result.stderr.count("harness: error") == 1  # after the test site's broken plugin's warning
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("harness: error: --budget: the plan is estimated at ")
    assert "bert " in error and "--limit-train" in error and "GPU" in error
    assert {k for k in _tree(tmp_path / "st") if k.startswith("runs/")} == {
        k for k in before if k.startswith("runs/")
    }  # nothing trained
