"""Training numerics: gradient accumulation gives the step one large batch gives, mixed precision is
really on, and qwen's loss covers what its setting says. Tiny models from real configs, the real Trainer."""

from __future__ import annotations

from pathlib import Path

import pytest

import harness_plugins.bert as bert
import harness_plugins.qwen as qwen
from conftest import MINILM, QWEN_TOKENIZER
from harness.plugins import load_plugins
from harness.progress import RunProgress
from harness.types import Example, Prompt, Task

# SGD, not Adam: Adam's first step is nearly the same for a gradient and twice that gradient, which would
# hide a loss scaled twice. No clipping, for the same reason; one optimiser step over four examples.
ONE_SGD_STEP = {
    "optim": "sgd",
    "learning_rate": 0.5,
    "max_grad_norm": 1e9,
    "num_train_epochs": 1.0,
    "train_sampler": "sequential",
    "warmup_steps": 0.0,
    "weight_decay": 0.0,
    "logging_steps": 1.0,
    "eval_steps": 1.0,
    "device": "cpu",
    "mixed_precision": "no",
}
EXAMPLES = [
    Example("1", "rain and wind all day", label="a"),
    Example("2", "the match ended in a draw", label="b"),
    Example("3", "a long sunny afternoon with a light breeze by the sea", label="a"),
    Example("4", "goal", label="b"),
]


def train_once(module, name: str, task: Task, settings: dict, workdir: Path, **micro) -> dict:
    import torch

    plugins = load_plugins(entry_points=False)
    plugins.register(module, name)
    torch.manual_seed(0)  # the same initial head for both runs
    artifact = plugins.configured(
        name, {**settings, **ONE_SGD_STEP, **micro}, workdir=workdir, progress=RunProgress()
    ).train(task, EXAMPLES, [])
    return {k: v.detach().clone() for k, v in artifact.state["model"].state_dict().items()}


def assert_same_step(one: dict, accumulated: dict, initial: dict) -> None:
    import torch

    moved = max((one[k] - initial[k]).abs().max().item() for k in one if one[k].is_floating_point())
    assert moved > 1e-3  # the step is real
    for key in one:
        assert torch.allclose(one[key], accumulated[key], atol=1e-5, rtol=1e-4), key


@pytest.fixture(scope="module")
def no_dropout_bert(tmp_path_factory, shared) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("bert-no-dropout")
    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_bert_batch_4_equals_batch_2_with_2_accumulation_steps(no_dropout_bert, tmp_path):
    task = Task("classification", ("a", "b"))
    settings = {**bert.DEFAULTS, "model": str(no_dropout_bert), "random_weights": False, "seed": 42}
    initial = train_once(bert, "bert", task, settings, tmp_path / "0", num_train_epochs=0.0)
    one = train_once(
        bert, "bert", task, settings, tmp_path / "1", per_device_train_batch_size=4, gradient_accumulation_steps=1
    )
    two = train_once(
        bert, "bert", task, settings, tmp_path / "2", per_device_train_batch_size=2, gradient_accumulation_steps=2
    )
    assert_same_step(one, two, initial)


def test_qwen_batch_4_equals_batch_2_with_2_accumulation_steps(tiny_qwen, tmp_path):
    # Answers of different lengths, so a mean per micro-batch would weigh tokens unequally.
    task = Task("classification", ("a", "b"), option_labels=("yes", "a much longer answer than that"))
    settings = {
        **qwen.DEFAULTS,
        "model": str(tiny_qwen),
        "seed": 42,
        "answer": "label",
        "scoring": "perplexity",
        "random_weights": False,
    }
    initial = train_once(qwen, "qwen", task, settings, tmp_path / "0", num_train_epochs=0.0)
    one = train_once(
        qwen, "qwen", task, settings, tmp_path / "1", per_device_train_batch_size=4, gradient_accumulation_steps=1
    )
    two = train_once(
        qwen, "qwen", task, settings, tmp_path / "2", per_device_train_batch_size=2, gradient_accumulation_steps=2
    )
    assert_same_step(one, two, initial)


@pytest.mark.parametrize(("mixed_precision", "dtype"), [("bf16", "bfloat16"), ("no", "float32")])
def test_qwen_trains_its_head_under_the_mixed_precision_it_records(tiny_qwen, tmp_path, mixed_precision, dtype):
    """The head's matmul output dtype during training: bf16 autocast on CPU stands in for CUDA's."""
    from transformers import AutoModelForCausalLM

    seen = set()
    original = AutoModelForCausalLM.from_pretrained

    def spied(*args, **kwargs):
        model = original(*args, **kwargs)
        model.lm_head.register_forward_hook(
            lambda module, inputs, output: seen.add(str(output.dtype)) if module.training else None
        )
        return model

    plugins = load_plugins(entry_points=False)
    plugins.register(qwen, "qwen")
    settings = {
        **qwen.DEFAULTS,
        "model": str(tiny_qwen),
        "seed": 42,
        "random_weights": False,
        **ONE_SGD_STEP,
        "mixed_precision": mixed_precision,
        "answer": "label",
        "scoring": "perplexity",
    }
    AutoModelForCausalLM.from_pretrained = spied
    try:
        artifact = plugins.configured("qwen", settings, workdir=tmp_path, progress=RunProgress()).train(
            Task("classification", ("a", "b")), EXAMPLES, []
        )
    finally:
        AutoModelForCausalLM.from_pretrained = original
    assert seen == {f"torch.{dtype}"}
    assert artifact.info["mixed_precision"] == mixed_precision and artifact.dtype == "float32"  # fp32 master weights


@pytest.fixture(scope="module")
def qwen3_tokenizer(shared):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(QWEN_TOKENIZER)


@pytest.mark.parametrize(
    ("answer_loss", "trained_on"),
    [
        ("turn", "<think>\n\n</think>\n\nC<|im_end|>"),  # the seed's recipe: the whole assistant turn
        ("letter", "C<|im_end|>"),
    ],
)
def test_qwen_loss_covers_the_turn_or_the_answer(qwen3_tokenizer, answer_loss, trained_on):
    task = Task(
        "classification",
        ("World", "Sports", "Business", "Sci/Tech"),
        prompt=Prompt(user="Article: {text}\n{options}\nAnswer:", system="You sort news into {options}."),
    )
    prompter = qwen.Prompter(task, qwen3_tokenizer, {**qwen.DEFAULTS, "answer_loss": answer_loss})
    row, cut = prompter.training_row(Example("1", "Stocks rise.", label="Business"))
    assert not cut
    assert qwen3_tokenizer.decode([t for t in row["labels"] if t != -100]) == trained_on
    assert qwen3_tokenizer.decode(row["input_ids"]) == (
        "<|im_start|>system\nYou sort news into A. World\nB. Sports\nC. Business\nD. Sci/Tech.<|im_end|>\n"
        "<|im_start|>user\nArticle: Stocks rise.\nA. World\nB. Sports\nC. Business\nD. Sci/Tech\nAnswer:<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\nC<|im_end|>"
    )


def test_a_model_without_a_chat_template_gets_the_raw_prompt(qwen3_tokenizer):
    task = Task(
        "classification",
        ("World", "Sports"),
        prompt=Prompt(user="unused {text}", raw="输入: {text}\n分类: {options}\n输出: "),
    )
    prompter = qwen.Prompter(task, qwen3_tokenizer, {**qwen.DEFAULTS, "chat_template": False})
    assert (
        qwen3_tokenizer.decode(prompter.prompt_ids("天气", reserve=2)[0])
        == "输入: 天气\n分类: A. World\nB. Sports\n输出: "
    )
    assert prompter.assistant_tokens == 0
