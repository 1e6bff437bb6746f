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

from typing import Any, Literal

from harness import Approach, Artifact, Example, Prediction, RunContext, Serving, Task, hookimpl, setting
from harness.hf_trainer import TRAINING_ARGUMENTS, TrainerSettings


class BertSettings(TrainerSettings):
    model: str = setting("google-bert/bert-base-cased", model=True, help="a hub id or a local directory")
    tokenizer: str = setting("", model=True, help="empty: the model's own")
    max_length: int = setting(512, ge=1)
    # 0: 256 on CUDA; 64 on CPU, where it measured faster (docs/benchmarks.md)
    predict_batch_size: int = setting(0, ge=0, predict=True)
    bucket_by_length: bool = setting(True, predict=True, help="False: predict in file order (the baseline)")
    # auto: packed (padding-free, harness.packing) on CPU where the model family allows it, padded batches
    # elsewhere; packed (an error where it cannot); padded.
    packing: Literal["auto", "packed", "padded"] = setting("auto", predict=True)
    device: str = setting("auto", predict=True, help="where the model serves: a GPU-trained model may serve on CPU")
    # Seed 000's training settings (the rest are TrainerSettings' defaults, said in the module docstring).
    learning_rate: float = setting(1e-5, gt=0)
    num_train_epochs: float = setting(5.0, ge=0)
    per_device_train_batch_size: int = setting(64, ge=1)
    per_device_eval_batch_size: int = setting(256, ge=1)
    lr_scheduler_type: str = setting("cosine")
    weight_decay: float = setting(1e-6, ge=0)


DEFAULTS: dict[str, Any] = BertSettings().as_dict()


