"""`harness compare` end to end: the real CLI, a tiny BERT, a third-party plugin, real files, the store."""

from __future__ import annotations

import json

import pytest

from conftest import bert_args
from harness.bench import RAW_PROTOCOL

COMMON = ["--spec", "agnews", "--limit-train", "240", "--limit-test", "80", "--latency-samples", "5"]


@pytest.fixture(scope="module")
def compared(workspace, tiny_bert, ag_news_data):
    """One bert + naive-bayes comparison, shared by the tests that read its outputs."""
    tmp_path, cli = workspace
    result = cli(
        "compare",
        "--plugins",
        "bert,naive-bayes",
        "--data",
        ag_news_data,
        *COMMON,
        *bert_args(tiny_bert),
        "--json",
        "out.json",
    )
    assert result.returncode == 0, result.stderr
    return result, json.loads((tmp_path / "out.json").read_text())


def test_compare_writes_both_rows_on_identical_data(compared, workspace):
    tmp_path = workspace[0]
    result, out = compared
    assert [run["approach"] for run in out["runs"]] == ["bert", "naive-bayes"]
    bert, bayes = out["runs"]
    for run in out["runs"]:
        assert run["status"] == "ok"
        assert (run["n_train"], run["n_validation"], run["n_test"]) == (216, 24, 80)
        assert 0.0 <= run["metrics"]["f1_weighted"] <= 1.0
        assert run["metrics"]["per_class"].keys() == {"World", "Sports", "Business", "Sci/Tech"}
        assert sum(map(sum, run["metrics"]["confusion_matrix"]["matrix"])) == 80
        assert run["speed"]["predict_samples_per_s"] > 0
        assert run["speed"]["latency_samples"] == 5
        assert run["memory"]["predict_rss_peak_mb"] > 20  # naive-bayes serves without torch: about 50 MB
        assert run["environment"]["device"].startswith("CPU")
        predictions = (tmp_path / ".harness" / "runs" / run["run_id"] / "predictions.jsonl").read_text().splitlines()
        assert len(predictions) == 80
    assert bert["train_hash"] == bayes["train_hash"] and bert["test_hash"] == bayes["test_hash"]
    # Naive Bayes really learns AG News from 216 examples: well above the 0.25 of chance.
    assert bayes["metrics"]["accuracy"] > 0.45
    assert bert["model"]["parameters"] < 3_000_000 and bert["model"]["dtype"] == "float32"
    # Training time split into its phases; samples/s from the loop alone; serving measured on its own.
    speed = bert["speed"]
    assert {"load", "prepare", "train_loop", "evaluation", "save"} <= speed["train_phases"].keys()
    assert sum(speed["train_phases"].values()) <= speed["train_seconds"]
    assert speed["train_loop_samples_per_s"] > speed["train_samples_per_s"] > 0
    assert speed["predict_batch_size"] == 64 and bert["serving"] == {
        "device": "cpu",
        "dtype": "float32",
        "batch_size": 64,
        "notes": ["batches packed end to end, no padding"],
        "run_notes": ["batches packed end to end, no padding"],
    }
    assert bert["memory"]["train_rss_peak_mb"] > 0 and bert["memory"]["predict_rss_peak_mb"] > 0
    assert "Serve RSS" in result.stdout and "Batch" in result.stdout
    assert "bert: batches packed end to end, no padding" in result.stdout  # how it served, in the notes
    assert bert["environment"]["versions"]["transformers"]
    evaluations = [e for e in bert["train_log"] if "eval_f1_weighted" in e]
    assert len(evaluations) >= 3, bert["train_log"]
    assert "naive-bayes" in result.stdout and "comparison" in result.stdout


def test_identical_run_is_reused_and_report_rerenders_it(compared, workspace, tiny_bert, ag_news_data):
    tmp_path, cli = workspace
    _, first = compared
    again = cli(
        "compare",
        "--plugins",
        "bert,naive-bayes",
        "--data",
        ag_news_data,
        *COMMON,
        *bert_args(tiny_bert),
        "--json",
        "again.json",
    )
    assert again.returncode == 0, again.stderr
    second = json.loads((tmp_path / "again.json").read_text())
    assert [r["status"] for r in second["runs"]] == ["reused", "reused"]
    assert [r["run_id"] for r in second["runs"]] == [r["run_id"] for r in first["runs"]]

    cli("compare", "--plugins", "naive-bayes", "--data", ag_news_data, *COMMON, "--rerun", "--json", "rerun.json")
    assert json.loads((tmp_path / "rerun.json").read_text())["runs"][0]["status"] == "ok"

    report = cli("report", second["comparison_id"], "--json", "report.json")
    assert report.returncode == 0, report.stderr
    assert second["comparison_id"] in report.stdout
    assert json.loads((tmp_path / "report.json").read_text()) == second


