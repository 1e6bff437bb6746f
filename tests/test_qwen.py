"""The qwen plugin and harness.decoder, which it calls, on a tiny Qwen3 with the real Qwen3 tokenizer: prompts,
scoring, truncation, zero-shot, extraction by generation."""

from __future__ import annotations

from pathlib import Path

import pytest

import harness_plugins.qwen as qwen
from harness import answers, decoder
from harness import decoder_scoring as scoring
from harness.approach import RunContext
from harness.plugins import load_plugins
from harness.progress import SILENT
from harness.spec import load_spec
from harness.testing import TINY_TASK, check_plugin, tiny_dataset
from harness.types import Example, Prompt, Task
from harness.units import without_answers

# A 2-layer, 64-wide model learns the letter in 6 epochs only when the loss is on the answer alone: with
# the whole turn (the default, the seed's recipe) its few weights go first to the thinking block it shares
# with every example. Real models learn both; tests/test_training_numerics.py checks the turn's labels.
# fp32 throughout: these tests compare scorings to 1e-4; bf16 (the default on a CPU with bf16 units) is
# checked on its own below.
FAST = {
    "num_train_epochs": 6.0,
    "learning_rate": 3e-3,
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "eval_steps": 0.25,
    "answer_loss": "letter",
    "mixed_precision": "no",
    "dtype": "float32",
}


def typed(settings: dict) -> qwen.QwenSettings:
    """A settings dict as the approach's typed settings (the core's own keys left out)."""
    return qwen.QwenSettings.model_validate({k: v for k, v in settings.items() if k in qwen.QwenSettings.model_fields})


def load(task, artifact, settings: dict):
    return qwen._load(task, artifact, typed(settings), RunContext())


def settings_for(model: Path, **extra) -> dict:
    return {**qwen.DEFAULTS, "model": str(model), **FAST, **extra, "random_weights": False, "seed": 42}


def test_tiny_qwen_passes_the_conformance_kit(tmp_path, tiny_qwen):
    # Inline: the kit's process launcher is exercised by the docs' plugin (tests/test_plugins.py).
    record = check_plugin(
        qwen, name="qwen", tmp_path=tmp_path, settings={"model": str(tiny_qwen), **FAST}, launcher="inline"
    )
    assert record.metrics["accuracy"] >= 0.7, record.train_log
    losses = [e["loss"] for e in record.train_log if "loss" in e]
    assert losses[-1] < losses[0] / 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_qwen):
    plugins = load_plugins(entry_points=False)
    plugins.register(qwen, "qwen")
    train, test = tiny_dataset()
    settings = settings_for(tiny_qwen)
    artifact = plugins.configured(
        "qwen", settings, workdir=tmp_path_factory.mktemp("qwen-work"), progress=SILENT
    ).train(TINY_TASK, train, train[-6:])
    return plugins, artifact, settings, without_answers(test), test


def test_letter_and_likelihood_scoring_agree(trained):
    plugins, artifact, settings, test, gold = trained
    letter = plugins.configured("qwen", settings, progress=SILENT).predict(TINY_TASK, artifact, test)
    likelihood = plugins.configured("qwen", {**settings, "scoring": "likelihood"}, progress=SILENT).predict(
        TINY_TASK, artifact, test
    )
    # Likelihood also scores the end-of-turn token after the letter; training made that near certain.
    assert [p.label for p in letter] == [p.label for p in likelihood]
    for a, b in zip(letter, likelihood):
        for label in TINY_TASK.labels:
            assert a.scores[label] == pytest.approx(b.scores[label], abs=0.05)
    assert sum(p.label == ex.label for p, ex in zip(letter, gold)) / len(gold) >= 0.5  # chance: 1/3


def test_multi_token_answers_need_likelihood_scoring(trained, tiny_qwen, tmp_path):
    plugins, artifact, settings, test, _ = trained
    by_label = {**settings, "answer": "label", "scoring": "likelihood"}
    prompter = decoder.Prompter(TINY_TASK, artifact.state["tokenizer"], by_label)
    tokenizer = artifact.state["tokenizer"]
    assert [tokenizer.decode(ids) for ids in prompter.answer_ids] == ["sport", "weather", "food"]
    task = Task(
        "classification",
        ("World", "Sports", "Business", "Sci/Tech"),
        option_labels=("World", "Sports", "Business", "Science/Technology"),
    )
    prompter = decoder.Prompter(task, artifact.state["tokenizer"], by_label)
    assert len(prompter.answer_ids[3]) > 1  # "Science/Technology" is several tokens
    with pytest.raises(ValueError, match="use scoring: perplexity or likelihood"):
        scoring.check_letter_scoring(prompter)
    assert scoring.selection_scoring(prompter) == "perplexity"  # checkpoints are still selected on these answers
    # Scoring several-token answers through the shared KV cache gives a finite score per option.
    load(TINY_TASK, artifact, settings)
    scores = scoring.likelihood_scores(
        artifact.state["serving_model"], prompter, prompter.prompt_ids("Rain again", 8)[0], "cpu"
    )
    assert len(scores) == 4 and all(s < 0 for s in scores)


