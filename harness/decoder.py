"""A decoder LLM asked a multiple-choice or extraction prompt: the prompt, the answer's loss, scoring and generation.

Every decoder approach builds on this module rather than on a copy of it: ``qwen`` (full fine-tuning)
today, and the planned ``qwen-lora`` (LoRA on the same decoder), ``seqgpt`` (a zero-shot decoder with a raw
prompt) and a vLLM engine serving their trained models. What each piece is for:

- :class:`Prompter` turns a task and a tokenizer into token ids, the same for training and prediction: the
  prompt through the model's chat template with thinking off (Qwen3 writes its empty ``<think></think>``
  block, SmolLM2's ChatML nothing extra), or the plain prompt for a model without a template; the article is
  cut, never the question, to fit ``max_length``; each option's answer ids (a letter, ``"C"``, or the label's
  text), tokenized as the tokenizer splits the prompt and answer together; and a training row whose labels
  cover the answer (``answer_loss: letter``) or the whole assistant turn (``turn``). Every approach uses it; an
  engine that takes text rather than ids sends :meth:`Prompter.prompt_text`.
- :func:`answer_loss` is the Trainer's loss for fine-tuning approaches (qwen, qwen-lora): cross-entropy on
  the answer tokens only, with vocabulary logits computed only where an answer token is predicted.
- :func:`classify` answers a classification batch by batch without generating. ``scoring: letter`` reads the
  option letters' logits at the last prompt position (:func:`letter_scores`, one forward per batch, left
  padded by :func:`harness.batching.left_padded` or packed end to end by :mod:`harness.packing`); ``perplexity`` and
  ``likelihood`` score each option's whole answer, the mean or the sum of its log-probabilities, on the
  prompt's shared KV cache (:func:`likelihood_scores`). :func:`check_letter_scoring` refuses letter scoring
  when the answers are not one distinct token each, and :func:`selection_scoring` is how checkpoints are
  selected during training.
- :func:`extract` answers an extraction task by greedy generation (:func:`greedy_answers`, the same tokens
  as :func:`generate`, the model's generation_config applied alike) of a JSON object, which
  :func:`parse_fields` reads; an answer that is not a JSON object is a wrong answer, not a crash.
- :func:`letter_choice` reads a server's classification answer: an option letter as a model writes one, or
  an option named exactly; anything else is an invalid answer.

Settings are passed explicitly; the :class:`Prompter` reads its own from the approach's settings (listed
in its docstring). Nothing here imports torch or transformers at module level.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from typing import Any

from harness.batching import left_padded, padded
from harness.head_logits import fp32_head, plain_head, token_logits
from harness.types import Example, Prediction, Prompt, Task

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
DEFAULT_PROMPT = "{text}\n\nOptions:\n{options}\n\nAnswer:"
SCORINGS = ("letter", "perplexity", "likelihood")  # the choices of a ``scoring`` setting


@dataclass(frozen=True)
class PromptSettings:
    """What a :class:`Prompter` reads of an approach's settings.

    ``chat_template``: use the tokenizer's template, thinking off, when it has one; ``think_prefix``: written
    before the answer unless the template already does; ``answer``: ``letter`` or ``label``;
    ``answer_loss``: ``turn`` or ``letter``; ``max_length``: prompt and answer together; ``answer_reserve``:
    extraction, the room a training prompt leaves for its answer (prediction leaves ``max_new_tokens``).
    """

    chat_template: bool = True
    think_prefix: str = ""
    answer: str = "letter"
    answer_loss: str = "turn"
    max_length: int = 512
    answer_reserve: int = 256

    @classmethod
    def of(cls, settings: Any) -> PromptSettings:
        """From an approach's typed settings (attributes) or a mapping of the same names."""
        if isinstance(settings, cls):
            return settings
        get = settings.get if isinstance(settings, dict) else lambda key, default: getattr(settings, key, default)
        reserve = get("answer_reserve", None)
        if reserve is None:
            reserve = get("max_new_tokens", cls.answer_reserve)
        return cls(
            **{f.name: get(f.name, f.default) for f in dataclass_fields(cls) if f.name != "answer_reserve"},
            answer_reserve=reserve,
        )


