"""Padding-free prediction (harness.packing): a packed batch gives the padded batch's logits, for every
encoder and decoder family it is allowed on, and bert's and qwen's predict pack on CPU with the same
answers as padded."""

from __future__ import annotations

import pytest

import harness_plugins.bert as bert
from harness.packing import CLS_HEADS, DECODERS, decoder_packs, first_position, packed_calls, packed_last_logits
from harness.types import Artifact, Example, Task


def tiny_classifier(model_type: str):
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    torch.manual_seed(0)
    config = AutoConfig.for_model(
        model_type,
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=80,
        num_labels=3,
        **({"embedding_size": 32} if model_type == "electra" else {}),
    )
    return AutoModelForSequenceClassification.from_config(config).eval()


def padded_logits(model, sequences, pad: int):
    import torch

    width = max(map(len, sequences))
    input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids in sequences])
    attention_mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in sequences])
    return model(input_ids=input_ids, attention_mask=attention_mask).logits


@pytest.mark.parametrize("model_type", sorted(CLS_HEADS))
def test_a_packed_batch_gives_the_padded_logits(model_type):
    import random

    import torch

    model = tiny_classifier(model_type)
    pad = model.config.pad_token_id
    rng = random.Random(0)
    # Lengths from 1 to 60, so most rows of the padded batch are padding; ids avoid the pad id.
    sequences = [[rng.randrange(pad + 1, 120) for _ in range(n)] for n in (60, 1, 17, 3, 42, 9)]
    with torch.inference_mode():
        padded = padded_logits(model, sequences, pad)
        with packed_calls(model) as forward:
            packed = forward(sequences)
        # Outside the call the model is back on its own attention, and padded calls are untouched.
        assert model.config._attn_implementation == "sdpa"
        again = padded_logits(model, sequences, pad)
    assert packed.shape == padded.shape == (6, 3)
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-4)
    assert torch.equal(again, padded)


def test_a_family_that_pools_elsewhere_is_not_packed():
    from transformers import AutoModelForSequenceClassification, GPT2Config

    # GPT-2's head reads the last token: packing would give it the wrong one.
    model = AutoModelForSequenceClassification.from_config(
        GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, num_labels=2, pad_token_id=0)
    )
    assert first_position(model) is None
    with pytest.raises(ValueError, match="cannot run packed"):
        with packed_calls(model):
            pass


def test_bert_predicts_the_same_packed_and_padded(tiny_bert):
    from harness import RunContext
    from harness.errors import UserError

    task = Task("classification", ("a", "b", "c"))
    settings = bert.BertSettings(model=str(tiny_bert), predict_batch_size=4, device="cpu")
    context = RunContext(batch_size=4)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    model = bert._new_model(task, settings, tokenizer)
    artifact = Artifact(path=None, device="cpu")
    artifact.state.update(model=model.eval(), tokenizer=tokenizer)
    examples = [Example(id=str(i), text=" ".join(["word"] * (1 + 7 * i)) + f" item {i}") for i in range(10)]

    answers = {}
    approach = bert.Bert()
    for packing in ("padded", "packed", "auto"):
        way = settings.model_copy(update={"packing": packing})
        serving = approach.load(task, artifact, way, context)
        assert artifact.state["packed"] is (packing != "padded")
        assert serving.notes == ([] if packing == "padded" else ["batches packed end to end, no padding"])
        answers[packing] = approach.predict(task, artifact, examples, way, context)
    for packing in ("packed", "auto"):
        assert [p.label for p in answers[packing]] == [p.label for p in answers["padded"]]
        for got, want in zip(answers[packing], answers["padded"]):
            assert got.scores == pytest.approx(want.scores, abs=1e-5)
    # A family it cannot pack is refused when asked for by name, in one line naming the setting.
    from transformers import AutoModelForSequenceClassification, GPT2Config

    gpt2 = Artifact(path=None, device="cpu")
    gpt2.state.update(
        model=AutoModelForSequenceClassification.from_config(
            GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, num_labels=3, pad_token_id=0)
        ),
        tokenizer=tokenizer,
    )
    with pytest.raises(UserError, match="packing: packed needs one of the encoder families") as error:
        approach.load(task, gpt2, settings.model_copy(update={"packing": "packed"}), context)
    assert error.value.where == "bert.packing"
    assert approach.load(task, gpt2, settings.model_copy(update={"packing": "auto"}), context).notes == []


def tiny_decoder(model_type: str, **extra):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(
        model_type,
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        **extra,
    )
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("model_type", DECODERS)
def test_a_packed_batch_of_prompts_gives_the_left_padded_next_token_logits(model_type):
    import random

    import torch

    model = tiny_decoder(model_type)  # grouped-query attention: 4 query heads over 2 key/value heads
    rng = random.Random(0)
    sequences = [[rng.randrange(1, 120) for _ in range(n)] for n in (60, 1, 17, 3, 42, 9)]
    width = max(map(len, sequences))
    input_ids = torch.tensor([[0] * (width - len(ids)) + ids for ids in sequences])
    mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in sequences])
    with torch.inference_mode():
        padded = model(
            input_ids=input_ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), logits_to_keep=1
        ).logits[:, -1]
        with packed_last_logits(model) as forward:
            packed = forward(sequences)
    assert model.config._attn_implementation == "sdpa"
    assert packed.shape == padded.shape == (6, 120)
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-4)


def test_a_decoder_with_a_sliding_window_is_not_packed():
    assert decoder_packs(tiny_decoder("qwen2"))
    windowed = tiny_decoder("qwen2", use_sliding_window=True, sliding_window=8, max_window_layers=0)
    assert set(windowed.config.layer_types) == {"sliding_attention"}
    assert not decoder_packs(windowed)
    with pytest.raises(ValueError, match="cannot run packed"):
        with packed_last_logits(windowed):
            pass


def test_qwen_letter_scoring_is_the_same_packed_and_padded(tiny_qwen):
    import harness_plugins.qwen as qwen

    task = Task("classification", ("World", "Sports", "Business", "Sci/Tech"))
    from harness.approach import RunContext

    settings = qwen.QwenSettings(
        model=str(tiny_qwen), num_train_epochs=0.0, predict_batch_size=4, device="cpu", dtype="float32"
    )  # packed and padded compared to 1e-5: fp32
    artifact = qwen._train(task, [], [], settings, RunContext(seed=0), adapter=False)
    examples = [Example(id=str(i), text=" ".join(["news"] * (1 + 9 * i)) + f" story {i}") for i in range(10)]
    answers = {}
    for packing in ("padded", "packed"):
        way = settings.model_copy(update={"packing": packing})
        serving = qwen._load(task, artifact, way, RunContext())
        assert artifact.state["packed"] is (packing == "packed")
        assert serving.notes == ([] if packing == "padded" else ["batches packed end to end, no padding"])
        answers[packing] = qwen.Qwen().predict(task, artifact, examples, way, RunContext(batch_size=4))
    assert [p.label for p in answers["packed"]] == [p.label for p in answers["padded"]]
    for got, want in zip(answers["packed"], answers["padded"]):
        assert got.scores == pytest.approx(want.scores, abs=1e-5)
    # Scoring by likelihood runs one prompt at a time with its KV cache: nothing to pack.
    qwen._load(task, artifact, settings.model_copy(update={"scoring": "perplexity"}), RunContext())
    assert artifact.state["packed"] is False