def test_prompt_uses_the_chat_template_without_thinking_and_truncates_only_the_article(tiny_qwen):
    from transformers import AutoTokenizer

    spec = load_spec("agnews")
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen)
    prompter = decoder.Prompter(spec.to_task(), tokenizer, {**qwen.DEFAULTS, "max_length": 120})
    short, cut = prompter.prompt_ids("Stocks rise.", reserve=2)
    text = tokenizer.decode(short)
    assert not cut
    assert text.startswith("<|im_start|>user\nPlease read the following news article")
    assert "D. Science/Technology\n\nAnswer:/no_think<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n" in text
    assert tokenizer.decode(prompter.answer_ids[2]) == "C"
    long, cut = prompter.prompt_ids("word " * 500, reserve=2)
    assert cut and len(long) <= 118
    assert tokenizer.decode(long).endswith(
        "D. Science/Technology\n\nAnswer:/no_think<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )


def test_zero_shot_trains_nothing_and_still_predicts(tiny_qwen, tmp_path):
    plugins = load_plugins(entry_points=False)
    plugins.register(qwen, "qwen")
    train, test = tiny_dataset(n_train=6, n_test=5)
    settings = settings_for(tiny_qwen, num_train_epochs=0.0)
    artifact = plugins.configured("qwen", settings, workdir=tmp_path, progress=SILENT).train(TINY_TASK, train, [])
    assert artifact.path is None and artifact.train_samples == 0
    predictions = plugins.configured("qwen", settings, progress=SILENT).predict(
        TINY_TASK, artifact, without_answers(test)
    )
    assert len(predictions) == 5 and all(p.label in TINY_TASK.labels for p in predictions)


def test_extraction_generates_and_an_answer_that_is_not_json_is_wrong_not_a_crash(tiny_qwen, tmp_path):
    plugins = load_plugins(entry_points=False)
    plugins.register(qwen, "qwen")
    task = Task(
        "extraction", fields=("name", "phone"), prompt=Prompt(user="Extract name and phone as JSON: {text}{options}")
    )
    settings = settings_for(tiny_qwen, num_train_epochs=0.0, max_new_tokens=6)
    artifact = plugins.configured("qwen", settings, workdir=tmp_path, progress=SILENT).train(task, [], [])
    examples = [Example("1", "13800000000 Zhang San"), Example("2", "Li Si 13900000000, Beijing")]
    predictions = plugins.configured("qwen", settings, progress=SILENT).predict(task, artifact, examples)
    assert len(predictions) == 2 and all(isinstance(p.raw, str) for p in predictions)
    assert all(p.fields is None or isinstance(p.fields, dict) for p in predictions)
    # bench's raw reference: chat template, tokenizer and generate by hand give predict's answers.
    forward = plugins.configured("qwen", settings).reference(task, artifact)
    assert [forward([ex.text])[0].strip() for ex in examples] == [p.raw for p in predictions]
    plain = "plain greedy decoding (the model's generation_config sets no logits processors)"
    assert plain in load(task, artifact, settings).notes
    # A model whose generation_config penalises repeats (as Qwen2.5-Instruct's does) decodes by it, as generate does.
    artifact.state["serving_model"].generation_config.repetition_penalty = 1.3
    penalty = "greedy decoding applies the model's generation_config: repetition_penalty=1.3"
    assert penalty in load(task, artifact, settings).notes and plain not in load(task, artifact, settings).notes
    penalised = plugins.configured("qwen", settings, progress=SILENT).predict(task, artifact, examples)
    assert (
        [forward([ex.text])[0].strip() for ex in examples] == [p.raw for p in penalised] != [p.raw for p in predictions]
    )
    assert answers.parse_fields('{"name": "Zhang San", "phone": 13800000000}') == {
        "name": "Zhang San",
        "phone": "13800000000",
    }
    assert answers.parse_fields("name: Zhang San") is None and answers.parse_fields("[1, 2]") is None


def test_likelihood_with_a_shared_kv_cache_equals_scoring_each_full_sequence(trained):
    import torch

    _, artifact, settings, _, _ = trained
    task = Task(
        "classification",
        ("World", "Sports", "Business", "Sci/Tech"),
        option_labels=("World", "Sports", "Business", "Science/Technology"),
    )
    prompter = decoder.Prompter(task, artifact.state["tokenizer"], {**settings, "answer": "label"})
    load(TINY_TASK, artifact, settings)
    model = artifact.state["serving_model"]
    prompt = prompter.prompt_ids("Rain again over the stadium", 8)[0]
    cached = scoring.likelihood_scores(model, prompter, prompt, "cpu")
    with torch.inference_mode():
        for answer, score in zip(prompter.answer_ids, cached):
            answer = answer + prompter.end_ids  # scored as trained: the end of turn too
            ids = torch.tensor([prompt + answer])
            log_probs = model(input_ids=ids).logits[0].float().log_softmax(-1)
            full = sum(log_probs[len(prompt) - 1 + t, token].item() for t, token in enumerate(answer))
            assert score == pytest.approx(full, abs=1e-4)
    # Perplexity scoring, the seed's: the same sums, each divided by its answer's length in tokens.
    per_token = scoring.likelihood_scores(model, prompter, prompt, "cpu", per_token=True)
    lengths = [len(ids) + len(prompter.end_ids) for ids in prompter.answer_ids]
    assert len(set(lengths)) > 1
    assert per_token == pytest.approx([s / n for s, n in zip(cached, lengths)], abs=1e-6)


def test_random_weights_build_the_shipped_qwen3_0_6b_architecture(tiny_qwen):
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen)
    with torch.device("meta"):  # shapes only: no 2.4 GB of fp32 weights in a unit test
        model = qwen._base_model(qwen.QwenSettings(), tokenizer, random_weights=True)
    assert model.config.num_hidden_layers == 28 and model.config.vocab_size == 151936
    # Qwen3-0.6B: 596M parameters with tied input and output embeddings.
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(596_049_920, rel=1e-3)


