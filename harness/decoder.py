"""Decoder prompting: a task and a tokenizer made into the token ids of prompts, answers and training rows.

Every decoder approach builds on the decoder modules rather than on a copy of them: ``qwen`` (full fine-tuning),
``qwen-lora`` (LoRA on the same decoder), ``seqgpt`` (a zero-shot decoder with a raw prompt) and the vLLM engines
serving their trained models. This module prompts; :mod:`harness.decoder_scoring` scores the options and holds
the answer's training loss, :mod:`harness.decoder_generation` generates, :mod:`harness.answers` reads what a
model wrote and :mod:`harness.batching` makes the batches.

- :class:`Prompter` turns a task and a tokenizer into token ids, the same for training and prediction: the
  prompt through the model's chat template with thinking off (Qwen3 writes its empty ``<think></think>``
  block, SmolLM2's ChatML nothing extra), or the plain prompt for a model without a template; the article is
  cut, never the question, to fit ``max_length``; each option's answer ids (a letter, ``"C"``, or the label's
  text), tokenized as the tokenizer splits the prompt and answer together; and a training row whose labels
  cover the answer (``answer_loss: letter``) or the whole assistant turn (``turn``). Every approach uses it; an
  engine that takes text rather than ids sends :meth:`Prompter.prompt_text`.
- :func:`chat_messages` is the same prompt as chat messages: what a chat template renders, and what an
  OpenAI-compatible chat endpoint is sent.

Settings are passed explicitly; the :class:`Prompter` reads its own from the approach's settings (listed
in :class:`PromptSettings`). Nothing here imports torch or transformers at module level.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from typing import Any

from harness.types import Example, Prompt, Task

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
DEFAULT_PROMPT = "{text}\n\nOptions:\n{options}\n\nAnswer:"


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
