"""qwen: supervised fine-tuning of a causal LM on a multiple-choice prompt, classified without generating.

Defaults are seed 000's: Qwen/Qwen3-0.6B, full fine-tuning, bf16 on CUDA, lr 1.2e-5, batch 12 x
gradient accumulation 8, warmup 1%, 1 epoch, cosine, cutoff 512, an evaluation (and checkpoint) every
0.2 of training; the loss is on the answer tokens only.

The loss covers the whole assistant turn by default (``answer_loss: turn``, the seed's LLaMA-Factory
recipe: the thinking block the chat template writes, the answer and the end of turn); ``answer_loss:
letter`` covers the answer and end of turn only.

Classification needs one forward pass per prompt: with ``scoring: letter`` the logits of the option
letters at the last prompt position give each option's probability (only that position's logits are
computed). With ``scoring: perplexity`` (the seed's "lowest perplexity") each option's answer is scored
by its mean log-probability per token, and with ``scoring: likelihood`` by the sum, all options in one
batch that reuses the prompt's KV cache. Checkpoints are selected with letter scoring when every answer
is one distinct token, else with perplexity, whatever ``scoring`` says: scoring is a predict setting. Extraction generates greedily and parses
the JSON answer; an answer that is not valid JSON is a wrong answer (``Prediction.fields`` is None).
``num_train_epochs: 0`` evaluates the untuned model with the same prompt (zero-shot).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from harness import ApproachInfo, Artifact, Example, Prediction, Prompt, Serving, Task, hookimpl

TRAINING_ARGUMENTS = {
    "learning_rate": 1.2e-5,
    "num_train_epochs": 1.0,
    "per_device_train_batch_size": 12,
    "gradient_accumulation_steps": 8,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.01,
    "weight_decay": 0.0,
    "eval_steps": 0.2,
    "logging_steps": 0.01,
    "max_grad_norm": 1.0,
    "optim": "adamw_torch",
    "metric_for_best_model": "f1_weighted",
}

DEFAULTS: dict[str, Any] = {
    "model": "Qwen/Qwen3-0.6B",
    "tokenizer": "",  # empty: the model's own
    "max_length": 512,  # the seed's cutoff: prompt and answer together
    "scoring": "letter",  # letter | perplexity (mean log-probability per answer token) | likelihood (the sum)
    "answer": "letter",  # letter: "C"; label: the option's text, several tokens (needs perplexity or likelihood)
    "answer_loss": "turn",  # turn: the whole assistant turn, as the seed's recipe; letter: answer and end of turn
    "chat_template": True,  # use the tokenizer's chat template (thinking off) when it has one
    # Written before the answer unless the template already does. Empty: only what the template writes with
    # thinking off, which is Qwen3's empty <think></think> block and nothing for a template without thinking.
    "think_prefix": "",
    "max_new_tokens": 256,  # extraction
    "predict_batch_size": 0,  # 0: 64 on CUDA, 16 on CPU
    "bucket_by_length": True,  # False: predict in file order (the baseline bucketing is measured against)
    # auto: letter scoring packs each batch end to end on CPU (harness.packing) where the model family allows
    # it, pads elsewhere; packed (an error where it cannot); padded.
    "packing": "auto",
    "device": "auto",
    "mixed_precision": "auto",  # auto: bf16 autocast on a CUDA GPU that supports it; bf16; no
    "load_best_model_at_end": True,
    "train_sampler": "length_buckets",
    **TRAINING_ARGUMENTS,
}

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
DEFAULT_PROMPT = "{text}\n\nOptions:\n{options}\n\nAnswer:"


@hookimpl
def harness_describe() -> ApproachInfo:
    from harness.hf_trainer import MIXED_PRECISION
    from harness.packing import PACKING
    from harness_plugins.bert import TRAIN_SAMPLERS

    return ApproachInfo(
        task_types=("classification", "extraction"),
        settings=DEFAULTS,
        description="causal LM fine-tuned on a multiple-choice prompt; scored by option likelihood",
        predict_settings=("predict_batch_size", "bucket_by_length", "scoring", "packing"),
        choices={"packing": PACKING, "scoring": ("letter", "perplexity", "likelihood"), "answer": ("letter", "label"),
                 "answer_loss": ("turn", "letter"), "train_sampler": TRAIN_SAMPLERS, "mixed_precision": MIXED_PRECISION},
        limits={"max_new_tokens": (1, None)},
    )


class Prompter:
    """Builds prompt and answer token ids exactly as training and prediction both need them."""

    def __init__(self, task: Task, tokenizer: Any, settings: dict[str, Any]):
        self.task, self.tokenizer, self.settings = task, tokenizer, settings
        self.prompt = task.prompt or Prompt(user=DEFAULT_PROMPT)
        option_labels = task.option_labels or task.labels
        self.options = "\n".join(f"{LETTERS[i]}. {label}" for i, label in enumerate(option_labels))
        self.use_chat = bool(settings["chat_template"] and getattr(tokenizer, "chat_template", None))
        # The template with an empty article tells how many tokens the fixed part costs.
        self.fixed_tokens = len(self._prefix_ids(""))
        self.assistant_tokens = self._assistant_tokens()
        answers = list(LETTERS[: len(task.labels)]) if settings["answer"] == "letter" else list(option_labels)
        self.answer_ids = [self._answer_ids(a) for a in answers]
        self.option_tokens = [ids[0] for ids in self.answer_ids]  # what letter scoring reads
        self.end_ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def _messages(self, text: str) -> list[dict[str, str]]:
        system = self.prompt.system and self.prompt.system.format(options=self.options)
        user = self.prompt.user.format(text=text, options=self.options)
        return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]

    def _wrap(self, text: str) -> str:
        if self.use_chat:
            chat = self.tokenizer.apply_chat_template(
                self._messages(text), tokenize=False, add_generation_prompt=True, enable_thinking=False
            )
            prefix = self.settings["think_prefix"]
            return chat if chat.endswith(prefix) else chat + prefix
        prompt = self.prompt.plain().format(text=text, options=self.options)
        return prompt + (" " if not prompt.endswith((" ", "\n")) else "")

    def _prefix_ids(self, text: str) -> list[int]:
        return self.tokenizer(self._wrap(text), add_special_tokens=False)["input_ids"]

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
        # Tokenised after the prefix, as the model sees it, then cut off the prefix.
        prefix = self._prefix_ids("")
        both = self.tokenizer(self._wrap("") + answer, add_special_tokens=False)["input_ids"]
        if both[: len(prefix)] != prefix:
            return self.tokenizer(answer, add_special_tokens=False)["input_ids"]
        return both[len(prefix) :]

    def single_token_answers(self) -> bool:
        firsts = [ids[0] for ids in self.answer_ids]
        return all(len(ids) == 1 for ids in self.answer_ids) and len(set(firsts)) == len(firsts)

    def prompt_ids(self, text: str, reserve: int) -> tuple[list[int], bool]:
        """The prompt's ids with the article cut (never the question or options) so that ``reserve``
        answer tokens still fit in ``max_length``; also whether it was cut."""
        limit = self.settings["max_length"] - reserve
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
            reserve = max(self.settings["max_new_tokens"], len(answer))
        prompt, cut = self.prompt_ids(example.text, reserve=reserve)
        turn = self.assistant_tokens if self.settings["answer_loss"] == "turn" else 0
        labels = [-100] * (len(prompt) - turn) + prompt[len(prompt) - turn :] + answer
        return {"input_ids": prompt + answer, "attention_mask": [1] * (len(prompt) + len(answer)), "labels": labels}, cut

    def extraction_answer(self, fields: dict[str, str]) -> list[int]:
        return self.tokenizer(json.dumps(fields, ensure_ascii=False), add_special_tokens=False)["input_ids"]


def check_letter_scoring(prompter: Prompter) -> None:
    if not prompter.single_token_answers():
        raise ValueError(
            "scoring: letter needs every answer to be one distinct token, but the answers tokenize to "
            f"{prompter.answer_ids}; use scoring: perplexity or likelihood"
        )


def selection_scoring(prompter: Prompter) -> str:
    """How checkpoints are selected during training: independent of the ``scoring`` predict setting."""
    return "letter" if prompter.single_token_answers() else "perplexity"


@hookimpl
def harness_train(
    task: Task, train: list[Example], validation: list[Example], settings: dict[str, Any], workdir: Path, progress: Any
) -> Artifact:
    from transformers import DataCollatorForSeq2Seq

    from harness.hf_trainer import describe_model, train_with_trainer
    from harness.metrics import classification_metrics
    from harness.models import pick_device

    device = pick_device(settings["device"])
    with progress.phase("load"):
        tokenizer = _tokenizer(settings)
        model = _base_model(settings, tokenizer)
    prompter = Prompter(task, tokenizer, settings)
    if task.type == "classification" and settings["scoring"] == "letter":
        check_letter_scoring(prompter)
    artifact = Artifact(path=None)
    artifact.state.update(tokenizer=tokenizer, prompter=prompter, device=device)

    if settings["num_train_epochs"] > 0:
        truncated = 0

        def encode(example: Example) -> dict[str, Any]:
            nonlocal truncated
            row, cut = prompter.training_row(example)
            truncated += cut
            return row

        scoring = selection_scoring(prompter) if task.type == "classification" else None

        def evaluate(current: Any) -> dict[str, float]:
            artifact.state["serving_model"] = current
            try:
                if task.type == "extraction":
                    predictions = _extract(artifact, validation, settings, None)
                    right = sum(p.fields == ex.fields for p, ex in zip(predictions, validation))
                    return {"exact_match": right / len(validation)}
                predictions = _classify(task, artifact, validation, settings, None, scoring=scoring)
            finally:
                artifact.state.pop("serving_model")
            metrics = classification_metrics(task.labels, [ex.label for ex in validation], [p.label for p in predictions])
            return {k: v for k, v in metrics.items() if isinstance(v, float)}

        if task.type == "extraction":  # a record is right only if every field matches
            settings = {**settings, "metric_for_best_model": "exact_match"}

        with progress.phase("prepare"):
            train_rows, validation_rows = [encode(ex) for ex in train], [encode(ex) for ex in validation]
        model, info = train_with_trainer(
            model=model,
            tokenizer=tokenizer,
            train_rows=train_rows,
            validation_rows=validation_rows,
            settings=settings,
            training_argument_names=list(TRAINING_ARGUMENTS),
            workdir=workdir,
            progress=progress,
            device=device,
            collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, padding=True),
            evaluate=evaluate,
            compute_loss=answer_loss,
        )
        artifact.info.update(info, truncated_train=truncated, answer_loss=settings["answer_loss"])
        artifact.train_samples = len(train) * settings["num_train_epochs"]
        if truncated:
            artifact.notes.append(f"articles cut to fit max_length in {truncated} of {len(train)} training prompts")
        artifact.path = workdir / "model"
        with progress.phase("save"):
            model.save_pretrained(artifact.path)
            tokenizer.save_pretrained(artifact.path)
    artifact.state["model"] = model.eval()
    describe_model(artifact, model, settings["model"], device)
    return artifact


def answer_loss(model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
    """Cross-entropy on the answer tokens, computing vocabulary logits only where there is an answer
    token to predict: with a 151k-token vocabulary the full logits would cost far more than the model.

    With ``num_items_in_batch`` (answer tokens in the whole accumulated batch) the sum is divided by it,
    so gradient accumulation gives the same gradient as one large batch."""
    import torch

    labels, mask = inputs["labels"], inputs["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    hidden = model.model(input_ids=inputs["input_ids"], attention_mask=mask, position_ids=positions).last_hidden_state
    # Position t predicts token t + 1.
    targets = labels[:, 1:]
    where = targets != -100
    logits = model.lm_head(hidden[:, :-1][where])
    if num_items_in_batch is None:
        return torch.nn.functional.cross_entropy(logits.float(), targets[where])
    total = torch.nn.functional.cross_entropy(logits.float(), targets[where], reduction="sum")
    return total / num_items_in_batch


@hookimpl
def harness_load(task: Task, artifact: Artifact, settings: dict[str, Any]) -> Serving:
    """The model on its device in the serving dtype, once per artifact: the model trained in this process,
    else the stored one, else (nothing trained: zero-shot) the base model."""
    from harness.models import pick_device, pick_dtype
    from harness.packing import NOTE as PACKED_NOTE
    from harness.packing import use_packing

    if "serving_model" not in artifact.state:
        device = pick_device(settings["device"])
        model = artifact.state.pop("model", None)  # one copy: the serving one
        tokenizer = artifact.state.get("tokenizer")
        if model is None:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            if artifact.path is not None:
                tokenizer = AutoTokenizer.from_pretrained(str(artifact.path))
                model = AutoModelForCausalLM.from_pretrained(str(artifact.path))
            else:
                tokenizer = _tokenizer(settings)
                model = _base_model(settings, tokenizer)
        dtype = pick_dtype(device)
        model = model.to(device).eval()
        # Cast parameters only: the rotary-embedding frequencies (buffers) stay fp32, as in training.
        for parameter in model.parameters():
            parameter.data = parameter.data.to(dtype)
        artifact.state.update(serving_model=model, tokenizer=tokenizer, device=device,
                              prompter=artifact.state.get("prompter") or Prompter(task, tokenizer, settings),
                              dtype=str(dtype).removeprefix("torch."))
    device = artifact.state["device"]
    # Packing serves letter scoring, one forward per batch; generation and the likelihoods pad.
    artifact.state["packed"] = (task.type == "classification" and settings["scoring"] == "letter" and use_packing(
        artifact.state["serving_model"], device, settings.get("packing", "auto"), decoder=True, where="qwen.packing"))
    return Serving(device=device, dtype=artifact.state["dtype"], batch_size=64 if device.startswith("cuda") else 16,
                   notes=[PACKED_NOTE] if artifact.state["packed"] else [])


@hookimpl
def harness_predict(
    task: Task, artifact: Artifact, examples: list[Example], settings: dict[str, Any], progress: Any
) -> list[Prediction]:
    serving = harness_load(task, artifact, settings)
    settings = {**settings, "predict_batch_size": settings.get("predict_batch_size") or serving.batch_size}
    if task.type == "extraction":
        return _extract(artifact, examples, settings, progress)
    return _classify(task, artifact, examples, settings, progress)


@hookimpl
def harness_reference(task: Task, artifact: Artifact, settings: dict[str, Any]) -> Any:
    """The model called by hand on the serving model, as a user would: the chat template, the tokenizer
    (left padding), then for classification one forward pass and the option letters' logits at the last
    position; for extraction greedy ``generate`` to the end of the turn and the decoded answers."""
    import torch

    model, tokenizer, device, prompter = (artifact.state[k] for k in ("serving_model", "tokenizer", "device", "prompter"))

    def forward(texts: list[str]) -> list[Any]:
        with torch.inference_mode():
            prompts = [prompter._wrap(text) for text in texts]  # the chat template, as a user would apply it
            batch = tokenizer(prompts, padding=True, padding_side="left", add_special_tokens=False,
                              return_tensors="pt").to(device)
            if task.type == "extraction":
                out = model.generate(**batch, max_new_tokens=settings["max_new_tokens"], do_sample=False,
                                     eos_token_id=prompter.end_ids or None, pad_token_id=tokenizer.pad_token_id)
                return tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
            return model(**batch, logits_to_keep=1).logits[:, -1, prompter.option_tokens].argmax(-1).tolist()

    return forward


def _tokenizer(settings: dict[str, Any]):
    from transformers import AutoTokenizer

    from harness.models import from_pretrained

    tokenizer = from_pretrained(AutoTokenizer, settings["tokenizer"] or settings["model"])
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _base_model(settings: dict[str, Any], tokenizer: Any):
    """fp32 weights to train (the Trainer adds bf16 autocast on CUDA); serving casts to bf16 on CUDA.
    Qwen3's checkpoint and config say bfloat16, which on CPU would mean training in bf16."""
    import torch
    from transformers import AutoModelForCausalLM

    from harness.models import from_pretrained, load_config

    if not settings.get("random_weights"):
        return from_pretrained(AutoModelForCausalLM, settings["model"], dtype=torch.float32)
    config = load_config(settings["model"])
    config.vocab_size = max(config.vocab_size, len(tokenizer))
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def _left_padded(rows: list[list[int]], pad: int, device: str):
    """A left-padded batch with position ids that start at 0 on every row's first real token, so a
    padded row computes exactly what it would alone."""
    import torch

    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return input_ids.to(device), mask.to(device), positions.to(device)


