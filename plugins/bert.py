"""bert: an encoder with a linear classification head, fine-tuned with the Hugging Face Trainer.

Seed 000's settings (../shared/DESIGN.md): google-bert/bert-base-cased, cosine schedule, lr 1e-5, batch 64,
5 epochs, weight decay 1e-6, max 512 tokens.

Not the seed's, chosen here and said so:
- evaluations: ``eval_steps: 0.1`` is a tenth of all training steps, 10 evaluations over the 5 epochs (the
  seed's cost line counts 10; its settings line says every 0.1 epoch, which would be 50);
- checkpoints are selected on a validation split held out of train (the seed selected on the test set;
  ``validation: test`` in the spec reproduces that), and the best one is kept (``load_best_model_at_end``);
- training batches are length-bucketed in shuffled order (``train_sampler: length_buckets``; ``random`` is
  the Trainer's default the seed used);
- what the seed leaves unsaid takes the Trainer's defaults: no warmup, gradient clipping at 1.0,
  ``adamw_torch``; evaluation batch 256, a log line every 2% of training;
- bf16 autocast on CUDA, fp32 on CPU (``mixed_precision``); ``train_device`` and the serving ``device``.

Prediction runs in length-bucketed batches, packed end to end without padding on CPU (``packing``,
harness.packing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness import ApproachInfo, Artifact, Example, Prediction, Serving, Task, hookimpl

# Settings passed straight to transformers.TrainingArguments, under the names users know.
TRAINING_ARGUMENTS = {
    "learning_rate": 1e-5,
    "num_train_epochs": 5.0,
    "per_device_train_batch_size": 64,
    "per_device_eval_batch_size": 256,
    "gradient_accumulation_steps": 1,
    "lr_scheduler_type": "cosine",
    "weight_decay": 1e-6,
    "warmup_steps": 0.0,
    "eval_steps": 0.1,
    "logging_steps": 0.02,
    "max_grad_norm": 1.0,
    "optim": "adamw_torch",
    "metric_for_best_model": "f1_weighted",
}

DEFAULTS: dict[str, Any] = {
    "model": "google-bert/bert-base-cased",
    "tokenizer": "",  # empty: the model's own
    "max_length": 512,
    "predict_batch_size": 0,  # 0: 256 on CUDA; 64 on CPU, where it measured faster than 256 (MiniLM, 2 cores)
    "bucket_by_length": True,  # False: predict in file order (the baseline bucketing is measured against)
    # auto: packed (padding-free, harness.packing) on CPU where the model family allows it, padded batches
    # elsewhere; packed (an error where it cannot); padded.
    "packing": "auto",
    "train_device": "auto",  # where training runs (part of what was trained): auto is CUDA where there is one
    "device": "auto",  # where the model serves (a predict setting): a GPU-trained model may serve on CPU
    "mixed_precision": "auto",  # auto: bf16 autocast on a CUDA GPU that supports it; bf16; no
    "load_best_model_at_end": True,
    # length_buckets: batches of similar length in shuffled order (harness.models.length_bucket_order);
    # or a Trainer train_sampling_strategy: random (the seed's), group_by_length, sequential.
    "train_sampler": "length_buckets",
    **TRAINING_ARGUMENTS,
}


TRAIN_SAMPLERS = ("length_buckets", "random", "group_by_length", "sequential")


@hookimpl
def harness_describe() -> ApproachInfo:
    from harness.hf_trainer import MIXED_PRECISION
    from harness.packing import PACKING

    return ApproachInfo(
        task_types=("classification",),
        settings=DEFAULTS,
        description="encoder + linear head (AutoModelForSequenceClassification), HF Trainer",
        predict_settings=("predict_batch_size", "device", "bucket_by_length", "packing"),
        choices={"train_sampler": TRAIN_SAMPLERS, "mixed_precision": MIXED_PRECISION, "packing": PACKING},
    )


@hookimpl
def harness_train(
    task: Task, train: list[Example], validation: list[Example], settings: dict[str, Any], workdir: Path, progress: Any
) -> Artifact:
    from transformers import DataCollatorWithPadding

    from harness.hf_trainer import describe_model, train_with_trainer
    from harness.metrics import classification_metrics
    from harness.models import pick_device

    device = pick_device(settings["train_device"])
    labels = list(task.labels)
    with progress.phase("load"):
        tokenizer = _tokenizer(settings)
        model = _new_model(task, settings, tokenizer)
    if settings["num_train_epochs"] == 0:  # an untrained head: for speed measurements only
        artifact = Artifact(path=None)
        artifact.state.update(model=model.eval(), tokenizer=tokenizer)
        describe_model(artifact, model, settings["model"], device)
        return artifact

    def encode(examples: list[Example]) -> list[dict[str, Any]]:
        if not examples:  # validation: none (the tokenizer fails on an empty batch)
            return []
        enc = tokenizer([ex.text for ex in examples], truncation=True, max_length=settings["max_length"])
        return [
            {"input_ids": ids, "attention_mask": mask, "labels": labels.index(ex.label)}
            for ids, mask, ex in zip(enc["input_ids"], enc["attention_mask"], examples)
        ]

    def compute_metrics(eval_pred: Any) -> dict[str, float]:
        logits, gold = eval_pred
        predicted = [labels[i] for i in logits.argmax(-1)]
        metrics = classification_metrics(labels, [labels[i] for i in gold], predicted)
        return {k: v for k, v in metrics.items() if isinstance(v, float)}

    with progress.phase("prepare"):
        train_rows, validation_rows = encode(train), encode(validation)
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
        collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics,
    )
    final = workdir / "model"
    with progress.phase("save"):
        model.save_pretrained(final)
        tokenizer.save_pretrained(final)
    artifact = Artifact(path=final, train_samples=len(train) * settings["num_train_epochs"], info=info)
    artifact.state.update(model=model.eval(), tokenizer=tokenizer)
    describe_model(artifact, model, settings["model"], device)
    return artifact


@hookimpl
def harness_load(task: Task, artifact: Artifact, settings: dict[str, Any]) -> Serving:
    """The model on its device in the serving dtype: from training in this process, else from disk."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from harness.models import pick_device, pick_dtype
    from harness.packing import NOTE as PACKED_NOTE
    from harness.packing import use_packing

    if "serving_model" not in artifact.state:
        device = pick_device(settings["device"])
        dtype = pick_dtype(device)
        model = artifact.state.get("model")
        tokenizer = artifact.state.get("tokenizer")
        if model is None and artifact.path is not None:
            model = AutoModelForSequenceClassification.from_pretrained(str(artifact.path))
            tokenizer = AutoTokenizer.from_pretrained(str(artifact.path))
        elif model is None:  # nothing was trained: the untrained head of a speed measurement
            tokenizer = _tokenizer(settings)
            model = _new_model(task, settings, tokenizer)
        artifact.state.pop("model", None)  # one copy: the serving one
        artifact.state.update(serving_model=model.to(device=device, dtype=dtype).eval(), tokenizer=tokenizer,
                              device=device, dtype=str(dtype).removeprefix("torch."))
    device = artifact.state["device"]
    artifact.state["packed"] = use_packing(artifact.state["serving_model"], device, settings.get("packing", "auto"),
                                           decoder=False, where="bert.packing")
    return Serving(device=device, dtype=artifact.state["dtype"], batch_size=256 if device.startswith("cuda") else 64,
                   notes=[PACKED_NOTE] if artifact.state["packed"] else [])