class Bert(Approach):
    name = "bert"
    task_types = ("classification",)
    settings = BertSettings
    description = "encoder + linear head (AutoModelForSequenceClassification), HF Trainer"

    def train(
        self, task: Task, train: list[Example], validation: list[Example], settings: BertSettings, context: RunContext
    ) -> Artifact:
        from transformers import DataCollatorWithPadding

        from harness.hf_trainer import describe_model, train_with_trainer
        from harness.metrics import classification_metrics
        from harness.models import pick_device

        device = pick_device(settings.train_device)
        labels = list(task.labels)
        with context.progress.phase("load"):
            tokenizer = _tokenizer(settings)
            model = _new_model(task, settings, tokenizer, context.random_weights)
        if settings.num_train_epochs == 0:  # an untrained head: for speed measurements only
            artifact = Artifact(path=None)
            artifact.state.update(model=model.eval(), tokenizer=tokenizer)
            describe_model(artifact, model, settings.model, device)
            return artifact

        def encode(examples: list[Example]) -> list[dict[str, Any]]:
            if not examples:  # validation: none (the tokenizer fails on an empty batch)
                return []
            enc = tokenizer([ex.text for ex in examples], truncation=True, max_length=settings.max_length)
            return [
                {"input_ids": ids, "attention_mask": mask, "labels": labels.index(ex.label)}
                for ids, mask, ex in zip(enc["input_ids"], enc["attention_mask"], examples)
            ]

        def compute_metrics(eval_pred: Any) -> dict[str, float]:
            logits, gold = eval_pred
            predicted = [labels[i] for i in logits.argmax(-1)]
            metrics = classification_metrics(labels, [labels[i] for i in gold], predicted)
            return {k: v for k, v in metrics.items() if isinstance(v, float)}

        with context.progress.phase("prepare"):
            train_rows, validation_rows = encode(train), encode(validation)
        model, info = train_with_trainer(
            model=model,
            tokenizer=tokenizer,
            train_rows=train_rows,
            validation_rows=validation_rows,
            settings={**settings.as_dict(), "seed": context.seed},
            training_argument_names=list(TRAINING_ARGUMENTS),
            workdir=context.workdir,
            progress=context.progress,
            device=device,
            collator=DataCollatorWithPadding(tokenizer),
            compute_metrics=compute_metrics,
        )
        final = context.workdir / "model"
        with context.progress.phase("save"):
            model.save_pretrained(final)
            tokenizer.save_pretrained(final)
        artifact = Artifact(path=final, train_samples=len(train) * settings.num_train_epochs, info=info)
        artifact.state.update(model=model.eval(), tokenizer=tokenizer)
        describe_model(artifact, model, settings.model, device)
        return artifact

    def load(self, task: Task, artifact: Artifact, settings: BertSettings, context: RunContext) -> Serving:
        """The model on its device in the serving dtype: from training in this process, else from disk."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from harness.models import pick_device, pick_dtype
        from harness.packing import NOTE as PACKED_NOTE
        from harness.packing import use_packing

        if "serving_model" not in artifact.state:
            device = pick_device(settings.device)
            dtype = pick_dtype(device)
            model = artifact.state.get("model")
            tokenizer = artifact.state.get("tokenizer")
            if model is None and artifact.path is not None:
                model = AutoModelForSequenceClassification.from_pretrained(str(artifact.path))
                tokenizer = AutoTokenizer.from_pretrained(str(artifact.path))
            elif model is None:  # nothing was trained: the untrained head of a speed measurement
                tokenizer = _tokenizer(settings)
                model = _new_model(task, settings, tokenizer, context.random_weights)
            artifact.state.pop("model", None)  # one copy: the serving one
            artifact.state.update(
                serving_model=model.to(device=device, dtype=dtype).eval(),
                tokenizer=tokenizer,
                device=device,
                dtype=str(dtype).removeprefix("torch."),
            )
        device = artifact.state["device"]
        artifact.state["packed"] = use_packing(
            artifact.state["serving_model"], device, settings.packing, decoder=False, where="bert.packing"
        )
        return Serving(
            device=device,
            dtype=artifact.state["dtype"],
            batch_size=256 if device.startswith("cuda") else 64,
            notes=[PACKED_NOTE] if artifact.state["packed"] else [],
        )

    def predict(
        self, task: Task, artifact: Artifact, examples: list[Example], settings: BertSettings, context: RunContext
    ) -> list[Prediction]:
        import torch

        from harness.batching import padded
        from harness.models import length_buckets
        from harness.packing import packed_calls, packing_if_it_saves

        batch_size = context.batch_size
        if "serving_model" not in artifact.state or not batch_size:
            batch_size = batch_size or self.load(task, artifact, settings, context).batch_size
        model, tokenizer, device = (artifact.state[k] for k in ("serving_model", "tokenizer", "device"))
        encoded = tokenizer([ex.text for ex in examples], truncation=True, max_length=settings.max_length)["input_ids"]
        batches = length_buckets([len(ids) for ids in encoded], batch_size, settings.bucket_by_length)
        pad = tokenizer.pad_token_id or 0

        def padded_logits(batch: list[int]) -> Any:
            input_ids, attention_mask = padded([encoded[i] for i in batch], pad)
            return model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits

        predictions: list[Prediction | None] = [None] * len(examples)
        with (
            torch.inference_mode(),
            packing_if_it_saves(
                packed_calls, model, artifact.state.get("packed", False), len(examples), batch_size
            ) as packed,
        ):
            for batch in context.progress.track(batches, "predict", total=len(examples), weight=len):
                logits = packed([encoded[i] for i in batch]) if packed and len(batch) > 1 else padded_logits(batch)
                probabilities = logits.float().softmax(-1).cpu().tolist()
                for row, i in enumerate(batch):
                    scores = dict(zip(task.labels, probabilities[row]))
                    predictions[i] = Prediction(label=max(scores, key=scores.__getitem__), scores=scores)
        return predictions  # type: ignore[return-value]

    def reference(self, task: Task, artifact: Artifact, settings: BertSettings, context: RunContext) -> Any:
        """Tokenizer and forward pass by hand, on the serving model: the floor predict is measured against."""
        import torch

        model, tokenizer, device = (artifact.state[k] for k in ("serving_model", "tokenizer", "device"))

        def forward(texts: list[str]) -> None:
            with torch.inference_mode():
                batch = tokenizer(
                    texts, padding=True, truncation=True, max_length=settings.max_length, return_tensors="pt"
                ).to(device)
                model(**batch).logits.argmax(-1).tolist()  # .tolist(): the answers reach the host, as predict's do

        return forward


def _tokenizer(settings: BertSettings):
    from transformers import AutoTokenizer

    from harness.models import from_pretrained

    return from_pretrained(AutoTokenizer, settings.tokenizer or settings.model)


def _new_model(task: Task, settings: BertSettings, tokenizer: Any, random_weights: bool = False):
    from transformers import AutoModelForSequenceClassification

    from harness.models import from_pretrained, load_config

    labels = {
        "num_labels": len(task.labels),
        "id2label": dict(enumerate(task.labels)),
        "label2id": {label: i for i, label in enumerate(task.labels)},
    }
    if not random_weights:
        return from_pretrained(AutoModelForSequenceClassification, settings.model, **labels)
    config = load_config(settings.model, **labels)
    # A stand-in tokenizer may have a larger vocabulary than the architecture: grow the embedding to fit.
    config.vocab_size = max(config.vocab_size, len(tokenizer))
    return AutoModelForSequenceClassification.from_config(config)


@hookimpl
def harness_register_approaches(register: Any) -> None:
    register(Bert())
