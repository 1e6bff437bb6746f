"""The vllm engine: a command that is not there stops the compare before anything trains; a server that dies
while starting fails its row with its last log lines and loses no other row; and, where vLLM is installed
(HARNESS_VLLM_COMMAND, which .ci/run sets to the CPU build in a venv of its own), the real server serves what
qwen trained on a tiny Qwen3, with parity against transformers recorded and no server left running."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import AG_NEWS

VLLM_COMMAND = os.environ.get("HARNESS_VLLM_COMMAND", "")


@pytest.fixture(scope="module")
def qwen_for_vllm(tmp_path_factory, shared):
    """A 2-layer Qwen3 with random weights and the real Qwen3 tokenizer, with 64-wide heads: vLLM's CPU attention
    has no kernel for the 16-wide heads of conftest's tiny_qwen."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    from conftest import QWEN_TOKENIZER

    path = tmp_path_factory.mktemp("qwen-head64")
    tokenizer = AutoTokenizer.from_pretrained(QWEN_TOKENIZER)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def ag_files(folder, n_train: int, n_test: int) -> str:
    for split, n in (("train", n_train), ("test", n_test)):
        lines = (AG_NEWS / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()[:n]
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return f"train={folder / 'train.jsonl'},test={folder / 'test.jsonl'}"


def tiny(tiny_qwen, *extra: str) -> list[str]:
    settings = {
        "model": tiny_qwen,
        "num_train_epochs": 1,
        "learning_rate": 1e-3,
        "per_device_train_batch_size": 8,
        "gradient_accumulation_steps": 1,
        "max_length": 256,
        "eval_steps": 0.5,
        "dtype": "float32",
        **dict(e.split("=", 1) for e in extra),
    }
    return [arg for key, value in settings.items() for arg in ("--set", f"qwen.{key}={value}")]


def test_a_vllm_command_that_is_not_there_stops_the_compare_before_anything_trains(cli, tiny_qwen, tmp_path):
    result = cli(
        "compare",
        "--plugins",
        "qwen,vllm",
        "--spec",
        "agnews",
        "--data",
        ag_files(tmp_path, 16, 8),
        *tiny(tiny_qwen),
        "--set",
        "vllm.command=/nowhere/bin/vllm serve",
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("harness: error")]
    assert errors == [
        "harness: error: vllm.command: '/nowhere/bin/vllm' is not a command here: set vllm.command to how "
        "vLLM's server starts where it is installed (e.g. /opt/vllm/bin/vllm serve)"
    ]
    assert not list(tmp_path.glob(".harness/runs/*"))


HF_TOKEN = "hf_live_7f3a9c2b1d"
API_KEY = "sk-live-1b2c3d4e5f"


def test_a_server_that_dies_while_starting_fails_its_row_with_its_last_lines(cli, tiny_qwen, tmp_path):
    """Also: the server gets its env and extra_args as written, and no record, page or message holds the
    env's values or the value after --api-key (the dying server even logs them)."""
    seen = tmp_path / "server-saw.txt"
    dying = tmp_path / "dying_server.py"
    dying.write_text(
        "import os, sys\n"
        f"open({str(seen)!r}, 'w').write(' '.join(sys.argv[1:]) + ' ' + os.environ['HF_TOKEN'])\n"
        "print('args:', *sys.argv[1:])\nprint('token', os.environ['HF_TOKEN'])\n"
        "print('loading weights')\nprint('RuntimeError: no KV cache space')\nraise SystemExit(3)\n"
    )
    result = cli(
        "compare",
        "--plugins",
        "qwen,vllm",
        "--spec",
        "agnews",
        "--data",
        ag_files(tmp_path, 16, 8),
        *tiny(tiny_qwen, "num_train_epochs=0"),
        "--set",
        f"vllm.command={shlex.quote(sys.executable)} {dying}",
        "--set",
        f"vllm.env=HF_TOKEN={HF_TOKEN},VLLM_CPU_KVCACHE_SPACE=1",
        "--set",
        f"vllm.extra_args=--enforce-eager --api-key {API_KEY}",
        "--json",
        "out.json",
    )
    runs = {run["approach"]: run for run in json.loads((tmp_path / "out.json").read_text())["runs"]}
    assert runs["qwen"]["status"] == "ok"
    assert runs["vllm"]["status"] == "failed"
    assert (
        "exited with status 3 while starting: token <secret> | loading weights | RuntimeError: no KV cache space"
        in runs["vllm"]["error"]
    )
    assert result.returncode != 0
    # The server got the real values; the record holds <secret> in their place, in its settings and identity.
    assert f"--api-key {API_KEY}" in seen.read_text() and seen.read_text().endswith(HF_TOKEN)
    settings = runs["vllm"]["settings"]
    assert settings["env"] == "HF_TOKEN=<secret>,VLLM_CPU_KVCACHE_SPACE=<secret>"
    assert settings["extra_args"] == "--enforce-eager --api-key <secret>"
    # The identity holds a keyed digest in their place (a changed value is a changed identity), never the value.
    shown = runs["vllm"]["measurement"]["identity"]["predict_settings"]["extra_args"]
    assert re.fullmatch(r"--enforce-eager --api-key <secret [0-9a-f]{12}>", shown), shown
    page = cli("report", "--html", "page.html")
    assert page.returncode == 0, page.stderr
    for text in (result.stdout, result.stderr, page.stdout, page.stderr):
        assert HF_TOKEN not in text and API_KEY not in text
    for path in tmp_path.rglob("*"):
        if path.is_file() and path not in (seen, dying):
            data = path.read_bytes()
            assert HF_TOKEN.encode() not in data and API_KEY.encode() not in data, path


@pytest.mark.vllm
def test_vllm_serves_what_qwen_trained_with_the_same_answers(cli, qwen_for_vllm, tmp_path):
    if not VLLM_COMMAND:
        message = "HARNESS_VLLM_COMMAND must name vLLM's server command (.ci/run installs the CPU build)"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    result = cli(
        "compare",
        "--plugins",
        "qwen,vllm",
        "--spec",
        "agnews",
        "--data",
        ag_files(tmp_path, 32, 24),
        *tiny(qwen_for_vllm),
        "--set",
        f"vllm.command={VLLM_COMMAND}",
        # On CPU the memory fraction is of the machine's memory: 2.4 GB here.
        "--set",
        "vllm.extra_args=--enforce-eager --gpu-memory-utilization 0.1",
        "--latency-samples",
        "2",
        "--json",
        "out.json",
        timeout=900,
    )
    runs = {run["approach"]: run for run in json.loads((tmp_path / "out.json").read_text())["runs"]}
    assert runs["qwen"]["status"] == "ok", runs["qwen"]["error"]
    assert runs["vllm"]["status"] == "ok", (runs["vllm"]["error"], result.stderr[-3000:])
    parity = runs["vllm"]["serving"]["parity"]
    assert parity["n"] == 24 and parity["agreement"] >= 0.99 and parity["max_abs_diff"] < 1e-2, parity
    # The same trained model: vllm trained nothing of its own.
    assert runs["vllm"]["training"]["key"] == runs["qwen"]["training"]["key"]
    qwen = [
        json.loads(line)["label"]
        for line in open(next(tmp_path.glob(f".harness/runs/{runs['qwen']['run_id']}*/predictions.jsonl")))
    ]
    vllm = [
        json.loads(line)["label"]
        for line in open(next(tmp_path.glob(f".harness/runs/{runs['vllm']['run_id']}*/predictions.jsonl")))
    ]
    assert sum(a == b for a, b in zip(qwen, vllm)) >= 23
    # No server is left running after harness exits.
    left = subprocess.run(["pgrep", "-f", "harness-served"], capture_output=True, text=True).stdout.split()
    assert not left, left


def test_the_vllm_extraction_row_says_which_decoding_rule_its_server_follows():
    from harness_plugins.vllm_engine import vllm_decoding_note

    assert (
        vllm_decoding_note({}) == "vLLM decodes plain greedy (the model's generation_config sets no repetition_penalty)"
    )
    assert (
        vllm_decoding_note({"repetition_penalty": 1.3})
        == "vLLM decodes greedy with the model's generation_config: repetition_penalty=1.3"
    )
    both = vllm_decoding_note({"repetition_penalty": 1.3, "no_repeat_ngram_size": 3})
    assert both.startswith(
        "vLLM decodes greedy with the model's generation_config: repetition_penalty=1.3; vLLM has "
        "no no_repeat_ngram_size=3, which transformers applies"
    )
    # A server told to ignore the model's generation_config decodes plain greedy, and the note says so.
    assert vllm_decoding_note({"repetition_penalty": 1.3}, "--enforce-eager --generation-config vllm").startswith(
        "vLLM decodes plain greedy (--generation-config vllm): it applies none of the model's generation_config"
    )
    assert vllm_decoding_note({}, "--generation-config=vllm") == "vLLM decodes plain greedy (--generation-config vllm)"
    assert vllm_decoding_note({}, "--generation-config /models/gc").startswith(
        "vLLM decodes greedy with the generation_config in /models/gc (--generation-config), not the model's"
    )
