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

The prompt, the loss, scoring and generation are :mod:`harness.decoder`'s, shared with every decoder
approach; this module loads the model and tokenizer, trains with the Hugging Face Trainer and serves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from harness import Approach, Artifact, Example, Prediction, RunContext, Serving, Task, hookimpl, setting
from harness.decoder import (Prompter, answer_loss, check_letter_scoring, classify, extract, generate,
                             selection_scoring)
from harness.hf_trainer import TRAINING_ARGUMENTS, TrainerSettings


class QwenSettings(TrainerSettings):
    model: str = setting("Qwen/Qwen3-0.6B", model=True, help="a hub id, a local directory or one .gguf file")
    tokenizer: str = setting("", model=True, help="empty: the model's own")
    max_length: int = setting(512, ge=1, help="the seed's cutoff: prompt and answer together")
    # letter | perplexity (mean log-probability per answer token) | likelihood (the sum)
    scoring: Literal["letter", "perplexity", "likelihood"] = setting("letter", predict=True)
    # letter: "C"; label: the option's text, several tokens (needs perplexity or likelihood)
    answer: Literal["letter", "label"] = setting("letter")
    # turn: the whole assistant turn, as the seed's recipe; letter: answer and end of turn
    answer_loss: Literal["turn", "letter"] = setting("turn")
    chat_template: bool = setting(True, help="use the tokenizer's chat template (thinking off) when it has one")
    # Written before the answer unless the template already does. Empty: only what the template writes with
    # thinking off, which is Qwen3's empty <think></think> block and nothing for a template without thinking.
    think_prefix: str = setting("")
    max_new_tokens: int = setting(256, ge=1, help="extraction: the longest answer generated")
    predict_batch_size: int = setting(0, ge=0, predict=True, help="0: 64 on CUDA, 16 on CPU")
    bucket_by_length: bool = setting(True, predict=True, help="False: predict in file order (the baseline)")
    # auto: letter scoring packs each batch end to end on CPU (harness.packing) where the model family allows
    # it, pads elsewhere; packed (an error where it cannot); padded.
    packing: Literal["auto", "packed", "padded"] = setting("auto", predict=True)
    device: str = setting("auto", predict=True, help="where the model serves: a GPU-trained model may serve on CPU")
    # Seed 000's training settings.
    learning_rate: float = setting(1.2e-5, gt=0)
    num_train_epochs: float = setting(1.0, ge=0, help="0: the untuned model with the same prompt (zero-shot)")
    per_device_train_batch_size: int = setting(12, ge=1)
    gradient_accumulation_steps: int = setting(8, ge=1)
    lr_scheduler_type: str = setting("cosine")
    warmup_steps: float = setting(0.01, ge=0)
    eval_steps: float = setting(0.2, gt=0)
    logging_steps: float = setting(0.01, gt=0)


DEFAULTS: dict[str, Any] = QwenSettings().as_dict()


class Qwen(Approach):
    """Full fine-tuning of a decoder on the spec's prompt; its settings typed, its work done by the
    dict-based functions below (shared with evaluation during training)."""

    name = "qwen"
    task_types = ("classification", "extraction")
    settings = QwenSettings
    description = "causal LM fine-tuned on a multiple-choice prompt; scored by option likelihood"

    def train(self, task: Task, train: list[Example], validation: list[Example], settings: QwenSettings,
              context: RunContext) -> Artifact:
        return _train(task, train, validation, _as_dict(settings, context), context.workdir, context.progress)

    def load(self, task: Task, artifact: Artifact, settings: QwenSettings, context: RunContext) -> Serving:
        return _load(task, artifact, _as_dict(settings, context))

    def predict(self, task: Task, artifact: Artifact, examples: list[Example], settings: QwenSettings,
                context: RunContext) -> list[Prediction]:
        return _predict(task, artifact, examples, _as_dict(settings, context), context.progress)

    def reference(self, task: Task, artifact: Artifact, settings: QwenSettings, context: RunContext) -> Any:
        return _reference(task, artifact, _as_dict(settings, context))


def _as_dict(settings: QwenSettings, context: RunContext) -> dict[str, Any]:
    """The settings as the functions below (and harness.decoder's Prompter) read them, with the run's values."""
    return {**settings.as_dict(), "seed": context.seed, "random_weights": context.random_weights,
            "predict_batch_size": context.batch_size or settings.predict_batch_size}


@hookimpl
def harness_register_approaches(register: Any) -> None:
    register(Qwen())


def _train(
    task: Task, train: list[Example], validation: list[Example], settings: dict[str, Any], workdir: Path, progress: Any
) -> Artifact:
    from transformers import DataCollatorForSeq2Seq

    from harness.hf_trainer import describe_model, train_with_trainer
    from harness.metrics import classification_metrics
    from harness.models import pick_device

    device = pick_device(settings["train_device"])
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
            if task.type == "extraction":
                predictions = _extract(current, prompter, device, validation, settings)
                right = sum(p.fields == ex.fields for p, ex in zip(predictions, validation))
                return {"exact_match": right / len(validation)}
            predictions = _classify(current, prompter, device, validation, settings, scoring=scoring)
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


def _load(task: Task, artifact: Artifact, settings: dict[str, Any]) -> Serving:
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


def _predict(
    task: Task, artifact: Artifact, examples: list[Example], settings: dict[str, Any], progress: Any
) -> list[Prediction]:
    serving = _load(task, artifact, settings)
    settings = {**settings, "predict_batch_size": settings.get("predict_batch_size") or serving.batch_size}
    model, prompter = artifact.state["serving_model"], artifact.state["prompter"]
    if task.type == "extraction":
        return _extract(model, prompter, serving.device, examples, settings, progress)
    # Packed where harness_load chose it (letter scoring, serving; never evaluation during training).
    return _classify(model, prompter, serving.device, examples, settings, progress, packed=artifact.state["packed"])


def _reference(task: Task, artifact: Artifact, settings: dict[str, Any]) -> Any:
    """The model called by hand on the serving model, as a user would: the chat template, the tokenizer
    (left padding), then for classification one forward pass and the option letters' logits at the last
    position; for extraction greedy ``generate`` to the end of the turn and the decoded answers."""
    import torch

    model, tokenizer, device, prompter = (artifact.state[k] for k in ("serving_model", "tokenizer", "device", "prompter"))

    def forward(texts: list[str]) -> list[Any]:
        with torch.inference_mode():
            prompts = [prompter.prompt_text(text) for text in texts]  # the chat template, as a user would apply it
            batch = tokenizer(prompts, padding=True, padding_side="left", add_special_tokens=False,
                              return_tensors="pt").to(device)
            if task.type == "extraction":
                return generate(model, prompter, batch["input_ids"], batch["attention_mask"], settings["max_new_tokens"])
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


def _classify(model: Any, prompter: Prompter, device: str, examples: list[Example], settings: dict[str, Any],
              progress: Any = None, scoring: str | None = None, packed: bool = False) -> list[Prediction]:
    """harness.decoder.classify with this approach's settings; ``scoring`` defaults to the setting
    (evaluation during training passes its own)."""
    return classify(model, prompter, device, examples, batch_size=settings.get("predict_batch_size") or 16,
                    scoring=scoring or settings["scoring"], bucket_by_length=settings["bucket_by_length"],
                    packed=packed, progress=progress)


def _extract(model: Any, prompter: Prompter, device: str, examples: list[Example], settings: dict[str, Any],
             progress: Any = None) -> list[Prediction]:
    return extract(model, prompter, device, examples, max_new_tokens=settings["max_new_tokens"],
                   batch_size=settings.get("predict_batch_size") or 16, progress=progress)