class Prompter:
    """Builds prompt and answer token ids exactly as training and prediction both need them, from the
    approach's settings (:class:`PromptSettings`, or the approach's typed settings that have those names)."""

    def __init__(self, task: Task, tokenizer: Any, settings: Any):
        settings = PromptSettings.of(settings)
        self.task, self.tokenizer, self.settings = task, tokenizer, settings
        self.prompt = task.prompt or Prompt(user=DEFAULT_PROMPT)
        option_labels = task.option_labels or task.labels
        self.options = options_text(task)
        self.use_chat = bool(settings.chat_template and getattr(tokenizer, "chat_template", None))
        # What joins a plain prompt to its answer: BPE tokenizers (GPT-2's, SmolLM2's, Qwen's) split
        # "Answer: C" as "Answer:" + " C", so the space belongs to the answer, not to the prompt.
        self.separator = "" if self.use_chat or self.prompt_text("").endswith((" ", "\n")) else " "
        # The template with an empty article tells how many tokens the fixed part costs.
        self.fixed_tokens = len(self._prefix_ids(""))
        self.assistant_tokens = self._assistant_tokens()
        answers = list(LETTERS[: len(task.labels)]) if settings.answer == "letter" else list(option_labels)
        self.answer_ids = [self._answer_ids(a) for a in answers]
        self.option_tokens = [ids[0] for ids in self.answer_ids]  # what letter scoring reads
        self.end_ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def _messages(self, text: str) -> list[dict[str, str]]:
        return chat_messages(self.task, text)

    def prompt_text(self, text: str) -> str:
        """The whole prompt for one article, as text: what a user would pass to the tokenizer by hand."""
        if self.use_chat:
            chat = self.tokenizer.apply_chat_template(
                self._messages(text), tokenize=False, add_generation_prompt=True, enable_thinking=False
            )
            prefix = self.settings.think_prefix
            return chat if chat.endswith(prefix) else chat + prefix
        prompt = self.prompt.plain().format(text=text, options=self.options)
        # A raw prompt is the model's own format, kept to the byte; one built from the chat messages ends
        # at its last word, and the answer brings its leading space (``separator``).
        return prompt if self.prompt.raw is not None else prompt.rstrip(" ")

    def _prefix_ids(self, text: str) -> list[int]:
        return self.tokenizer(self.prompt_text(text), add_special_tokens=False)["input_ids"]

    def _assistant_tokens(self) -> int:
        """How many tokens at the prompt's end the assistant writes (the thinking block after the turn's
        header): the part of the turn that ``answer_loss: turn`` trains on besides the answer."""
        if not self.use_chat:
            return 0
        header = self.tokenizer.apply_chat_template(self._messages(""), tokenize=False, add_generation_prompt=True)
        header_ids = self.tokenizer(header, add_special_tokens=False)["input_ids"]
        full = self._prefix_ids("")
        if full[: len(header_ids)] != header_ids:
            return 0
        return len(full) - len(header_ids)

    def _answer_ids(self, answer: str) -> list[int]:
        """The answer's ids as the tokenizer splits the whole text, prompt then answer (" C" after a plain
        "Answer:"), cut off the prompt's ids, so the prompt's last position predicts the answer's first
        token; tokenised alone where the prompt's last token would merge with the answer."""
        prefix = self._prefix_ids("")
        answer = self.separator + answer
        both = self.tokenizer(self.prompt_text("") + answer, add_special_tokens=False)["input_ids"]
        if both[: len(prefix)] != prefix:
            return self.tokenizer(answer, add_special_tokens=False)["input_ids"]
        return both[len(prefix) :]

    def single_token_answers(self) -> bool:
        firsts = [ids[0] for ids in self.answer_ids]
        return all(len(ids) == 1 for ids in self.answer_ids) and len(set(firsts)) == len(firsts)

    def prompt_ids(self, text: str, reserve: int) -> tuple[list[int], bool]:
        """The prompt's ids with the article cut (never the question or options) so that ``reserve``
        answer tokens still fit in ``max_length``; also whether it was cut."""
        limit = self.settings.max_length - reserve
        budget = limit - self.fixed_tokens
        text_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(text_ids) <= budget:
            return self._prefix_ids(text), False
        while True:
            # Decoding the cut and encoding it in place can merge into a token or two more: shrink until it fits.
            ids = self._prefix_ids(self.tokenizer.decode(text_ids[: max(0, budget)]))
            if len(ids) <= limit or budget <= 0:
                return ids, True
            budget -= len(ids) - limit

    def training_row(self, example: Example) -> tuple[dict[str, Any], bool]:
        """Input ids and labels of one training example, and whether its article was cut. The labels
        cover the answer and end of turn, and with ``answer_loss: turn`` the rest of the assistant's turn
        (the thinking block the template writes) too."""
        if self.task.type == "classification":
            answer = self.answer_ids[self.task.labels.index(example.label)] + self.end_ids
            reserve = len(answer)
        else:  # the same room prediction leaves for generation, so prompts are cut alike
            answer = self.extraction_answer(example.fields or {}) + self.end_ids
            reserve = max(self.settings.answer_reserve, len(answer))
        prompt, cut = self.prompt_ids(example.text, reserve=reserve)
        turn = self.assistant_tokens if self.settings.answer_loss == "turn" else 0
        labels = [-100] * (len(prompt) - turn) + prompt[len(prompt) - turn :] + answer
        return {
            "input_ids": prompt + answer,
            "attention_mask": [1] * (len(prompt) + len(answer)),
            "labels": labels,
        }, cut

    def extraction_answer(self, fields: dict[str, str]) -> list[int]:
        return self._answer_ids(json.dumps(fields, ensure_ascii=False))