def _classify(task: Task, artifact: Artifact, examples: list[Example], settings: dict[str, Any], progress: Any,
              scoring: str | None = None) -> list[Prediction]:
    """``scoring`` defaults to the setting; evaluation during training passes its own."""
    import torch

    from harness.models import length_buckets
    from harness.packing import packed_last_logits, packing_if_it_saves

    model, prompter, device = artifact.state["serving_model"], artifact.state["prompter"], artifact.state["device"]
    scoring = scoring or settings["scoring"]
    reserve = max(len(ids) for ids in prompter.answer_ids) + len(prompter.end_ids)
    prompts, cut = zip(*(prompter.prompt_ids(ex.text, reserve=reserve) for ex in examples)) if examples else ((), ())
    batch_size = settings.get("predict_batch_size") or 16
    batches = length_buckets([len(p) for p in prompts], batch_size, settings["bucket_by_length"])
    if progress is not None:
        batches = progress.track(batches, "predict", total=len(examples), weight=len)
    predictions: list[Prediction | None] = [None] * len(examples)
    pad = artifact.state["tokenizer"].pad_token_id
    # Packed where harness_load chose it (letter scoring, serving; not evaluation during training).
    packs = bool(artifact.state.get("packed")) and scoring == "letter"
    with torch.inference_mode(), packing_if_it_saves(packed_last_logits, model, packs, len(examples),
                                                     batch_size) as packed:
        for batch in batches:
            if scoring == "letter":
                log_probs = _letter_scores(model, [prompts[i] for i in batch], prompter, pad, device, packed)
            else:
                log_probs = [_likelihood_scores(model, prompts[i], prompter, device, per_token=scoring == "perplexity")
                             for i in batch]
            for i, scores in zip(batch, log_probs):
                probabilities = torch.tensor(scores).softmax(-1).tolist()
                named = dict(zip(task.labels, probabilities))
                predictions[i] = Prediction(label=max(named, key=named.__getitem__), scores=named, truncated=cut[i])
    return predictions  # type: ignore[return-value]


