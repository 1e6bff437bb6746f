"""bert-onnx end to end on a tiny BERT: bert trains once, ONNX Runtime serves the same model in fp32 and int8
with parity against PyTorch recorded on every run, and a missing ONNX Runtime is one line naming the extra."""

from __future__ import annotations

import json

import pytest

from conftest import bert_args, install_site, make_cli

COMMON = ["--spec", "agnews", "--limit-train", "240", "--limit-test", "120", "--latency-samples", "5"]


@pytest.fixture(scope="module")
def compared(tmp_path_factory, plugin_site, tiny_bert, ag_news_data):
    folder = tmp_path_factory.mktemp("onnx")
    cli = make_cli(plugin_site, folder)
    result = cli(
        "compare",
        "--plugins",
        "bert,bert-onnx,bert-onnx-int8",
        "--data",
        ag_news_data,
        *COMMON,
        *bert_args(tiny_bert),
        "--json",
        "out.json",
    )
    assert result.returncode == 0, result.stderr
    return folder, cli, result, json.loads((folder / "out.json").read_text())


def test_bert_trains_once_and_onnx_runtime_serves_it_with_parity(compared):
    folder, _, result, out = compared
    bert, fp32, int8 = out["runs"]
    assert [r["status"] for r in out["runs"]] == ["ok"] * 3, [r["error"] for r in out["runs"]]
    # One training: both engine rows measure the model bert trained.
    assert fp32["training"]["trained_in"] == int8["training"]["trained_in"] == bert["run_id"]
    assert len(list((folder / ".harness" / "runs").glob("*/artifact/model"))) == 1  # one stored model
    parity = fp32["serving"]["parity"]
    assert parity["against"] == "PyTorch" and parity["n"] == 120 and parity["agreement"] == 1.0
    assert parity["max_abs_diff"] <= 1e-3 and parity["ok"]
    assert fp32["metrics"]["f1_weighted"] == pytest.approx(bert["metrics"]["f1_weighted"], abs=1e-9)
    assert int8["serving"]["parity"]["agreement"] >= 0.985 and int8["serving"]["dtype"] == "int8"
    assert fp32["serving"]["dtype"] == "fp32"
    assert any(
        note.startswith("ONNX Runtime ") and "CPUExecutionProvider, fp32" in note for note in fp32["model"]["notes"]
    )
    # bert's own serving (packed batches) is not how the engine served: its note stays on bert's row.
    assert any("packed" in note for note in bert["model"]["notes"])
    assert not any("packed" in note for note in fp32["model"]["notes"] + int8["model"]["notes"])
    assert fp32["training"]["reason"] == "re-measured: served by bert-onnx (trained by bert)"
    # The export and the quantization were built once, in the load cache, timed apart from serving.
    assert fp32["speed"]["build_seconds"] > 0 and int8["speed"]["build_seconds"] > 0
    assert list((folder / ".harness" / "cache").glob("*/bert-onnx-*/model-int8-off.onnx"))
    assert "bert-onnx-int8: runs bert-onnx" in result.stdout


def test_a_second_compare_reuses_the_build_and_a_tighter_tolerance_fails_the_row_in_one_line(
    compared, tiny_bert, ag_news_data
):
    folder, cli, _, out = compared
    again = cli(
        "compare",
        "--plugins",
        "bert,bert-onnx,bert-onnx-int8",
        "--data",
        ag_news_data,
        *COMMON,
        *bert_args(tiny_bert),
        "--latency-samples",
        "4",
        "--set",
        "bert-onnx-int8.max_logit_diff=1e-9",
        # Inline: the build's reuse and the parity check are the runner's and the engine's, whichever launcher
        # runs the units (the fixture's compare covers the process launcher); it saves three process starts.
        "--launcher",
        "inline",
        "--json",
        "strict.json",
    )
    assert again.returncode == 1  # a failed row
    bert, fp32, int8 = json.loads((folder / "strict.json").read_text())["runs"]
    assert bert["training"]["trained_in"] == out["runs"][0]["run_id"]
    # Only how it is measured changed for fp32 (latency samples, launcher): measured again on the export built
    # the first time.
    assert fp32["status"] == "ok" and fp32["speed"]["build_seconds"] is None
    assert int8["status"] == "failed" and int8["error"].startswith(
        "parity: int8: largest |logit difference| from PyTorch "
    )
    assert "above max_logit_diff 1e-09" in int8["error"] and "\n" not in int8["error"]
    assert int8["serving"]["parity"]["agreement"] >= 0.985  # the figures are kept with the failure


def test_without_onnx_runtime_the_row_fails_in_one_line_naming_the_extra(
    tmp_path, plugin_site, tiny_bert, ag_news_data
):
    hidden = install_site(tmp_path / "hidden", {"onnxruntime": "raise ImportError('not installed here')"}, {})
    cli = make_cli(plugin_site, tmp_path)
    result = cli(
        "compare",
        "--plugins",
        "bert,bert-onnx",
        "--data",
        ag_news_data,
        *COMMON,
        *bert_args(tiny_bert),
        "--latency-samples",
        "3",
        "--launcher",
        "inline",  # ONNX Runtime is missing in every process alike; inline saves three process starts
        "--json",
        "out.json",
        env={"PYTHONPATH": f"{hidden}:{plugin_site}"},
    )
    assert result.returncode == 1
    bert, onnx = json.loads((tmp_path / "out.json").read_text())["runs"]
    assert bert["status"] == "ok" and onnx["status"] == "failed"
    assert onnx["error"] == (
        "ImportError: bert-onnx needs ONNX Runtime: pip install 'harness-compare[onnx]' (or [onnx-gpu] for CUDA)"
    )


def test_int8_quantizes_the_optimized_graph_too(compared, tiny_bert, ag_news_data):
    """onnxruntime's fused nodes have outputs ONNX's shape inference cannot type: quantizing the optimized graph
    needs a default tensor type, or it fails (it did, on MiniLM, before)."""
    folder, cli, _, out = compared
    fused = cli(
        "compare",
        "--plugins",
        "bert,bert-onnx-int8",
        "--data",
        ag_news_data,
        *COMMON,
        *bert_args(tiny_bert),
        "--set",
        "bert-onnx-int8.optimize=all",
        "--set",
        "bert-onnx-int8.min_agreement=0",
        "--launcher",
        "inline",  # what is quantized does not depend on the launcher; inline saves two process starts
        "--json",
        "fused.json",
    )
    assert fused.returncode == 0, fused.stderr
    bert, int8 = json.loads((folder / "fused.json").read_text())["runs"]
    assert bert["training"]["trained_in"] == out["runs"][0]["run_id"]
    assert int8["status"] == "ok" and int8["serving"]["dtype"] == "int8"
    assert any("graph optimized (all)" in note for note in int8["model"]["notes"])
    assert list((folder / ".harness" / "cache").glob("*/bert-onnx-*/model-int8-all.onnx"))