@hookimpl
def harness_predict(
    task: Task, artifact: Artifact, examples: list[Example], settings: dict[str, Any], progress: Any
) -> list[Prediction]:
    import torch

    from harness.models import length_buckets
    from harness.packing import packed_calls, packing_if_it_saves

    batch_size = settings.get("predict_batch_size")
    if "serving_model" not in artifact.state or not batch_size:
        batch_size = batch_size or harness_load(task, artifact, settings).batch_size
    model, tokenizer, device = (artifact.state[k] for k in ("serving_model", "tokenizer", "device"))
    encoded = tokenizer([ex.text for ex in examples], truncation=True, max_length=settings["max_length"])["input_ids"]
    batches = length_buckets([len(ids) for ids in encoded], batch_size, settings["bucket_by_length"])
    pad = tokenizer.pad_token_id or 0

    def padded(batch: list[int]) -> Any:
        width = max(len(encoded[i]) for i in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            input_ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
            attention_mask[row, : len(encoded[i])] = 1
        return model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits

    predictions: list[Prediction | None] = [None] * len(examples)
    with torch.inference_mode(), packing_if_it_saves(packed_calls, model, artifact.state.get("packed", False), len(examples),
                                                     batch_size) as packed:
        for batch in progress.track(batches, "predict", total=len(examples), weight=len):
            logits = packed([encoded[i] for i in batch]) if packed and len(batch) > 1 else padded(batch)
            probabilities = logits.float().softmax(-1).cpu().tolist()
            for row, i in enumerate(batch):
                scores = dict(zip(task.labels, probabilities[row]))
                predictions[i] = Prediction(label=max(scores, key=scores.__getitem__), scores=scores)
    return predictions  # type: ignore[return-value]


@hookimpl
def harness_reference(task: Task, artifact: Artifact, settings: dict[str, Any]) -> Any:
    """Tokenizer and forward pass by hand, on the serving model: the floor predict is measured against."""
    import torch

    model, tokenizer, device = (artifact.state[k] for k in ("serving_model", "tokenizer", "device"))

    def forward(texts: list[str]) -> None:
        with torch.inference_mode():
            batch = tokenizer(texts, padding=True, truncation=True, max_length=settings["max_length"],
                              return_tensors="pt").to(device)
            model(**batch).logits.argmax(-1).tolist()  # .tolist(): the answers reach the host, as predict's do

    return forward


def _tokenizer(settings: dict[str, Any]):
    from transformers import AutoTokenizer

    from harness.models import from_pretrained

    return from_pretrained(AutoTokenizer, settings["tokenizer"] or settings["model"])


def _new_model(task: Task, settings: dict[str, Any], tokenizer: Any):
    from transformers import AutoModelForSequenceClassification

    from harness.models import from_pretrained, load_config

    labels = {"num_labels": len(task.labels), "id2label": dict(enumerate(task.labels)), "label2id": {l: i for i, l in enumerate(task.labels)}}
    if not settings.get("random_weights"):
        return from_pretrained(AutoModelForSequenceClassification, settings["model"], **labels)
    config = load_config(settings["model"], **labels)
    # A stand-in tokenizer may have a larger vocabulary than the architecture: grow the embedding to fit.
    config.vocab_size = max(config.vocab_size, len(tokenizer))
    return AutoModelForSequenceClassification.from_config(config)