def _letter_scores(model: Any, prompts: list[list[int]], prompter: Prompter, pad: int, device: str,
                   packed: Any = None) -> list[list[float]]:
    """One forward pass, left-padded or ``packed`` (harness.packing.packed_last_logits); only the last
    position's logits, and of those only the option tokens."""
    if packed is not None and len(prompts) > 1:
        logits = packed(prompts)
    else:
        input_ids, mask, positions = _left_padded(prompts, pad, device)
        logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, logits_to_keep=1).logits[:, -1]
    return logits.float().log_softmax(-1)[:, prompter.option_tokens].tolist()


@functools.cache
def _cache_renamed(model_class: type) -> bool:
    """transformers 5.24 renamed the KV cache from past_key_values to cache, in and out; older 5.x has the old
    name. Read once per model class, not once per prompt."""
    import inspect

    return "cache" in inspect.signature(model_class.forward).parameters


def _likelihood_scores(model: Any, prompt: list[int], prompter: Prompter, device: str, per_token: bool = False) -> list[float]:
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
    width = max(len(a) for a in answers)
    tokens = torch.zeros((len(answers), width), dtype=torch.long, device=device)
    answer_mask = torch.zeros((len(answers), width), dtype=torch.long, device=device)
    for i, ids in enumerate(answers):
        tokens[i, : len(ids)] = torch.tensor(ids)
        answer_mask[i, : len(ids)] = 1
    mask = torch.cat([torch.ones((len(answers), len(prompt)), dtype=torch.long, device=device), answer_mask], dim=1)
    positions = torch.arange(len(prompt), len(prompt) + width, device=device).expand(len(answers), -1)
    logits = model(input_ids=tokens, attention_mask=mask, position_ids=positions,
                   **{"cache" if renamed else "past_key_values": cache}).logits
    log_probs = logits.float().log_softmax(-1)
    scores = []
    for i, ids in enumerate(answers):
        score = first[ids[0]].item()
        for t in range(1, len(ids)):
            score += log_probs[i, t - 1, ids[t]].item()
        scores.append(score / len(ids) if per_token else score)
    return scores


