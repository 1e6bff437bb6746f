"""Seed 001 end to end on tiny Qwen3 models with the real Qwen3 tokenizer: the waybill spec's zero-shot, full
fine-tuning and LoRA rows in one compare, LoRA training only its adapter, a merged adapter serving the same
records as the unmerged one, and the extraction metrics in the table, the record and predictions.jsonl."""

from __future__ import annotations

import json

import pytest

from conftest import SHARED, make_cli

WAYBILL = SHARED / "data" / "waybill"
# Small enough for 2 cores: a 2-layer model, short answers, a few steps. Mechanics, not quality.
TINY = [
    "--set",
    "qwen.num_train_epochs=1",
    "--set",
    "qwen.learning_rate=1e-3",
    "--set",
    "qwen.per_device_train_batch_size=8",
    "--set",
    "qwen.gradient_accumulation_steps=1",
    "--set",
    "qwen.max_length=256",
    "--set",
    "qwen.answer_reserve=96",
    "--set",
    "qwen.max_new_tokens=24",
    "--set",
    "qwen.eval_steps=0.5",
    "--set",
    "qwen.dtype=float32",
    "--set",
    "qwen-lora.num_train_epochs=1",
    "--set",
    "qwen-lora.per_device_train_batch_size=8",
    "--set",
    "qwen-lora.gradient_accumulation_steps=1",
    "--set",
    "qwen-lora.max_length=256",
    "--set",
    "qwen-lora.answer_reserve=96",
    "--set",
    "qwen-lora.max_new_tokens=24",
    "--set",
    "qwen-lora.eval_steps=0.5",
    "--set",
    "qwen-lora.learning_rate=1e-2",
    "--set",
    "qwen-lora.dtype=float32",
    "--set",
    "qwen-lora.parity_samples=8",
]