def test_a_failing_plugin_leaves_a_failed_row_and_the_others_finish(cli, ag_news_data, tmp_path):
    result = cli(
        "compare", "--plugins", "failing-train,naive-bayes", "--data", ag_news_data, *COMMON, "--json", "out.json"
    )
    assert result.returncode == 1
    failed, ok = json.loads((tmp_path / "out.json").read_text())["runs"]
    assert failed["status"] == "failed" and failed["error"] == "RuntimeError: out of patience on purpose"
    assert ok["status"] == "ok" and ok["metrics"]["accuracy"] > 0.45
    error = (tmp_path / ".harness" / "runs" / failed["run_id"] / "error.txt").read_text()
    assert "Traceback" in error and "out of patience" in error
    assert "failing-train failed" in result.stdout


def test_random_weights_builds_from_config_and_marks_quality_meaningless(
    cli, tiny_bert, ag_news_data, tmp_path, shared
):
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    (config_only / "config.json").write_text((tiny_bert / "config.json").read_text())
    result = cli(
        "compare",
        "--plugins",
        "bert",
        "--data",
        ag_news_data,
        *COMMON,
        "--random-weights",
        "--set",
        f"bert.model={config_only}",
        "--set",
        f"bert.tokenizer={tiny_bert}",
        "--set",
        "bert.num_train_epochs=1",
        "--launcher",
        "inline",
        "--json",
        "out.json",
    )
    assert result.returncode == 0, result.stderr
    run = json.loads((tmp_path / "out.json").read_text())["runs"][0]
    assert run["random_weights"] is True and run["status"] == "ok"
    assert "quality is meaningless" in result.stdout


def test_bert_and_qwen_compare_end_to_end_and_sft_learns_ag_news(cli, tiny_bert, tiny_qwen, ag_news_data, tmp_path):
    # Inline: the four unit processes would cost half a minute of imports; `compared` covers the process launcher.
    result = cli(
        "compare",
        "--plugins",
        "bert,qwen",
        "--data",
        ag_news_data,
        "--spec",
        "agnews",
        "--limit-train",
        "400",
        "--limit-test",
        "80",
        "--latency-samples",
        "5",
        *bert_args(tiny_bert),
        "--set",
        f"qwen.model={tiny_qwen}",
        "--set",
        "qwen.num_train_epochs=6",
        "--set",
        "qwen.learning_rate=2e-3",
        "--set",
        "qwen.per_device_train_batch_size=16",
        "--set",
        "qwen.gradient_accumulation_steps=1",
        # A model this small learns the letter only with the loss on the answer (see test_qwen.FAST).
        "--set",
        "qwen.answer_loss=letter",
        "--launcher",
        "inline",
        "--json",
        "out.json",
    )
    assert result.returncode == 0, result.stderr
    bert, qwen = json.loads((tmp_path / "out.json").read_text())["runs"]
    assert bert["status"] == qwen["status"] == "ok"
    assert bert["test_hash"] == qwen["test_hash"]
    losses = [e["loss"] for e in qwen["train_log"] if "loss" in e]
    assert losses[-1] < losses[0] / 4, losses
    # A 2-layer, 64-wide Qwen3 trained from scratch on 360 prompts: clearly above the 0.25 of chance.
    assert qwen["metrics"]["accuracy"] > 0.35, qwen["metrics"]
    assert qwen["model"]["truncated_train"] == 0 and qwen["model"]["truncated_predict"] == 0
    assert "qwen" in result.stdout and "bert" in result.stdout


def assert_own_memory_fields(rows: list[dict]) -> None:
    """Peak RSS (with the loaded model) and what the row's own calls added; no GPU figures on CPU."""
    for row in rows:
        assert row["rss_peak_mb"] > 50 and 0 <= row["rss_added_mb"] < row["rss_peak_mb"], row
        assert row["gpu_peak_mb"] is None and row["gpu_added_mb"] is None, row