def _extract(artifact: Artifact, examples: list[Example], settings: dict[str, Any], progress: Any) -> list[Prediction]:
    """Greedy generation until the end of the turn, one batch at a time; the answer must be a JSON object."""
    import torch

    from harness.models import length_buckets

    model, prompter, device = artifact.state["serving_model"], artifact.state["prompter"], artifact.state["device"]
    tokenizer = artifact.state["tokenizer"]
    prompts, cut = zip(*(prompter.prompt_ids(ex.text, reserve=settings["max_new_tokens"]) for ex in examples)) \
        if examples else ((), ())
    batches = length_buckets([len(p) for p in prompts], settings.get("predict_batch_size") or 16)
    predictions: list[Prediction | None] = [None] * len(examples)
    if progress is not None:
        batches = progress.track(batches, "generate", total=len(examples), weight=len)
    with torch.inference_mode():
        for batch in batches:
            input_ids, mask, _ = _left_padded([prompts[i] for i in batch], tokenizer.pad_token_id, device)
            out = model.generate(
                input_ids=input_ids, attention_mask=mask, max_new_tokens=settings["max_new_tokens"], do_sample=False,
                eos_token_id=prompter.end_ids or None, pad_token_id=tokenizer.pad_token_id,
            )
            for row, i in enumerate(batch):
                raw = tokenizer.decode(out[row, input_ids.shape[1] :], skip_special_tokens=True).strip()
                predictions[i] = Prediction(fields=parse_fields(raw), raw=raw, truncated=cut[i])
    return predictions  # type: ignore[return-value]


def parse_fields(raw: str) -> dict[str, str] | None:
    """The JSON object in a generated answer, or None when there is none (a wrong answer, not a crash)."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return None
    if not isinstance(value, dict):
        return None
    return {str(k): "" if v is None else str(v) for k, v in value.items()}
