"""The bert plugin: the conformance kit on a tiny BERT, random weights from shipped configs, and real
pretrained weights (MiniLM from ../shared) learning AG News."""

from __future__ import annotations

import pytest

import harness_plugins.bert as bert
from conftest import MINILM
from harness.models import length_bucket_order, length_buckets, load_config
from harness.testing import check_plugin
from harness.types import Task

AG_TASK = Task("classification", ("World", "Sports", "Business", "Sci/Tech"))


def test_tiny_bert_passes_the_conformance_kit(tmp_path, tiny_bert):
    record = check_plugin(
        bert,
        tmp_path=tmp_path,
        settings={
            "model": str(tiny_bert),
            "num_train_epochs": 8.0,
            "learning_rate": 3e-3,
            "per_device_train_batch_size": 8,
            "eval_steps": 0.25,
            "predict_batch_size": 5,
        },
        launcher="inline",  # the process launcher: tests/test_plugins.py (the kit) and tests/test_compare_cli.py
    )
    # The tiny dataset is separable by keywords: a 2-layer BERT trained from scratch must learn it.
    assert record.metrics["accuracy"] >= 0.8, record.train_log
    assert record.model["parameters"] == pytest.approx(2_050_000, rel=0.05)
    assert record.model["best_checkpoint"].startswith("checkpoint-")


def test_shipped_configs_have_the_seed_models_shapes():
    config = load_config("google-bert/bert-base-cased")
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (768, 12, 28996)
    qwen = load_config("Qwen/Qwen3-0.6B")
    assert (qwen.hidden_size, qwen.num_hidden_layers, qwen.num_key_value_heads, qwen.vocab_size) == (
        1024,
        28,
        8,
        151936,
    )


def test_random_weights_from_the_shipped_bert_base_config(shared):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    model = bert._new_model(AG_TASK, bert.BertSettings(), tokenizer, random_weights=True)
    # bert-base-cased has 108.3M parameters; MiniLM's 30,522-token vocabulary adds 1,526 embedding rows.
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(108_313_348 + 1526 * 768, rel=1e-4)
    assert model.config.num_labels == 4


def test_length_buckets_cover_every_index_once_longest_first():
    lengths = [5, 50, 7, 3, 49, 8, 2]
    batches = length_buckets(lengths, 3)
    assert sorted(i for batch in batches for i in batch) == list(range(7))
    assert batches[0] == [1, 4, 5] and [lengths[i] for i in batches[-1]] == [2]


def test_training_order_buckets_by_length_without_a_long_to_short_drift():
    import random

    rng = random.Random(1)
    lengths = [rng.randint(5, 300) for _ in range(4000)]
    order = length_bucket_order(lengths, batch_size=16, seed=0, megabatch=10)
    assert sorted(order) == list(range(4000))
    batches = [order[i : i + 16] for i in range(0, 4000, 16)]
    assert max(lengths[i] for i in batches[0]) == max(lengths)
    # Within a batch lengths are close: far less padding than random batches.
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 30
    # Batch order is shuffled: mean batch length is uncorrelated with position (HF's group_by_length
    # runs long-to-short inside each megabatch of 10 batches).
    means = [sum(lengths[i] for i in b) / len(b) for b in batches[1:]]
    within = [means[i] > means[i + 1] for i in range(len(means) - 1)]
    assert 0.35 < sum(within) / len(within) < 0.65
    assert order != length_bucket_order(lengths, batch_size=16, seed=1, megabatch=10)