def test_bench_serves_a_stored_run_and_random_weights(compared, workspace, tiny_qwen, ag_news_data):
    tmp_path, cli = workspace
    _, out = compared
    bert_run = out["runs"][0]["run_id"]
    small = [
        "--data",
        ag_news_data,
        "--limit-test",
        "48",
        "--batch-sizes",
        "1,16",
        "--rounds",
        "2",
        "--latency-samples",
        "8",
        "--concurrency",
        "4",
        "--requests",
        "40",
    ]
    stored = cli("bench", "--plugin", "bert", "--spec", "agnews", "--run", bert_run, *small, "--json", "bench.json")
    assert stored.returncode == 0, stored.stderr
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["source"] == f"run {bert_run}" and result["n_examples"] == 48
    assert [row["batch_size"] for row in result["throughput"]] == [1, 16]
    assert all(row["samples_per_s"] > 0 and row["rss_peak_mb"] > 50 for row in result["throughput"])
    served = result["served"]
    assert served["requests"] == 40 and served["concurrency"] == 4
    # The served batch limit defaults to the clients' number: four closed-loop clients never fill more.
    assert served["max_batch"] == 4 and 1 <= served["mean_batch"] <= 4
    # Two rounds, each after an offline pass at the same batch; the ratio is the median of the pairs'.
    assert len(served["rounds_requests_per_s"]) == len(served["rounds_offline_samples_per_s"]) == 2
    pairs = [r / o for r, o in zip(served["rounds_requests_per_s"], served["rounds_offline_samples_per_s"])]
    assert served["of_offline"] == pytest.approx(sum(pairs) / 2)
    assert "× offline" in stored.stdout and "each after an offline pass at batch 4" in stored.stdout
    assert result["latency"]["latency_samples"] == 8
    assert "served" in stored.stdout and "throughput" in stored.stdout
    # The raw row: the same model called by hand, measured the same way in the same run, for each batch size.
    raw = result["raw"]
    assert [row["batch_size"] for row in raw["throughput"]] == [1, 16]
    assert all(row["samples_per_s"] > 0 and row["rounds"] == 2 for row in raw["throughput"])
    assert raw["latency"]["latency_samples"] == 8 and raw["latency"]["latency_p50_ms"] > 0
    assert "tokenizer + forward" in stored.stdout and "× raw" in stored.stdout
    # × raw says what raw is: file order, padded batches, where predict may bucket by length.
    assert result["raw_protocol"] == RAW_PROTOCOL and "file order" in RAW_PROTOCOL and "padded" in RAW_PROTOCOL
    assert "× raw: file order, padded" in stored.stdout and "file order, padded: tokenizer + forward" in stored.stdout
    # Each path's own peak memory, in fields of its own: raw's rows and the harness's are measured apart.
    assert_own_memory_fields([*raw["throughput"], raw["latency"], *result["throughput"], result["latency"], served])
    assert "peak memory: each row's path alone" in stored.stdout

    fresh = cli(
        "bench",
        "--plugin",
        "qwen",
        "--spec",
        "agnews",
        "--random-weights",
        "--set",
        f"qwen.model={tiny_qwen}",
        *small,
        "--json",
        "bench-qwen.json",
    )
    assert fresh.returncode == 0, fresh.stderr
    qwen_bench = json.loads((tmp_path / "bench-qwen.json").read_text())
    assert qwen_bench["source"] == "random weights"
    assert [row["batch_size"] for row in qwen_bench["raw"]["throughput"]] == [1, 16]  # qwen's reference too
    assert qwen_bench["raw_protocol"] == RAW_PROTOCOL
    assert_own_memory_fields(
        [*qwen_bench["raw"]["throughput"], qwen_bench["raw"]["latency"], *qwen_bench["throughput"]]
    )

    nb_run = out["runs"][1]["run_id"]
    no_reference = cli(
        "bench", "--plugin", "naive-bayes", "--spec", "agnews", "--run", nb_run, *small, "--json", "bench-nb.json"
    )
    assert no_reference.returncode == 0, no_reference.stderr
    nb_bench = json.loads((tmp_path / "bench-nb.json").read_text())
    assert nb_bench["raw"] == {} and nb_bench["raw_protocol"] is None and "× raw" not in no_reference.stdout

    wrong = cli("bench", "--plugin", "qwen", "--spec", "agnews", "--run", bert_run, *small)
    assert (
        wrong.returncode == 2
        and f"--run: run {bert_run} is a bert run (ok); qwen serves a finished run trained by qwen" in wrong.stderr
    )
