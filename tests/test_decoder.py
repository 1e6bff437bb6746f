"""harness.decoder's prompter for a model without a chat template, on real BPE tokenizers: the answer is
tokenized as the tokenizer splits the whole text ("Answer:" + " C"), and training rows and prediction
prompts agree. (Scoring, generation and the loss run on a tiny Qwen3 in tests/test_qwen.py.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import QWEN_TOKENIZER, SHARED
from harness.answers import letter_choice
from harness.batching import left_padded
from harness.decoder import DEFAULT_PROMPT, Prompter
from harness.decoder_generation import decoding_note, generate, generate_counted, greedy_answers
from harness.decoder_scoring import check_letter_scoring, classify
from harness.types import Example, Prompt, Task

SMOLLM2 = SHARED / "models" / "smollm2-135m-instruct"
SETTINGS = {
    "chat_template": False,
    "think_prefix": "",
    "answer": "letter",
    "answer_loss": "turn",
    "max_length": 512,
    "max_new_tokens": 32,
}
# The user message ends with a space, as prompts written for chat models often do: a plain prompt drops it.
TASK = Task(
    "classification",
    ("World", "Sports", "Business", "Sci/Tech"),
    prompt=Prompt(user="Article: {text}\n{options}\nAnswer: "),
)


@pytest.fixture(scope="module", params=["qwen3", "smollm2"])
def tokenizer(request, shared):
    """Qwen3's tokenizer asked for no template (``chat_template: False``), and SmolLM2's GPT-2-style
    byte-level BPE read from its GGUF file with its template removed: a model that has none."""
    from transformers import AutoTokenizer

    if request.param == "qwen3":
        return AutoTokenizer.from_pretrained(QWEN_TOKENIZER)
    smollm2 = AutoTokenizer.from_pretrained(SMOLLM2, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    smollm2.chat_template = None
    return smollm2


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_the_answer_letter_is_the_tokenizers_own_split_of_the_whole_text(tokenizer):
    prompter = Prompter(TASK, tokenizer, SETTINGS)
    assert not prompter.use_chat
    text = prompter.prompt_text("Stocks rise.")
    assert text == "Article: Stocks rise.\nA. World\nB. Sports\nC. Business\nD. Sci/Tech\nAnswer:"
    assert [tokenizer.decode(a) for a in prompter.answer_ids] == [" A", " B", " C", " D"]
    check_letter_scoring(prompter)  # one distinct token each: letter scoring reads them
    prompt, cut = prompter.prompt_ids("Stocks rise.", reserve=2)
    assert not cut and prompt == ids(tokenizer, text)  # what a user tokenizing the prompt text gets
    assert prompt + prompter.answer_ids[2] == ids(tokenizer, text + " C")
    # The default prompt too, and a label answered by its text.
    default = Prompter(Task("classification", TASK.labels), tokenizer, {**SETTINGS, "answer": "label"})
    assert Prompt(user=DEFAULT_PROMPT).plain().endswith("Answer:")
    whole = default.prompt_text("Stocks rise.") + " Business"
    assert default.prompt_ids("Stocks rise.", reserve=4)[0] + default.answer_ids[2] == ids(tokenizer, whole)


def test_a_training_row_is_the_prediction_prompt_then_the_answer(tokenizer):
    prompter = Prompter(TASK, tokenizer, SETTINGS)
    row, cut = prompter.training_row(Example("1", "Stocks rise.", label="Business"))
    # classify's reserve: the longest answer and the end of turn; the same room training leaves.
    reserve = max(len(a) for a in prompter.answer_ids) + len(prompter.end_ids)
    predicted, _ = prompter.prompt_ids("Stocks rise.", reserve=reserve)
    assert not cut and row["input_ids"] == predicted + prompter.answer_ids[2] + prompter.end_ids
    # The loss is on the answer and the end of turn only: the prompt's last position predicts " C".
    assert row["labels"] == [-100] * len(predicted) + prompter.answer_ids[2] + prompter.end_ids
    assert tokenizer.decode(row["input_ids"]).endswith("Answer: C" + tokenizer.eos_token)
    # Cut to fit, the row still ends in the same answer after the same prompt prediction reads.
    cut_prompter = Prompter(TASK, tokenizer, {**SETTINGS, "max_length": 40})
    row, cut = cut_prompter.training_row(Example("2", "word " * 200, label="Business"))
    predicted, _ = cut_prompter.prompt_ids("word " * 200, reserve=reserve)
    assert cut and row["input_ids"] == predicted + cut_prompter.answer_ids[2] + cut_prompter.end_ids
    assert len(row["input_ids"]) <= 40


def test_an_extraction_answer_follows_the_prompt_as_one_text(tokenizer):
    task = Task("extraction", fields=("name", "phone"), prompt=Prompt(user="{text}\nReturn {options} as JSON:"))
    prompter = Prompter(task, tokenizer, SETTINGS)
    fields = {"name": "Zhang San", "phone": "13800000000"}
    answer = prompter.extraction_answer(fields)
    text = prompter.prompt_text("Zhang San 13800000000")
    assert tokenizer.decode(answer) == " " + json.dumps(fields)
    assert prompter.prompt_ids("Zhang San 13800000000", reserve=32)[0] + answer == ids(
        tokenizer, text + " " + json.dumps(fields)
    )


def test_a_raw_prompt_is_kept_to_the_byte(tokenizer):
    # A raw prompt is the model's own format (SeqGPT's ends "输出: "): not stripped, nothing appended.
    task = Task("classification", ("World", "Sports"), prompt=Prompt(user="unused", raw="输入: {text}\n输出: "))
    prompter = Prompter(task, tokenizer, SETTINGS)
    assert prompter.prompt_text("天气").endswith("输出: ") and prompter.separator == ""
    closed = Prompter(
        Task("classification", ("World", "Sports"), prompt=Prompt(user="unused", raw="{text}\nLabel:")),
        tokenizer,
        SETTINGS,
    )
    assert closed.prompt_text("x") == "x\nLabel:" and tokenizer.decode(closed.answer_ids[1]) == " B"


def test_classify_scores_the_letter_the_prompts_last_position_predicts(tiny_qwen):
    """On a tiny Qwen3 without its template: the letter scores are the last prompt position's
    log-probabilities of " A", " B", ..., the tokens training puts there."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen).eval()
    prompter = Prompter(TASK, tokenizer, SETTINGS)
    examples = [Example("1", "Stocks rise."), Example("2", "Rain all week over the stadium")]
    predictions = classify(model, prompter, "cpu", examples, batch_size=2)
    with torch.inference_mode():
        for example, prediction in zip(examples, predictions):
            prompt, _ = prompter.prompt_ids(example.text, reserve=2)
            logits = model(input_ids=torch.tensor([prompt])).logits[0, -1].float().log_softmax(-1)
            expected = logits[ids(tokenizer, " A") + ids(tokenizer, " B") + ids(tokenizer, " C") + ids(tokenizer, " D")]
            assert list(prediction.scores.values()) == pytest.approx(expected.softmax(-1).tolist(), abs=1e-5)


