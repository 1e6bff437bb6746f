"""The quick spec (specs/agnews-quick.yaml) on the copies in ../shared: its sample sizes, rows and steps, planned
without training; and a spec's own sample sizes (dataset.limit_train, dataset.limit_test)."""

from __future__ import annotations

from collections import Counter

from conftest import AG_NEWS, SHARED
from harness.data_load import load_datasets
from harness.spec import load_spec

MINILM = SHARED / "models" / "minilm-l6"
SMOLLM2 = SHARED / "models" / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"
DATA = {"train": str(AG_NEWS / "train.jsonl"), "test": str(AG_NEWS / "test.jsonl")}


def test_a_spec_samples_its_own_sizes_stratified_and_the_options_replace_them(shared):
    spec = load_spec("agnews-quick")
    data = load_datasets(spec, data=DATA)
    assert (len(data.train), len(data.validation), len(data.test)) == (1900, 100, 1000)
    assert Counter(ex.label for ex in data.test) == {label: 250 for label in spec.task.labels}
    assert set(Counter(ex.label for ex in [*data.train, *data.validation]).values()) == {500}
    smaller = load_datasets(spec, data=DATA, limit_train=400, limit_test=100)
    assert (len(smaller.train) + len(smaller.validation), len(smaller.test)) == (400, 100)


def test_the_quick_spec_plans_minilm_against_smollm2_tuned_and_zero_shot(cli, shared):
    result = cli(
        "compare",
        "--spec",
        "agnews-quick",
        "--plugins",
        "bert,qwen,qwen-zero-shot",
        "--data",
        f"train={DATA['train']},test={DATA['test']}",
        "--set",
        f"bert.model={MINILM}",
        "--set",
        f"qwen.model={SMOLLM2}",
        "--dry-run",
    )
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.split() and "│" in line}
    # 1,900 texts to train on: bert one epoch at batch 16 (119 steps), qwen a sixth of an epoch at batch 8.
    assert " 119 " in rows["bert"] and " 39 " in rows["qwen"] and " 0 " in rows["qwen-zero-shot"]
    assert all("trained" in rows[name] for name in ("bert", "qwen", "qwen-zero-shot"))
    assert "(train 1900, validation 100, test 1000)" in result.stdout