def options_text(task: Task) -> str:
    """What a prompt's ``{options}`` becomes: the lettered options of a classification task, one a line."""
    return "\n".join(f"{LETTERS[i]}. {label}" for i, label in enumerate(task.option_labels or task.labels))


def chat_messages(task: Task, text: str) -> list[dict[str, str]]:
    """The task's prompt for one article as chat messages (system, if the spec has one, then user): what a
    tokenizer's chat template renders, and what an OpenAI-compatible chat endpoint is sent."""
    prompt, options = task.prompt or Prompt(user=DEFAULT_PROMPT), options_text(task)
    system = prompt.system and prompt.system.format(options=options)
    user = prompt.user.format(text=text, options=options)
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]


# How a model writes an option letter: "B", "B.", "B:", "B)" or "(B)", alone or before the option's text ("B. Sports").
LETTER_ANSWER = re.compile(r"(?:\(([A-Z])\)[.:]?|([A-Z])(?:[.:)]|(?=\s)|$))(?:\s+(.*))?", re.DOTALL)
LETTER_MARKS = "()[].:"  # what a letter token may carry besides whitespace: " B", "(", "B."


def letter_choice(task: Task, top: dict[str, float] | None, text: str) -> tuple[str | None, dict[str, float] | None]:
    """A classification answer read off a server's reply: ``text`` (the answer) and ``top`` (its first token's
    top log-probabilities, token text to log-probability); (None, None) when the answer names no option: an
    invalid answer, counted as such.

    An option letter counts only as a model writes one: a capital among the options' letters, the whole answer
    (``B``, ``B.``, ``B:``, ``B)``, ``(B)``) or followed by that same option's text (``B. Sports``). "I think..."
    and a lowercase "a" are words, not options I and A; a letter inside a sentence ("it is 体育 (H)") is not an
    answer either. An answer that is an option's label or text (casefolded, trailing punctuation stripped)
    names that option. Anything else is invalid.

    The log-probabilities give the scores (the letters' probabilities, renormalised over the letters in
    ``top``, the others 0) only for a letter answer whose first token is that letter: the best token in ``top``
    (what a temperature-0 answer starts with), stripped of whitespace and brackets, is the answer's letter. An
    answer "Sports" whose top tokens list "A" (World) further down is Sports; "(C)", whose first token is "(",
    is C without scores. Empty ``text`` means the caller has only the first token's log-probabilities (vLLM's
    request constrained to the option tokens, ``max_tokens=1``): the best token is then the answer."""
    labels, options = list(task.labels), list(task.option_labels or task.labels)
    letters = LETTERS[: len(labels)]
    found: dict[str, float] = {}  # each letter's best log-probability among the tokens that write it
    for token, logprob in (top or {}).items():
        letter = token.strip().strip(LETTER_MARKS)
        if len(letter) == 1 and letter in letters:
            found[letter] = max(found.get(letter, float("-inf")), logprob)
    first = max(top, key=top.__getitem__).strip().strip(LETTER_MARKS) if top else ""
    answer = text.strip() or first
    letter = _answer_letter(answer, letters, labels, options)
    if letter is not None:
        index = letters.index(letter)
        if first != letter or not found:
            return labels[index], None
        peak = max(found.values())
        weights = [math.exp(found[x] - peak) if x in found else 0.0 for x in letters]
        return labels[index], {label: weight / sum(weights) for label, weight in zip(labels, weights)}
    return _named_option(answer, labels, options), None