def rows_ending_at_step_three(model, tokenizer, prompter, texts: list[str]):
    """The texts' prompts left padded, with the prompter's end token set to the one the first row emits on its
    third step under ``generate``, so that rows end at different steps; and each row's answer length."""
    input_ids, mask, _ = left_padded(
        [prompter.prompt_ids(t, reserve=12)[0] for t in texts], tokenizer.pad_token_id, "cpu"
    )
    free = model.generate(
        input_ids=input_ids,
        attention_mask=mask,
        max_new_tokens=12,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=tokenizer.pad_token_id,
    )[:, input_ids.shape[1] :]
    prompter.end_ids = [free[0, 2].item()]
    lengths = [row.index(prompter.end_ids[0]) + 1 if prompter.end_ids[0] in row else 12 for row in free.tolist()]
    assert lengths[0] == 3 and max(lengths) > 3, lengths  # rows end at different steps
    return input_ids, mask, lengths


def test_greedy_answers_are_the_tokens_generate_gives_with_finished_rows_leaving_the_batch(tiny_qwen):
    """harness's decoding loop against the library's ``generate``, on a left-padded batch of different lengths
    where rows end at different steps: the end token is one the first row emits on its third step, so that row
    leaves the batch (and its cache) while the others go on."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen).eval()
    task = Task("extraction", fields=("name",), prompt=Prompt(user="{text}"))
    prompter = Prompter(task, tokenizer, SETTINGS)
    texts = ["Zhang San, 13800000000", "Li Si", "a much longer waybill line, Beijing Haidian, 100 Main Street", "x"]
    with torch.inference_mode():
        input_ids, mask, lengths = rows_ending_at_step_three(model, tokenizer, prompter, texts)
        ours = greedy_answers(model, prompter, input_ids, mask, max_new_tokens=12)
        theirs = generate(model, prompter, input_ids, mask, max_new_tokens=12)
    assert [text for text, _ in ours] == theirs
    assert [count for _, count in ours] == lengths


def test_option_logits_are_the_models_own_computed_in_fp32(tiny_qwen):
    """token_logits: the option tokens' logits from the last hidden state and the head's rows, in fp32; equal to
    the model's own logits in fp32, and in bf16 no longer rounded to bf16's step (which tied close options)."""
    import torch
    from transformers import AutoModelForCausalLM

    from harness.head_logits import token_logits

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen).eval()
    ids = torch.tensor([[5, 17, 300, 42, 7], [9, 9, 1000, 3, 11]])
    tokens = [32, 33, 34, 35]
    with torch.inference_mode():
        full = model(input_ids=ids).logits[:, -1, tokens]
        ours = token_logits(model, tokens, input_ids=ids)[:, -1]
        torch.testing.assert_close(ours, full, atol=1e-5, rtol=1e-5)
        assert ours.dtype == torch.float32
        model = model.to(torch.bfloat16)
        rounded = model(input_ids=ids).logits[:, -1, tokens]
        kept = token_logits(model, tokens, input_ids=ids)[:, -1]
    assert rounded.dtype == torch.bfloat16 and kept.dtype == torch.float32
    assert not torch.equal(kept, rounded.float())  # finer than bf16's rounding of the logits


def test_option_logits_stay_fp32_under_a_callers_autocast(tiny_qwen):
    """Under bf16 autocast the network's matrix products run in bf16, but the head's product over the option
    rows does not: measured on SmolLM2, an autocast head tied close options and cost 6 points of agreement."""
    import torch
    from transformers import AutoModelForCausalLM

    from harness.head_logits import token_logits

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen).eval()
    ids = torch.tensor([[5, 17, 300, 42, 7], [9, 9, 1000, 3, 11]])
    tokens = [32, 33, 34, 35]
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = model.get_decoder()(input_ids=ids).last_hidden_state[:, -1:]
        ours = token_logits(model, tokens, input_ids=ids)
        rows = model.get_output_embeddings().weight[tokens].float()
        in_bf16 = hidden.float() @ rows.T  # what autocast makes of a product: bf16
    exact = hidden.float() @ rows.T
    assert ours.dtype == torch.float32 and in_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(ours, exact, atol=1e-6, rtol=1e-6)


def test_the_module_imports_without_torch():
    code = "import sys, harness.decoder; sys.exit('torch' in sys.modules or 'transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_next_tokens_tell_apart_in_fp32_what_bf16_logits_tie():
    """Two tokens whose logits are 20.02 and 20.05: bf16 rounds both to 20.0 and argmax takes the first; scored
    again in fp32 from the hidden state and the head's rows, the second wins. fp32 logits are argmax as they are."""
    import torch

    from harness.decoder_generation import next_tokens

    head = torch.nn.Linear(2, 3, bias=False)
    head.weight.data = torch.tensor([[20.02, 0.0], [20.05, 0.0], [1.0, 0.0]])
    hidden = torch.tensor([[1.0, 0.0]])
    exact = head(hidden)
    rounded = exact.to(torch.bfloat16)
    assert rounded[0, 0] == rounded[0, 1] and rounded.argmax(-1).item() == 0  # the tie, and argmax's first pick
    assert next_tokens(rounded, hidden, head, candidates=2).item() == 1
    assert next_tokens(exact, hidden, head).item() == 1 == exact.argmax(-1).item()
    assert next_tokens(rounded).item() == 0  # no hidden state: the logits as they are