@pytest.fixture(scope="module")
def waybill_files(tmp_path_factory, shared) -> str:
    """The first lines of ../shared/data/waybill's splits, as files of their own."""
    folder = tmp_path_factory.mktemp("waybill")
    for split, n in (("train", 40), ("dev", 8), ("test", 12)):
        lines = (WAYBILL / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()[:n]
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return f"train={folder / 'train.jsonl'},validation={folder / 'dev.jsonl'},test={folder / 'test.jsonl'}"


@pytest.fixture(scope="module")
def compared(tmp_path_factory, plugin_site, tiny_qwen, waybill_files):
    folder = tmp_path_factory.mktemp("compare")
    result = make_cli(plugin_site, folder)(
        "compare",
        "--plugins",
        "zero-shot,qwen,qwen-lora",
        "--spec",
        "waybill",
        "--data",
        waybill_files,
        "--set",
        f"qwen.model={tiny_qwen}",
        "--set",
        f"qwen-lora.model={tiny_qwen}",
        *TINY,
        "--latency-samples",
        "2",
        "--launcher",
        "inline",
        "--json",
        "out.json",
    )
    assert result.returncode == 0, result.stderr
    return folder, result, json.loads((folder / "out.json").read_text())


def test_zero_shot_sft_and_lora_rows_in_one_table_with_the_extraction_metrics(compared):
    folder, result, out = compared
    zero, sft, lora = out["runs"]
    assert [r["approach"] for r in out["runs"]] == ["zero-shot", "qwen", "qwen-lora"]
    assert all(r["status"] == "ok" for r in out["runs"]), [r["error"] for r in out["runs"]]
    for run in out["runs"]:
        metrics = run["metrics"]
        assert set(metrics) >= {"exact_match", "valid_rate", "field_f1", "field_precision", "field_recall", "per_field"}
        assert set(metrics["per_field"]) == {"name", "phone", "province", "city", "district", "specific_location"}
        assert metrics["n"] == 12 and 0 <= metrics["valid_rate"] <= 1
        # Generated tokens are counted, and the speed says so.
        assert run["speed"]["generated_tokens"] > 0 and run["speed"]["generated_tokens_per_s"] > 0
        rows = [
            json.loads(line)
            for line in (folder / ".harness" / "runs" / run["run_id"] / "predictions.jsonl")
            .read_text(encoding="utf-8")
            .splitlines()
        ]
        assert len(rows) == 12 and all(isinstance(row["raw"], str) for row in rows)  # every raw answer kept
        assert all(set(row["gold"]["fields"]) == set(metrics["per_field"]) for row in rows)
    # The zero-shot row is qwen untuned, asked with the long instruction; the tuned rows with the seed's short one.
    assert zero["settings"]["num_train_epochs"] == 0 and zero["model"].get("best_checkpoint") is None
    assert "只输出一个JSON对象" in zero["training"]["identity"]["task"]["prompt"]["system"]
    assert "只输出一个JSON对象" not in sft["training"]["identity"]["task"]["prompt"]["system"]
    # Trained under bf16 autocast where the CPU has bf16 units (mixed_precision: auto), fp32 elsewhere.
    from harness.models import cpu_has_bf16

    assert sft["model"]["mixed_precision"] == lora["model"]["mixed_precision"] == ("bf16" if cpu_has_bf16() else "no")
    assert sft["serving"]["dtype"] == "float32"  # dtype=float32 asked
    # Checkpoints are selected on exact record, with the core's scorer.
    evaluations = [e for e in sft["train_log"] if "eval_exact_match" in e]
    assert evaluations and all("eval_valid_rate" in e and "eval_field_f1" in e for e in evaluations)
    # Exact record and valid rate are the table's headline columns.
    assert "Exact rec" in result.stdout and "Valid" in result.stdout and "Gen tok/s" in result.stdout, result.stdout
    assert "zero-shot: runs qwen, asked with task.prompts.instruction" in result.stdout
    assert "per field: accuracy / F1" in result.stdout and "specific_location" in result.stdout


def test_lora_trains_and_stores_only_its_adapter(compared, tiny_qwen):
    from safetensors import safe_open

    folder, _, out = compared
    sft, lora = out["runs"][1:]
    model = lora["model"]
    assert 0 < model["trainable_parameters"] < model["parameters"] / 5
    assert model["base_model"] == str(tiny_qwen) and model["lora_r"] == 8 and model["lora_alpha"] == 32
    stored = folder / ".harness" / "runs" / lora["run_id"] / "artifact" / "model"
    assert (stored / "adapter_config.json").is_file() and not list(stored.glob("model*.safetensors"))
    with safe_open(str(stored / "adapter_model.safetensors"), "pt") as adapter:
        names = list(adapter.keys())
    assert names and all("lora_" in name for name in names)
    assert model["adapter_bytes"] == (stored / "adapter_model.safetensors").stat().st_size
    assert any(note.startswith("LoRA: trained ") for note in model["notes"])
    # The full fine-tune stores the whole model instead.
    assert list((folder / ".harness" / "runs" / sft["run_id"] / "artifact" / "model").glob("model*.safetensors"))
    # And LoRA's loss went down: the adapter learned something of the answers.
    losses = [e["loss"] for e in lora["train_log"] if "loss" in e]
    assert losses[-1] < losses[0], losses


def test_a_merged_adapter_serves_the_same_records_without_training_again(
    compared, plugin_site, tiny_qwen, waybill_files
):
    folder, _, out = compared
    unmerged = out["runs"][2]
    result = make_cli(plugin_site, folder)(
        "compare",
        "--plugins",
        "qwen-lora",
        "--spec",
        "waybill",
        "--data",
        waybill_files,
        "--set",
        f"qwen-lora.model={tiny_qwen}",
        *TINY[TINY.index("qwen-lora.num_train_epochs=1") - 1 :],
        "--set",
        "qwen-lora.merge=true",
        "--latency-samples",
        "2",
        "--launcher",
        "inline",
        "--json",
        "merged.json",
    )
    assert result.returncode == 0, result.stderr
    (merged,) = json.loads((folder / "merged.json").read_text())["runs"]
    assert merged["status"] == "ok", merged["error"]
    assert merged["training"]["trained_in"] == unmerged["run_id"]  # a predict setting: measured again, not trained
    parity = merged["serving"]["parity"]
    assert (
        parity["against"] == "the unmerged adapter (both in fp32)" and parity["n"] == 8 and parity["agreement"] == 1.0
    )
    assert parity["max_abs_diff"] < 1e-4  # fp32: merging changes rounding only

    def records(run):
        path = folder / ".harness" / "runs" / run["run_id"] / "predictions.jsonl"
        return [json.loads(line)["raw"] for line in path.read_text(encoding="utf-8").splitlines()]

    assert records(merged) == records(unmerged)


def test_a_merged_adapter_served_in_bf16_is_checked_in_fp32(compared, plugin_site, tiny_qwen, waybill_files):
    """Served in bf16, the merged weights and the adapter would be two roundings of one model, apart by bf16's
    step; the parity check compares them in fp32, where a right merge moves nothing but rounding."""
    folder, _, out = compared
    result = make_cli(plugin_site, folder)(
        "compare",
        "--plugins",
        "qwen-lora",
        "--spec",
        "waybill",
        "--data",
        waybill_files,
        "--set",
        f"qwen-lora.model={tiny_qwen}",
        *TINY[TINY.index("qwen-lora.num_train_epochs=1") - 1 :],
        "--set",
        "qwen-lora.merge=true",
        "--set",
        "qwen-lora.dtype=bfloat16",
        "--latency-samples",
        "2",
        "--launcher",
        "inline",
        "--json",
        "merged-bf16.json",
    )
    assert result.returncode == 0, result.stderr
    (merged,) = json.loads((folder / "merged-bf16.json").read_text())["runs"]
    assert merged["status"] == "ok", merged["error"]
    assert merged["serving"]["dtype"] == "bfloat16" and merged["training"]["trained_in"] == out["runs"][2]["run_id"]
    parity = merged["serving"]["parity"]
    assert parity["agreement"] == 1.0 and parity["max_abs_diff"] < 1e-4, parity


def test_target_modules_that_match_nothing_fail_the_row_in_one_line_naming_the_linear_layers(
    cli, tmp_path, tiny_qwen, waybill_files
):
    result = cli(
        "compare",
        "--plugins",
        "qwen-lora",
        "--spec",
        "waybill",
        "--data",
        waybill_files,
        "--set",
        f"qwen-lora.model={tiny_qwen}",
        "--set",
        "qwen-lora.target_modules=qkv_proj",
        "--set",
        "qwen-lora.num_train_epochs=1",
        "--launcher",
        "inline",
        "--json",
        "out.json",
    )
    assert result.returncode == 1
    (run,) = json.loads((tmp_path / "out.json").read_text())["runs"]
    assert run["status"] == "failed"
    assert run["error"].startswith("ValueError: target_modules 'qkv_proj' match no layer of "), run["error"]
    assert run["error"].endswith(
        "its linear layers: down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj"
    )
    assert "\n" not in run["error"]


def test_the_cut_articles_note_counts_training_prompts_only(tmp_path, plugin_site, tiny_qwen, waybill_files):
    """Every prompt cut (max_length barely above the answer's room): the note counts the 40 training prompts,
    not the validation prompts that were encoded beside them."""
    result = make_cli(plugin_site, tmp_path)(
        "compare",
        "--plugins",
        "qwen",
        "--spec",
        "waybill",
        "--data",
        waybill_files,
        "--set",
        f"qwen.model={tiny_qwen}",
        *TINY[: TINY.index("qwen-lora.num_train_epochs=1") - 1],
        "--set",
        "qwen.num_train_epochs=0.2",  # one step of 8: the 40 prompts are all encoded (and cut) before it
        "--set",
        "qwen.max_length=140",
        "--latency-samples",
        "1",
        "--launcher",
        "inline",
        "--json",
        "out.json",
    )
    assert result.returncode == 0, result.stderr
    (run,) = json.loads((tmp_path / "out.json").read_text())["runs"]
    assert run["model"]["truncated_train"] == 40
    assert "articles cut to fit max_length in 40 of 40 training prompts" in run["model"]["notes"]