def _answer_letter(answer: str, letters: str, labels: list[str], options: list[str]) -> str | None:
    """The option letter ``answer`` is (:data:`LETTER_ANSWER`, within ``letters``), or None."""
    matched = LETTER_ANSWER.fullmatch(answer)
    if not matched:
        return None
    letter, rest = matched.group(1) or matched.group(2), matched.group(3)
    if letter not in letters:
        return None
    if rest is not None and _named_option(rest, labels, options) != labels[letters.index(letter)]:
        return None  # "B. World", "I think ...": not the letter alone, nor the letter with its own option
    return letter


def _named_option(answer: str, labels: list[str], options: list[str]) -> str | None:
    """The label whose label or option text ``answer`` is (casefolded, trailing punctuation stripped), or None."""
    folded = answer.strip().rstrip(".。!！:：;；,，").strip().casefold()
    for label, option in zip(labels, options):
        if folded in (label.casefold(), option.casefold()):
            return label
    return None


def check_letter_scoring(prompter: Prompter) -> None:
    """A ValueError unless letter scoring can tell the answers apart: each one token, all distinct."""
    if not prompter.single_token_answers():
        raise ValueError(
            "scoring: letter needs every answer to be one distinct token, but the answers tokenize to "
            f"{prompter.answer_ids}; use scoring: perplexity or likelihood"
        )


def selection_scoring(prompter: Prompter) -> str:
    """How checkpoints are selected during training: independent of the ``scoring`` predict setting."""
    return "letter" if prompter.single_token_answers() else "perplexity"