@pytest.mark.parametrize("penalty", [None, 1.3])
def test_greedy_answers_in_bf16_pick_by_the_heads_fp32_product(tiny_qwen, penalty):
    """A bf16 model's greedy token at every step is the highest fp32 product of the head's input with the head's
    rows over the whole vocabulary (read here by hooks on the same forward passes), not the bf16 logits' argmax;
    with a repetition penalty in the model's generation_config, the highest such product once penalised (each
    token of the row's prompt, padding left out, and answer so far: a positive logit divided by the penalty, a
    negative one multiplied)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.decoder_generation import greedy_answers

    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen).eval().to(torch.bfloat16)
    if penalty is not None:
        model.generation_config.repetition_penalty = penalty
    task = Task("extraction", fields=("name",), prompt=Prompt(user="{text}"))
    prompter = Prompter(task, tokenizer, SETTINGS)
    prompter.end_ids = [-1]  # never ends: every row runs all steps
    ids, mask, _ = left_padded(
        [prompter.prompt_ids(t, reserve=8)[0] for t in ["Zhang San", "Li Si, Beijing", "x"]],
        tokenizer.pad_token_id,
        "cpu",
    )
    head = model.get_output_embeddings()
    with torch.no_grad():
        # Logits of a trained model's size (tens, where bf16's step is 1/8), and the vocabulary in pairs of rows
        # that differ in one coordinate by 1/32: each pair's products differ by less than the step, so bf16
        # logits tie within a pair and argmax takes the even token, where the fp32 product picks either.
        weight = head.weight.float()
        weight *= 30 / (model.get_decoder()(input_ids=ids).last_hidden_state.float() @ weight.T).abs().max()
        pairs = weight.shape[0] // 2 * 2
        weight[1:pairs:2] = weight[0:pairs:2]
        weight[0:pairs:2, 0], weight[1:pairs:2, 0] = 0.0, 1 / 32
        head.weight.copy_(weight)
    hidden, fed = [], []
    hooks = [
        head.register_forward_hook(lambda m, args, out: hidden.append(args[0][:, -1].float())),
        model.register_forward_pre_hook(lambda m, args, kwargs: fed.append(kwargs["input_ids"]), with_kwargs=True),
    ]
    with torch.inference_mode():
        answers = greedy_answers(model, prompter, ids, mask, max_new_tokens=24)
        for hook in hooks:
            hook.remove()
        exact = torch.stack([h @ head.weight.float().T for h in hidden[:-1]])  # (steps, rows, vocabulary)
    assert [count for _, count in answers] == [24] * 3 and len(hidden) == len(fed) == 24
    chosen = torch.stack([tokens[:, 0] for tokens in fed[1:]])  # each step's token is the next forward's input
    penalised = exact.clone()
    if penalty is not None:
        for step in range(len(chosen)):
            for row in range(len(ids)):
                seen = torch.cat([ids[row][mask[row] == 1], chosen[:step, row]]).unique()
                scores = penalised[step, row, seen]
                penalised[step, row, seen] = torch.where(scores < 0, scores * penalty, scores / penalty)
        assert not torch.equal(penalised.argmax(-1), exact.argmax(-1))  # the penalty moved some answers
    assert torch.equal(chosen, penalised.argmax(-1))
    assert (chosen % 2 == 1).any()  # some steps chose the odd token of a pair, which bf16's argmax never takes


@pytest.fixture(scope="module")
def repeating_qwen(shared):
    """A 2-layer, 64-wide Qwen3 with random weights drawn wider than the tiny one's (std 0.1): greedy decoding
    repeats tokens, so a generation_config that forbids or penalises repeats changes its answers."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

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
        initializer_range=0.1,
    )
    torch.manual_seed(0)
    return Qwen3ForCausalLM(config).eval(), tokenizer


