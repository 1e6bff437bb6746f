"""Seeded runs: the same command twice, each training from scratch, gives the same numbers on CPU."""

from __future__ import annotations

import json

import pytest

from conftest import MINILM, make_cli


@pytest.mark.slow
def test_two_reruns_of_minilm_give_identical_predictions_and_metrics(tmp_path, plugin_site, ag_news_data):
    """Issue 8's bar: MiniLM, 400 training examples, 1 epoch, trained from scratch twice, each by a fresh
    harness process (inline: the units in that process, which is what seeding has to make repeatable)."""
    cli = make_cli(plugin_site, tmp_path)
    args = [
        "compare",
        "--plugins",
        "bert",
        "--spec",
        "agnews",
        "--data",
        ag_news_data,
        "--limit-train",
        "400",
        "--limit-test",
        "100",
        "--latency-samples",
        "3",
        "--set",
        f"bert.model={MINILM}",
        "--set",
        "bert.num_train_epochs=1",
        "--set",
        "bert.learning_rate=1e-4",
        "--set",
        "bert.eval_steps=0.5",
        "--set",
        "bert.per_device_train_batch_size=16",
        "--set",
        "bert.max_length=64",  # AG News texts cut to 64 tokens: half the time of 128, as deterministic
        "--rerun",
        "--launcher",
        "inline",
    ]
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
    # And the pretrained encoder really learns the task from 360 examples (chance is 0.25).
    assert first["metrics"]["accuracy"] > 0.65 and first["metrics"]["f1_weighted"] > 0.6, first["metrics"]


def test_several_seeds_store_a_run_each_and_the_table_shows_mean_and_sd(
    tmp_path, plugin_site, tiny_bert, tiny_qwen, ag_news_data
):
    import statistics

    cli = make_cli(plugin_site, tmp_path)
    # Inline: the seed loop and the table are what is tested here; the test above covers fresh processes.
    args = [
        "compare",
        "--plugins",
        "bert,qwen",
        "--spec",
        "agnews",
        "--data",
        ag_news_data,
        "--limit-train",
        "48",  # 43 to train on, 5 to evaluate: the seeds still train differently; the statistics are on the test set
        "--limit-test",
        "40",
        "--latency-samples",
        "3",
        "--set",
        f"bert.model={tiny_bert}",
        "--launcher",
        "inline",
        "--set",
        "bert.num_train_epochs=1",
        "--set",
        "bert.learning_rate=1e-3",
        "--set",
        "bert.eval_steps=0.5",
        "--set",
        f"qwen.model={tiny_qwen}",
        "--set",
        "qwen.num_train_epochs=1",
        "--set",
        "qwen.learning_rate=2e-3",
        "--set",
        "qwen.per_device_train_batch_size=16",
        "--set",
        "qwen.gradient_accumulation_steps=1",
        "--set",
        "qwen.eval_steps=0.5",
    ]
    result = cli(*args, "--seeds", "0,1,2", "--json", "three.json")
    assert result.returncode == 0, result.stderr
    out = json.loads((tmp_path / "three.json").read_text())
    qwen_runs = [run for run in out["runs"] if run["approach"] == "qwen"]
    assert [run["seed"] for run in qwen_runs] == [0, 1, 2] and [run["status"] for run in qwen_runs] == ["ok"] * 3
    # The pair line: 3 and 3 seeds nested in the 40 examples; its word, sign and bold agree; the seeds' own test.
    (pair,) = out["statistics"]["pairs"]
    assert (pair["a"], pair["b"], pair["seeds"], pair["n"]) == ("bert", "qwen", [3, 3], 40) and "mcnemar" not in pair
    line = next(line.rstrip() for line in result.stdout.splitlines() if line.startswith("bert vs qwen: "))
    assert f"{pair['difference']:+.3f} F1 (w) [{pair['low']:+.3f}, {pair['high']:+.3f}]" in line
    assert "(paired bootstrap, 3 and 3 seeds nested in 40 examples, Holm)" in line
    if pair["significant"]:
        winner = "bert" if pair["difference"] > 0 else "qwen"
        assert line.endswith(f"— {winner} is significantly better") and out["statistics"]["best"] == winner
        assert (pair["low"] > 0) if winner == "bert" else (pair["high"] < 0)
    else:
        assert line.endswith("— not a significant difference") and out["statistics"]["best"] is None
    order = pair["seeds_test"]
    assert order["test"] == "almost stochastic order" and len(order["a_scores"]) == len(order["b_scores"]) == 3
    assert order["a_scores"] == pytest.approx([run["metrics"]["f1_weighted"] for run in out["runs"][:3]])
    assert "  seeds (almost stochastic order, 3 vs 3): eps_min bert over qwen" in result.stdout
    runs = [run for run in out["runs"] if run["approach"] == "bert"]
    assert [run["seed"] for run in runs] == [0, 1, 2] and [run["settings"]["seed"] for run in runs] == [0, 1, 2]
    assert [run["status"] for run in runs] == ["ok"] * 3 and len({run["run_id"] for run in runs}) == 3
    assert len(list((tmp_path / ".harness" / "runs").iterdir())) == 6  # each seed of each row its own stored run
    assert len({tuple(e.get("loss") for e in run["train_log"]) for run in runs}) == 3  # three different trainings
    summary = out["summary"]["bert"]
    assert summary["seeds"] == [0, 1, 2] and summary["failed"] == 0
    for metric, figure in summary["metrics"].items():
        values = [run["metrics"][metric] for run in runs]
        assert figure["values"] == values and figure["n"] == 3
        assert figure["mean"] == statistics.fmean(values) and figure["sd"] == statistics.stdev(values)
    f1 = summary["metrics"]["f1_weighted"]
    assert f"{f1['mean']:.4f} ± {f1['sd']:.4f}" in result.stdout and "3/3 seeds" in result.stdout
    assert "mean ± sample standard deviation" in result.stdout
    # Which moves the figure more, the seeds or the test sample, is said and kept.
    spread = out["statistics"]["seeds"]["bert"]["f1_weighted"]
    assert spread["sd"] == pytest.approx(f1["sd"]) and spread["ci_half_width"] > 0
    assert spread["larger"] == ("seeds" if spread["sd"] > spread["ci_half_width"] else "test sample")
    assert (
        f"bert: F1 (w) sd across seeds {spread['sd']:.3f}, test-sample 95% CI ±{spread['ci_half_width']:.3f}"
        in result.stdout
    )