def answer_loss(model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
    """Cross-entropy on the answer tokens, computing vocabulary logits only where there is an answer
    token to predict: with a 151k-token vocabulary the full logits would cost far more than the model.

    With ``num_items_in_batch`` (answer tokens in the whole accumulated batch) the sum is divided by it,
    so gradient accumulation gives the same gradient as one large batch."""
    import torch

    labels, mask = inputs["labels"], inputs["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    if hasattr(model, "get_base_model"):  # a peft model: its adapters are injected into the base model's layers
        model = model.get_base_model()
    hidden = model.model(input_ids=inputs["input_ids"], attention_mask=mask, position_ids=positions).last_hidden_state
    # Position t predicts token t + 1.
    targets = labels[:, 1:]
    where = targets != -100
    logits = model.lm_head(hidden[:, :-1][where])
    if num_items_in_batch is None:
        return torch.nn.functional.cross_entropy(logits.float(), targets[where])
    total = torch.nn.functional.cross_entropy(logits.float(), targets[where], reduction="sum")
    return total / num_items_in_batch


def classify(
    model: Any,
    prompter: Prompter,
    device: str,
    examples: list[Example],
    *,
    batch_size: int = 16,
    scoring: str = "letter",
    bucket_by_length: bool = True,
    packed: bool = False,
    progress: Any = None,
) -> list[Prediction]:
    """Each example's label and every label's probability, batch by batch, without generating.

    ``scoring`` is one of :data:`SCORINGS`; ``packed`` runs letter scoring packed end to end
    (:func:`harness.packing.use_packing` decides it), ``bucket_by_length=False`` predicts in file order, and
    ``progress`` (None: silent) tracks the batches. Runs under ``torch.inference_mode()``."""
    import torch

    from harness.models import length_buckets
    from harness.packing import packed_last_logits, packing_if_it_saves

    reserve = max(len(ids) for ids in prompter.answer_ids) + len(prompter.end_ids)
    prompts, cut = zip(*(prompter.prompt_ids(ex.text, reserve=reserve) for ex in examples)) if examples else ((), ())
    batches = length_buckets([len(p) for p in prompts], batch_size, bucket_by_length)
    if progress is not None:
        batches = progress.track(batches, "predict", total=len(examples), weight=len)
    predictions: list[Prediction | None] = [None] * len(examples)
    labels = prompter.task.labels
    with (
        torch.inference_mode(),
        packing_if_it_saves(
            packed_last_logits, model, packed and scoring == "letter", len(examples), batch_size
        ) as packs,
    ):
        for batch in batches:
            if scoring == "letter":
                log_probs = letter_scores(model, prompter, [prompts[i] for i in batch], device, packs)
            else:
                log_probs = [
                    likelihood_scores(model, prompter, prompts[i], device, per_token=scoring == "perplexity")
                    for i in batch
                ]
            for i, scores in zip(batch, log_probs):
                probabilities = torch.tensor(scores).softmax(-1).tolist()
                named = dict(zip(labels, probabilities))
                predictions[i] = Prediction(label=max(named, key=named.__getitem__), scores=named, truncated=cut[i])
    return predictions  # type: ignore[return-value]


def letter_scores(
    model: Any, prompter: Prompter, prompts: list[list[int]], device: str, packed: Any = None
) -> list[list[float]]:
    """Each prompt's option tokens' logits at its last position (softmax over them gives each option's
    probability, as the full vocabulary's log-probabilities would): one forward pass, left-padded or through
    ``packed`` (the forward of :func:`harness.packing.packed_last_logits`), and only the option tokens' logits
    computed, in fp32 (:func:`token_logits`)."""
    if packed is not None and len(prompts) > 1:
        logits = packed(prompts, prompter.option_tokens)
    else:
        input_ids, mask, positions = left_padded(prompts, prompter.tokenizer.pad_token_id, device)
        logits = token_logits(
            model, prompter.option_tokens, input_ids=input_ids, attention_mask=mask, position_ids=positions
        )[:, -1]
    return logits.tolist()


def next_tokens(logits: Any, hidden: Any = None, head: Any = None, candidates: int = 8, process: Any = None) -> Any:
    """Each row's greedy next token from its last-position ``logits`` (rows, vocabulary). Logits below fp32
    (a bf16 model's, or any model's under bf16 autocast) are rounded to a step of 1/16 to 1/8 where tokens
    score: close tokens tie and argmax takes the lowest id. With the ``hidden`` state the ``head`` read, the
    top ``candidates`` are scored again in fp32 from the head's rows, as :func:`token_logits` scores options:
    the token whose exact product is highest, which the rounding cannot have pushed out of the top few.

    ``process`` (fp32 scores to scores: the model's generation_config's logits processors on the rows' ids,
    :func:`greedy_processors`) is applied as ``generate`` applies it, to an fp32 copy of the logits; the
    candidates are the top of the processed scores, and their exact products are processed again (each in
    its place among the others' logits) before they are compared."""
    import torch

    scores = logits if process is None else process(logits.to(dtype=torch.float32, copy=True))
    if hidden is None or head is None or logits.dtype == torch.float32:
        return scores.argmax(-1)
    top = scores.topk(min(candidates, scores.shape[-1]), dim=-1).indices
    exact = fp32_head(hidden[:, None], head, top)[:, 0]
    if process is not None:
        exact = process(logits.float().scatter(-1, top, exact)).gather(-1, top)
    return top.gather(-1, exact.argmax(-1, keepdim=True)).squeeze(-1)


# What of a generation_config changes greedy scores (the logits processors ``generate`` builds without
# sampling), with each setting's value that builds none. Sampling settings (temperature, top_p, top_k) don't
# apply to greedy decoding: ``generate(do_sample=False)`` ignores them too.
PROCESSOR_SETTINGS = {
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_repetition_penalty": 1.0,
    "encoder_no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "sequence_bias": None,
    "min_length": 0,
    "min_new_tokens": 0,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "remove_invalid_values": False,
    "exponential_decay_length_penalty": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "guidance_scale": 1.0,
    "watermarking_config": None,
}


def generation_settings(model: Any) -> dict[str, Any]:
    """The settings of the model's generation_config that greedy decoding applies (:data:`PROCESSOR_SETTINGS`
    not at their neutral value): {} for plain greedy."""
    config = getattr(model, "generation_config", None)
    found = {}
    for name, neutral in PROCESSOR_SETTINGS.items():
        value = getattr(config, name, None)
        if value is not None and value != neutral and value != [] and value != {}:
            found[name] = value
    return found


def decoding_note(model: Any) -> str:
    """The serving row's note on the rule greedy decoding follows: the model's generation_config, or plain."""
    found = generation_settings(model)
    if not found:
        return "plain greedy decoding (the model's generation_config sets no logits processors)"
    return "greedy decoding applies the model's generation_config: " + ", ".join(f"{k}={v}" for k, v in found.items())


def greedy_processors(model: Any, prompter: Prompter, input_ids: Any, attention_mask: Any, max_new_tokens: int) -> Any:
    """The logits processors ``model.generate(do_sample=False)`` builds from the model's generation_config for
    this left-padded batch (transformers' own: repetition penalty, no-repeat n-grams, ...), or None when it
    builds none. They read each row's whole ids, padding included, as ``generate`` passes them; a repetition
    penalty skips each row's left padding (read off ``attention_mask``), as ``generate`` has it."""
    if not generation_settings(model):
        return None
    if model.generation_config.guidance_scale not in (None, 1.0) or model.generation_config.watermarking_config:
        raise ValueError(
            "harness's greedy decoding cannot apply a generation_config's guidance_scale or "
            "watermarking_config (they keep state across the batch); remove them from the model's "
            "generation_config"
        )
    width = input_ids.shape[1]
    config, _ = model._prepare_generation_config(
        None,
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        eos_token_id=prompter.end_ids or None,
        pad_token_id=prompter.tokenizer.pad_token_id,
    )
    model._prepare_special_tokens(config, True, device=input_ids.device, batch_size=input_ids.shape[0])
    config.max_length = width + max_new_tokens  # as generate prepares the lengths
    if config.min_new_tokens is not None:
        config.min_length = config.min_new_tokens + width
    processors = model._get_logits_processor(
        config,
        input_ids_seq_length=width,
        encoder_input_ids=input_ids,
        device=input_ids.device,
        model_kwargs={"attention_mask": attention_mask},
    )
    return processors or None


@functools.cache
def _cache_renamed(model_class: type) -> bool:
    """transformers 5.24 renamed the KV cache from past_key_values to cache, in and out; older 5.x has the old
    name. Read once per model class, not once per prompt."""
    import inspect

    return "cache" in inspect.signature(model_class.forward).parameters


def likelihood_scores(
    model: Any, prompter: Prompter, prompt: list[int], device: str, per_token: bool = False
) -> list[float]:
    """Summed log-probability of each answer after the prompt, or with ``per_token`` its mean per token
    (minus the log of the perplexity); the prompt runs once and its KV cache is shared by all answers,
    which run together as one batch."""
    import torch

    answers = [ids + prompter.end_ids for ids in prompter.answer_ids]  # the answer as trained, end of turn included
    out = model(input_ids=torch.tensor([prompt], device=device), use_cache=True, logits_to_keep=1)
    first = out.logits[0, -1].float().log_softmax(-1)
    renamed = _cache_renamed(type(model))
    cache = out.cache if renamed else out.past_key_values
    cache.batch_repeat_interleave(len(answers))
    tokens, answer_mask = padded(answers, 0)  # right padded: each answer's positions follow the prompt's
    tokens, answer_mask, width = tokens.to(device), answer_mask.to(device), tokens.shape[1]
    mask = torch.cat([torch.ones((len(answers), len(prompt)), dtype=torch.long, device=device), answer_mask], dim=1)
    positions = torch.arange(len(prompt), len(prompt) + width, device=device).expand(len(answers), -1)
    logits = model(
        input_ids=tokens,
        attention_mask=mask,
        position_ids=positions,
        **{"cache" if renamed else "past_key_values": cache},
    ).logits
    log_probs = logits.float().log_softmax(-1)
    scores = []
    for i, ids in enumerate(answers):
        score = first[ids[0]].item()
        for t in range(1, len(ids)):
            score += log_probs[i, t - 1, ids[t]].item()
        scores.append(score / len(ids) if per_token else score)
    return scores


def generate(
    model: Any, prompter: Prompter, input_ids: Any, attention_mask: Any, max_new_tokens: int, num_beams: int = 1
) -> list[str]:
    """Greedy (or with ``num_beams``, beam search) ``model.generate`` of a left-padded batch until the end of
    the turn, each row's answer decoded without special tokens: the library's own loop, as a user would call
    it (the raw reference of ``harness bench``). harness serves greedy decoding with :func:`greedy_answers`,
    which gives the same tokens faster."""
    return [text for text, _ in generate_counted(model, prompter, input_ids, attention_mask, max_new_tokens, num_beams)]


def generate_counted(
    model: Any, prompter: Prompter, input_ids: Any, attention_mask: Any, max_new_tokens: int, num_beams: int = 1
) -> list[tuple[str, int]]:
    """:func:`generate`, with each row's generated token count (its end-of-turn token included; the padding
    a finished row gets while the others go on is not). Beam search (seqgpt's) runs here, in the library."""
    tokenizer = prompter.tokenizer
    out = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=num_beams,
        eos_token_id=prompter.end_ids or None,
        pad_token_id=tokenizer.pad_token_id,
    )
    new = out[:, input_ids.shape[1] :]
    counts = []
    for row in new.tolist():
        ends = [i for i, token in enumerate(row) if token in prompter.end_ids]
        counts.append(ends[0] + 1 if ends else len(row))
    return list(zip(tokenizer.batch_decode(new, skip_special_tokens=True), counts))


def greedy_answers(
    model: Any, prompter: Prompter, input_ids: Any, attention_mask: Any, max_new_tokens: int
) -> list[tuple[str, int]]:
    """Greedy decoding of a left-padded batch with the KV cache, each row until its end of turn; every row's
    answer (decoded without special tokens) and its generated token count (the end of turn included).

    In fp32, the same tokens as ``model.generate(do_sample=False)`` (tests/test_decoder.py checks it); in bf16,
    each step's close tokens are told apart in fp32 (:func:`next_tokens`), where ``generate`` takes the lowest
    id among the tokens bf16 rounds to the same logit. A row that has finished leaves the batch and its cache:
    ``generate`` keeps computing finished rows as padding until the longest answer ends, which on waybill
    records (72 to 138 tokens in a batch of 64) is a quarter of the work.

    The model's generation_config decodes as it does in ``generate`` and vLLM: its logits processors
    (:func:`greedy_processors`; a repetition penalty, no-repeat n-grams...) see each row's own ids, its padded
    prompt then its answer so far, and are built again for the rows left when rows finish. Without any, the
    loop is plain greedy at no extra cost. Sampling settings don't apply to greedy decoding."""
    import torch

    # A peft model (qwen-lora's evaluation while training) passes the cache on to the model it wraps.
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    renamed = _cache_renamed(type(base))
    cache_name = "cache" if renamed else "past_key_values"
    ends = set(prompter.end_ids)
    head, seen = plain_head(model), []  # the head's input: the last hidden state, for next_tokens
    # The generation_config's processors (None: plain greedy, nothing more to do), on each row's whole ids.
    processors = greedy_processors(base, prompter, input_ids, attention_mask, max_new_tokens)
    history = input_ids
    hook = (
        head.register_forward_hook(lambda module, args, output: seen.append(args[0][:, -1]))
        if head is not None
        else None
    )
    try:
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        out = model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=True, logits_to_keep=1
        )
        rows = list(range(input_ids.shape[0]))  # the batch's rows still generating, by their index in the batch
        answers: list[list[int]] = [[] for _ in rows]
        mask, position = attention_mask, positions[:, -1:]
        for step in range(max_new_tokens):
            cache = out.cache if renamed else out.past_key_values
            process = None if processors is None else functools.partial(processors, history)
            tokens = next_tokens(out.logits[:, -1], seen.pop() if seen else None, head, process=process)
            keep = []
            for j, token in enumerate(tokens.tolist()):
                answers[rows[j]].append(token)
                if token not in ends:
                    keep.append(j)
            if not keep or step == max_new_tokens - 1:
                break
            if processors is not None:
                history = torch.cat([history, tokens[:, None]], dim=1)
            if len(keep) < len(rows):  # finished rows leave the batch, and their cache with them
                index = torch.tensor(keep, device=tokens.device)
                cache.batch_select_indices(index)
                rows, tokens, mask, position = [rows[j] for j in keep], tokens[index], mask[index], position[index]
                if processors is not None:  # built again for the rows left: a processor may hold one value a row
                    history, left = history[index], torch.tensor(rows, device=tokens.device)
                    processors = greedy_processors(
                        base, prompter, input_ids[left], attention_mask[left], max_new_tokens
                    )
            mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
            position = position + 1
            out = model(
                input_ids=tokens[:, None],
                attention_mask=mask,
                position_ids=position,
                use_cache=True,
                **{cache_name: cache},
            )
    finally:
        if hook is not None:
            hook.remove()
    texts = prompter.tokenizer.batch_decode(answers, skip_special_tokens=True)
    return [(text, len(ids)) for text, ids in zip(texts, answers)]