def test_answer_loss_under_gradient_accumulation_equals_one_large_batch(tiny_qwen):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen)
    ids = torch.randint(0, 1000, (4, 12))
    labels = torch.full_like(ids, -100)
    labels[0, 8:] = ids[0, 8:]  # answers of different lengths: a mean per micro-batch would weigh them wrongly
    labels[1, 11:] = ids[1, 11:]
    labels[2, 6:] = ids[2, 6:]
    labels[3, 10:] = ids[3, 10:]
    mask = torch.ones_like(ids)
    whole = scoring.answer_loss(model, {"input_ids": ids, "attention_mask": mask, "labels": labels})
    items = int((labels[:, 1:] != -100).sum())
    halves = sum(
        scoring.answer_loss(model, {"input_ids": ids[s], "attention_mask": mask[s], "labels": labels[s]}, items)
        for s in (slice(0, 2), slice(2, 4))
    )
    assert halves.item() == pytest.approx(whole.item(), rel=1e-5)


def test_answer_loss_in_chunks_equals_the_loss_on_the_whole_logits(tiny_qwen):
    """The head's loss runs a few answer tokens at a time, its logits computed again in the backward pass
    (issue 36): the loss and every gradient are the ones of the whole vocabulary logits in one piece."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen)
    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (3, 120))
    labels = ids.clone()
    labels[:, :30] = -100  # 3 x 89 answer tokens to predict: more than one chunk of the 151k vocabulary
    mask = torch.ones_like(ids)
    assert 3 * 89 > scoring.HEAD_CHUNK_ELEMENTS // model.lm_head.weight.shape[0]

    def loss_and_grads(loss_of):
        model.zero_grad(set_to_none=True)
        loss = loss_of()
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    def whole():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))

    chunked, chunked_grads = loss_and_grads(
        lambda: scoring.answer_loss(model, {"input_ids": ids, "attention_mask": mask, "labels": labels})
    )
    reference, reference_grads = loss_and_grads(whole)
    assert chunked == pytest.approx(reference, rel=1e-6)
    assert chunked_grads.keys() == reference_grads.keys()
    for name, grad in reference_grads.items():
        assert torch.allclose(chunked_grads[name], grad, rtol=1e-4, atol=1e-7), name


def test_extraction_trains_with_validation_and_selects_on_exact_match(tiny_qwen, tmp_path):
    plugins = load_plugins(entry_points=False)
    plugins.register(qwen, "qwen")
    task = Task(
        "extraction", fields=("name", "phone"), prompt=Prompt(user="Extract name and phone as JSON: {text}{options}")
    )
    rows = [
        Example(str(i), f"{n} 1380000{i:04d}", fields={"name": n, "phone": f"1380000{i:04d}"})
        for i, n in enumerate(["Zhang San", "Li Si", "Wang Wu", "Zhao Liu"] * 3)
    ]
    settings = settings_for(tiny_qwen, num_train_epochs=2.0, max_new_tokens=12, eval_steps=0.5)
    artifact = plugins.configured("qwen", settings, workdir=tmp_path, progress=SILENT).train(task, rows[:10], rows[10:])
    assert artifact.info["best_checkpoint"].startswith("checkpoint-")
    assert 0.0 <= artifact.info["best_metric"] <= 1.0


# SmolLM2's chat template, in short: ChatML with no thinking.
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_only_a_template_that_knows_thinking_gets_a_think_block(tiny_qwen):
    from transformers import AutoTokenizer

    qwen3 = AutoTokenizer.from_pretrained(tiny_qwen)
    chatml = AutoTokenizer.from_pretrained(tiny_qwen)
    chatml.chat_template = CHATML
    settings = {**qwen.DEFAULTS, "max_length": 120}

    def prompt(tokenizer, **extra):
        prompter = decoder.Prompter(TINY_TASK, tokenizer, {**settings, **extra})
        return tokenizer.decode(prompter.prompt_ids("Stocks rise.", reserve=2)[0]), prompter

    text, prompter = prompt(qwen3)
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n") and prompter.assistant_tokens > 0
    text, prompter = prompt(chatml)
    assert text.endswith("<|im_start|>assistant\n") and "<think>" not in text and prompter.assistant_tokens == 0
    text, _ = prompt(chatml, think_prefix="Let me answer. ")  # a prefix of one's own is still written
    assert text.endswith("<|im_start|>assistant\nLet me answer. ")
    text, _ = prompt(qwen3, chat_template=False)  # no template: the plain prompt
    assert "<|im_start|>" not in text and "<think>" not in text


@pytest.mark.slow
def test_a_gguf_file_names_the_model(shared, tmp_path):
    """SmolLM2-135M-Instruct as one GGUF file: read (dequantized) through `model:`, prompted with its own
    ChatML template and nothing of Qwen3's, answering zero-shot, and saved and read back as an ordinary model."""
    import torch

    gguf = shared / "models" / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    plugins = load_plugins(entry_points=False)
    plugins.register(qwen, "qwen")
    settings = {**qwen.DEFAULTS, "model": str(gguf), "num_train_epochs": 0.0, "random_weights": False, "seed": 0}
    artifact = plugins.configured("qwen", settings, workdir=tmp_path, progress=SILENT).train(TINY_TASK, [], [])
    model, tokenizer = artifact.state["model"], artifact.state["tokenizer"]
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert getattr(model, "hf_quantizer", None) is None and not hasattr(model.config, "quantization_config")
    from transformers.trainer_utils import validate_quantization_for_training

    validate_quantization_for_training(model)  # what the Trainer checks before it fine-tunes: it may
    prompt = tokenizer.decode(
        decoder.Prompter(TINY_TASK, tokenizer, settings).prompt_ids("Rain all week.", reserve=2)[0]
    )
    assert (
        prompt.startswith("<|im_start|>system\n")
        and prompt.endswith("<|im_start|>assistant\n")
        and "<think>" not in prompt
    )
    _, test = tiny_dataset(n_test=6)
    predictions = plugins.configured("qwen", settings, progress=SILENT).predict(
        TINY_TASK, artifact, without_answers(test)
    )
    assert all(p.label in TINY_TASK.labels and abs(sum(p.scores.values()) - 1) < 1e-4 for p in predictions)
    model.save_pretrained(tmp_path / "saved")
    from transformers import AutoModelForCausalLM

    again = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    ids = torch.tensor([tokenizer("Rain all week.")["input_ids"]])
    assert torch.allclose(model(ids).logits, again(ids).logits, atol=1e-5)


def test_on_a_cpu_with_bf16_units_the_default_serves_in_bf16_and_agrees_with_fp32(trained):
    from harness.models import cpu_has_bf16

    plugins, artifact, settings, test, _ = trained
    auto = {**settings, "dtype": "auto"}
    answers = {}
    for dtype, given in (("float32", settings), ("auto", auto)):
        served = qwen.Artifact(path=artifact.path, info=artifact.info)
        serving = plugins.configured("qwen", given, cache_dir=None).load(TINY_TASK, served)
        answers[dtype] = [
            p.label for p in plugins.configured("qwen", given, progress=SILENT).predict(TINY_TASK, served, test)
        ]
        if dtype == "auto":
            assert serving.dtype == ("bfloat16" if cpu_has_bf16() else "float32")
    agree = sum(a == b for a, b in zip(answers["float32"], answers["auto"])) / len(test)
    assert agree >= 0.9, agree
