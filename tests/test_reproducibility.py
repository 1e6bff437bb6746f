"""Seeded runs: the same command twice, each training from scratch, gives the same numbers on CPU."""

from __future__ import annotations

import json

from conftest import make_cli


def test_two_reruns_of_the_same_command_give_identical_predictions_and_metrics(tmp_path, plugin_site, tiny_bert, ag_news_data):
    cli = make_cli(plugin_site, tmp_path)
    args = ["compare", "--plugins", "bert", "--spec", "agnews", "--data", ag_news_data, "--limit-train", "120",
            "--limit-test", "40", "--latency-samples", "3", "--set", f"bert.model={tiny_bert}",
            "--set", "bert.num_train_epochs=1", "--set", "bert.learning_rate=1e-3", "--set", "bert.eval_steps=0.5", "--rerun"]
    runs = []
    for name in ("1.json", "2.json"):
        result = cli(*args, "--json", name)
        assert result.returncode == 0, result.stderr
        (run,) = json.loads((tmp_path / name).read_text())["runs"]
        assert run["training"]["trained_in"] == run["run_id"]  # trained both times, not reused
        runs.append(run)
    first, second = runs
    assert first["run_id"] != second["run_id"]
    assert first["metrics"] == second["metrics"]
    assert [e.get("loss") for e in first["train_log"]] == [e.get("loss") for e in second["train_log"]]
    stored = [(tmp_path / ".harness" / "runs" / run["run_id"] / "predictions.jsonl").read_text() for run in runs]
    assert stored[0] == stored[1]  # every probability, to the last digit