@pytest.mark.parametrize(
    "setting",
    [{"repetition_penalty": 1.3}, {"no_repeat_ngram_size": 2}],
    ids=["repetition_penalty", "no_repeat_ngram_size"],
)
def test_greedy_answers_apply_the_models_generation_config_as_generate_does(repeating_qwen, setting):
    """Six left-padded rows of different lengths, one ending on its third step and leaving the batch: with the
    model's generation_config setting a repetition penalty or no-repeat n-grams, harness's loop gives
    ``generate(do_sample=False)``'s tokens, and plain greedy (the setting removed) answers otherwise."""
    import torch

    model, tokenizer = repeating_qwen
    prompter = Prompter(Task("extraction", fields=("name",), prompt=Prompt(user="{text}")), tokenizer, SETTINGS)
    texts = [
        "Zhang San, 13800000000",
        "Li Si",
        "a much longer waybill line, Beijing Haidian, 100 Main Street",
        "x",
        "Wang Wu 13900000000 Shanghai",
        "Room 5, Building 2",
    ]
    plain = {name: getattr(model.generation_config, name) for name in setting}
    try:
        with torch.inference_mode():
            model.generation_config.update(**setting)
            input_ids, mask, lengths = rows_ending_at_step_three(model, tokenizer, prompter, texts)
            ours = greedy_answers(model, prompter, input_ids, mask, max_new_tokens=12)
            theirs = generate_counted(model, prompter, input_ids, mask, max_new_tokens=12)
            note = decoding_note(model)
            model.generation_config.update(**plain)
            unprocessed = greedy_answers(model, prompter, input_ids, mask, max_new_tokens=12)
    finally:
        model.generation_config.update(**plain)
    assert ours == theirs
    assert [count for _, count in ours] == lengths
    assert sum(a != b for a, b in zip(ours, unprocessed)) >= 3  # the setting changes most answers
    name, value = next(iter(setting.items()))
    assert note == f"greedy decoding applies the model's generation_config: {name}={value}"
    assert decoding_note(model) == "plain greedy decoding (the model's generation_config sets no logits processors)"


