"""Shared fixtures: ../shared, a tiny BERT built from a real config, and third-party plugins installed
for real (a dist-info with entry points on PYTHONPATH), so the CLI finds them as users' plugins."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# Tests never reach a model or dataset hub: everything comes from configs, tmp files and ../shared.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# A compare's plan calibrates rows the store has no figures for (a few timed steps in a unit of their own):
# seconds per compare that the suite's hundred compares would add up. tests/test_estimate.py turns it on.
os.environ.setdefault("HARNESS_CALIBRATE", "0")
# Under pytest-xdist each worker (and every process it starts) computes on one thread: two workers on two
# cores then share them instead of fighting over four spinning threads.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
AG_NEWS = SHARED / "data" / "ag_news"
MINILM = SHARED / "models" / "minilm-l6"


def require_shared() -> Path:
    if not SHARED.is_dir():
        message = f"../shared is missing (expected at {SHARED}): tests need its data and models"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return SHARED


@pytest.fixture(scope="session")
def shared() -> Path:
    return require_shared()


@pytest.fixture(scope="session")
def ag_news_data(shared: Path) -> str:
    return f"train={AG_NEWS / 'train.jsonl'},test={AG_NEWS / 'test.jsonl'}"


def first_lines(path: Path, n: int) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:n]]


@pytest.fixture(scope="module")
def ag_test(shared: Path) -> list[dict]:
    """The first 30 AG News test records of ../shared (the texts the test OpenAI server is told the answers of)."""
    return first_lines(AG_NEWS / "test.jsonl", 30)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory, shared: Path) -> Path:
    """A 2-layer, 64-wide BERT with random weights and MiniLM's real uncased WordPiece tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=512,
    )
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


DOCS_PLUGIN = ROOT / "docs" / "plugins.md"

FAILING_TRAIN = """
from harness import ApproachInfo, hookimpl

@hookimpl
def harness_describe():
    return ApproachInfo(task_types=("classification",), settings={})

@hookimpl
def harness_train(task, train):
    raise RuntimeError("out of patience on purpose")

@hookimpl
def harness_predict(examples):
    return []
"""

BROKEN_IMPORT = "import a_module_that_does_not_exist_anywhere\n"


def docs_plugin_source() -> str:
    """The complete plugin in docs/plugins.md: the first python code block."""
    match = re.search(r"```python\n(.*?)```", DOCS_PLUGIN.read_text(encoding="utf-8"), re.S)
    assert match, "docs/plugins.md has no python code block"
    return match.group(1)


def install_site(site: Path, modules: dict[str, str], entry_points: dict[str, str]) -> Path:
    """Make ``site`` a directory that, on PYTHONPATH, installs ``modules`` (name -> source) as a distribution
    whose ``harness`` entry points are ``entry_points`` (approach -> module[:object])."""
    site.mkdir(parents=True, exist_ok=True)
    for name, source in modules.items():
        (site / f"{name}.py").write_text(source, encoding="utf-8")
    dist = site / "harness_test_plugins-0.3.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: harness-test-plugins\nVersion: 0.3\n", encoding="utf-8"
    )
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (dist / "entry_points.txt").write_text(f"[harness]\n{lines}", encoding="utf-8")
    return site


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory that, on PYTHONPATH, installs the docs' plugin and its engine, a plugin whose training
    fails and one that cannot be imported, through entry points."""
    return install_site(
        tmp_path_factory.mktemp("site"),
        {
            "harness_naive_bayes": docs_plugin_source(),
            "failing_train_plugin": FAILING_TRAIN,
            "broken_import_plugin": BROKEN_IMPORT,
        },
        {
            "naive-bayes": "harness_naive_bayes",
            "failing-train": "failing_train_plugin",
            "broken-import": "broken_import_plugin",
        },
    )


CLI = [sys.executable, "-m", "harness"]  # the real command, as a subprocess runs it


def cli_env(plugin_site: Path) -> dict[str, str]:
    """This process's environment with the test plugins of ``plugin_site`` importable."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_site), os.environ.get("PYTHONPATH", "")])}


def make_cli(plugin_site: Path, cwd: Path):
    """Run the real ``harness`` command in a subprocess, in ``cwd``, with the test plugins installed."""

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        full_env = {**cli_env(plugin_site), **(env or {})}
        return subprocess.run(
            [*CLI, *args],
            cwd=cwd,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


def bert_args(tiny_bert: Path, *extra: str) -> list[str]:
    """``--set`` arguments for a quick bert on the tiny model: one epoch at lr 1e-3, then ``extra`` KEY=VALUEs."""
    settings = {"model": tiny_bert, "num_train_epochs": 1, "learning_rate": 1e-3, **dict(e.split("=") for e in extra)}
    return [arg for key, value in settings.items() for arg in ("--set", f"bert.{key}={value}")]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, plugin_site: Path):
    """A directory shared by one test module's tests, and the CLI run in it: for outputs several tests read."""
    path = tmp_path_factory.mktemp("workspace")
    return path, make_cli(plugin_site, path)


@pytest.fixture
def cli(plugin_site: Path, tmp_path: Path):
    return make_cli(plugin_site, tmp_path)


QWEN_TOKENIZER = SHARED / "models" / "qwen3-tokenizer"


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory: pytest.TempPathFactory, shared: Path) -> Path:
    """A 2-layer, 64-wide Qwen3 with random weights and the real Qwen3 tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    path = tmp_path_factory.mktemp("tiny-qwen")
    tokenizer = AutoTokenizer.from_pretrained(QWEN_TOKENIZER)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_bloom(tmp_path_factory: pytest.TempPathFactory, shared: Path) -> Path:
    """A 2-layer, 64-wide BLOOM (SeqGPT's architecture) with random weights, and a real byte-level BPE
    tokenizer trained with the ``tokenizers`` library on ../shared's Chinese texts (BLOOM's own tokenizer is
    not in ../shared): 2,000 tokens, BLOOM's special tokens."""
    import json

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import BloomConfig, BloomForCausalLM, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny-bloom")
    texts = []
    for source in (SHARED / "data" / "thucnews" / "train.jsonl", SHARED / "data" / "waybill" / "train.jsonl"):
        texts += [json.loads(line)["text"] for line in source.read_text(encoding="utf-8").splitlines()[:3000]]
    texts += ["输入: \n分类: 抽取: 输出: [GEN] None 无"]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=2000,
            special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    config = BloomConfig(
        vocab_size=len(tokenizer), hidden_size=64, n_layer=2, n_head=4, bos_token_id=1, eos_token_id=2, pad_token_id=3
    )
    torch.manual_seed(0)
    BloomForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