def extract(
    model: Any,
    prompter: Prompter,
    device: str,
    examples: list[Example],
    *,
    max_new_tokens: int,
    batch_size: int = 16,
    progress: Any = None,
) -> list[Prediction]:
    """Each example's fields by greedy generation, one batch of similar lengths at a time; the answer
    must be a JSON object (:func:`parse_fields`), and ``Prediction.raw`` keeps what was generated."""
    import torch

    from harness.models import length_buckets

    prompts, cut = (
        zip(*(prompter.prompt_ids(ex.text, reserve=max_new_tokens) for ex in examples)) if examples else ((), ())
    )
    batches = length_buckets([len(p) for p in prompts], batch_size)
    predictions: list[Prediction | None] = [None] * len(examples)
    if progress is not None:
        batches = progress.track(batches, "generate", total=len(examples), weight=len)
    with torch.inference_mode():
        for batch in batches:
            input_ids, mask, _ = left_padded([prompts[i] for i in batch], prompter.tokenizer.pad_token_id, device)
            for i, (answer, tokens) in zip(batch, greedy_answers(model, prompter, input_ids, mask, max_new_tokens)):
                raw = answer.strip()
                predictions[i] = Prediction(
                    fields=parse_fields(raw), raw=raw, truncated=cut[i], generated_tokens=tokens
                )
    return predictions  # type: ignore[return-value]


def parse_fields(raw: str) -> dict[str, Any] | None:
    """The JSON object of a generated answer, or None when it is not one (a wrong answer, not a crash).

    The answer is the object alone, or the object in one Markdown code fence (```json ... ```), as chat models
    often write it; anything else around it makes it no answer. Values stay as the model wrote them (null
    included), numbers and lists as their JSON text: the scorer normalises gold and predicted values alike
    (harness.metrics.normalise)."""
    text = raw.strip()
    fenced = FENCE.fullmatch(text)
    if fenced:
        text = fenced.group(1)
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(value, dict):
        return None
    # Text as written; null kept (the scorer's empty value); a number or list as its JSON text, as gold's are.
    return {
        str(k): v if v is None or isinstance(v, str) else json.dumps(v, ensure_ascii=False) for k, v in value.items()
    }


FENCE = re.compile(r"```(?:json)?\s*(.*?)\s*```", re.DOTALL)