THUCNEWS = Task("classification", ("财经", "房产", "股票", "教育", "科技", "社会", "时政", "体育", "游戏", "娱乐"))
AG_NEWS = Task(
    "classification",
    ("World", "Sports", "Business", "Sci/Tech"),
    option_labels=("World", "Sports", "Business", "Science/Technology"),
)


def test_a_letter_inside_a_sentence_is_no_answer_on_thucnews():
    """The 10-label THUCNews spec, where I and H are options: "I think it is 体育 (H)" names no option exactly
    and is not a letter answer (the letter alone, or before its option's text), whatever its top tokens say."""
    answer = "I think it is 体育 (H)"
    assert letter_choice(THUCNEWS, None, answer) == (None, None)
    assert letter_choice(THUCNEWS, {"I": -0.1, " think": -1.0, "H": -3.0}, answer) == (None, None)
    assert letter_choice(THUCNEWS, None, "体育") == ("体育", None)
    assert letter_choice(THUCNEWS, None, "(H).") == ("体育", None)
    assert letter_choice(THUCNEWS, {"I": -0.1}, "I")[0] == "游戏"  # the letter alone: option I of ten
    assert letter_choice(AG_NEWS, {"I": -0.1}, "I") == (None, None)  # of four, no option


@pytest.mark.parametrize(
    "text, top, label",
    [
        ("I think Sports", None, None),
        ("I think Sports", {"I": -0.05, " think": -3.0, "A": -6.0}, None),
        ("a", None, None),  # lowercase: a word, not option A
        ("a", {"a": -0.1, "A": -4.0}, None),
        ("Sports", None, "Sports"),
        ("sports.", None, "Sports"),
        ("Science/Technology", None, "Sci/Tech"),  # the option's text names its label
        ("Sports news", None, None),
        ("(C)", None, "Business"),
        ("(C)", {"(": -0.01, "C": -6.0, "A": -7.0}, "Business"),  # the first token "(" is no letter: no scores
        ("B.", None, "Sports"),
        ("B:", None, "Sports"),
        ("B)", None, "Sports"),
        ("B. Sports", None, "Sports"),
        ("B. World", None, None),  # a letter and another option's text
        ("E", None, None),  # out of range on four options
        ("Business", None, "Business"),  # a word that starts with a capital letter is no letter
    ],
)
def test_an_answer_is_a_letter_as_a_model_writes_one_or_an_option_named_exactly(text, top, label):
    assert letter_choice(AG_NEWS, top, text) == (label, None)


def test_log_probabilities_score_only_an_answer_whose_first_token_is_its_letter():
    import math

    # The model answered "Sports": its first token's top list holds other words and, far down, the letter A.
    # The text names Sports; the letter tokens that happen to be there don't decide (they used to: World, 1.0).
    assert letter_choice(AG_NEWS, {"Sports": -0.01, "World": -5.0, "A": -7.0}, "Sports") == ("Sports", None)
    assert letter_choice(AG_NEWS, {"A": -0.01, "Sports": -5.0}, "Sports") == ("Sports", None)
    # The model answered "B": the letters' probabilities, renormalised over the letters in the list.
    label, scores = letter_choice(
        AG_NEWS,
        {"B": math.log(0.6), "A": math.log(0.2), " C": math.log(0.1), " B": math.log(0.05), "The": math.log(0.05)},
        "B",
    )
    assert label == "Sports"
    assert scores == pytest.approx({"World": 2 / 9, "Sports": 6 / 9, "Business": 1 / 9, "Sci/Tech": 0.0})
    assert letter_choice(AG_NEWS, {" B": -0.1, "A": -2.0}, "B. Sports")[1]["Sports"] > 0.8
    # No text, the first token's log-probabilities alone (vLLM's request constrained to the option tokens).
    label, scores = letter_choice(AG_NEWS, {"A": math.log(0.3), "D": math.log(0.7)}, "")
    assert label == "Sci/Tech" and scores == pytest.approx(
        {"World": 0.3, "Sports": 0.0, "Business": 0.0, "Sci/Tech": 0.7}
    )
    assert letter_choice(AG_NEWS, {"a": -0.1, "The": -1.0}, "") == (None, None)
