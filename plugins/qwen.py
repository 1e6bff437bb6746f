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
from typing import Any

from harness import ApproachInfo, Artifact, Example, Prediction, Serving, Task, hookimpl
from harness.decoder import (SCORINGS, Prompter, answer_loss, check_letter_scoring, classify, extract, generate,
                             selection_scoring)

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
    "train_device": "auto",  # where training runs (part of what was trained): auto is CUDA where there is one
    "device": "auto",  # where the model serves (a predict setting): a GPU-trained model may serve on CPU
    "mixed_precision": "auto",  # auto: bf16 autocast on a CUDA GPU that supports it; bf16; no
    "load_best_model_at_end": True,
    "train_sampler": "length_buckets",
    **TRAINING_ARGUMENTS,
}

@hookimpl
def harness_describe() -> ApproachInfo:
    from harness.hf_trainer import MIXED_PRECISION
    from harness.packing import PACKING
    from harness.hf_trainer import TRAIN_SAMPLERS

    return ApproachInfo(
        task_types=("classification", "extraction"),
        settings=DEFAULTS,
        description="causal LM fine-tuned on a multiple-choice prompt; scored by option likelihood",
        predict_settings=("predict_batch_size", "device", "bucket_by_length", "scoring", "packing"),
        choices={"packing": PACKING, "scoring": SCORINGS, "answer": ("letter", "label"),
                 "answer_loss": ("turn", "letter"), "train_sampler": TRAIN_SAMPLERS, "mixed_precision": MIXED_PRECISION},
        limits={"max_new_tokens": (1, None)},
    )


@hookimpl
def harness_train(
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
    model, prompter = artifact.state["serving_model"], artifact.state["prompter"]
    if task.type == "extraction":
        return _extract(model, prompter, serving.device, examples, settings, progress)
    # Packed where harness_load chose it (letter scoring, serving; never evaluation during training).
    return _classify(model, prompter, serving.device, examples, settings, progress, packed=artifact.state["packed"])


@hookimpl
def harness_reference(task: Task, artifact: Artifact, settings: dict[str, Any]) -> Any:
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
