"""The Hugging Face Trainer as harness approaches use it: settings under TrainingArguments names,
shuffled length buckets, progress bars and log lines through ``progress``, the best checkpoint kept."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any, Callable

from harness.types import Artifact


def steps(value: float) -> float | int:
    """HF reads a float below 1 as a fraction of all training steps and anything else as a step count."""
    return int(value) if value >= 1 else value


def train_with_trainer(
    *,
    model: Any,
    tokenizer: Any,
    train_rows: list[dict[str, Any]],
    validation_rows: list[dict[str, Any]],
    settings: dict[str, Any],
    training_argument_names: list[str],
    workdir: Path,
    progress: Any,
    device: str,
    collator: Any,
    compute_metrics: Callable[[Any], dict[str, float]] | None = None,
    evaluate: Callable[[Any], dict[str, float]] | None = None,
    compute_loss: Callable[[Any, dict[str, Any], Any], Any] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Train ``model`` and return it (the best checkpoint when there is validation) with what to record.

    Either ``compute_metrics`` (the Trainer's, over eval logits) or ``evaluate`` (called with the
    model, returning metrics without the ``eval_`` prefix) supplies the validation metrics.
    ``compute_loss(model, inputs, num_items_in_batch)`` replaces the model's own loss; it must divide
    by ``num_items_in_batch`` (the answer tokens in the whole accumulated batch) when that is given,
    as the Trainer then does not divide by the gradient-accumulation steps.
    """
    import torch
    import transformers
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    from harness.models import LengthBucketSampler

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # harness draws its own bars
    has_validation = bool(validation_rows)
    batch = settings["per_device_train_batch_size"] * settings["gradient_accumulation_steps"]
    total_steps = max(1, math.ceil(math.ceil(len(train_rows) / batch) * settings["num_train_epochs"]))
    args = TrainingArguments(
        output_dir=str(workdir / "checkpoints"),
        eval_strategy="steps" if has_validation else "no",
        save_strategy="steps" if has_validation else "no",
        save_steps=steps(settings["eval_steps"]),
        save_total_limit=1,
        save_only_model=True,
        load_best_model_at_end=has_validation and settings["load_best_model_at_end"],
        bf16=device.startswith("cuda") and torch.cuda.is_bf16_supported(),
        use_cpu=device == "cpu",
        disable_tqdm=True,
        report_to="none",
        # Our sampler replaces the Trainer's; its own strategies pass through by name.
        **({} if settings["train_sampler"] == "length_buckets" else {"train_sampling_strategy": settings["train_sampler"]}),
        **{key: steps(settings[key]) if key.endswith("_steps") else settings[key] for key in training_argument_names},
    )

    class Progress(TrainerCallback):
        last_loss: float | None = None
        last_eval_step = -1

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            bar.advance(1)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
            logs = dict(logs or {})
            is_eval = any(k.startswith("eval_") for k in logs)
            if is_eval and state.global_step == self.last_eval_step:
                return  # the Trainer reports the evaluation at the last step twice
            if is_eval:
                self.last_eval_step = state.global_step
            if "loss" in logs:
                self.last_loss = logs["loss"]
            entry = {"step": state.global_step, "epoch": state.epoch, **logs}
            if is_eval:
                entry["train_loss"] = self.last_loss
            progress.log(**entry)

    class HarnessTrainer(Trainer):
        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            if settings["train_sampler"] != "length_buckets":
                return super()._get_train_sampler(train_dataset)
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            lengths = [len(row["input_ids"]) for row in dataset]
            return LengthBucketSampler(lengths, self.args.per_device_train_batch_size, self.args.seed)

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
            if compute_loss is None:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss = compute_loss(model, inputs, num_items_in_batch)
            return (loss, None) if return_outputs else loss

        def evaluate(self, eval_dataset: Any = None, ignore_keys: Any = None, metric_key_prefix: str = "eval") -> dict[str, float]:
            if evaluate is None:
                return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
            self.model.eval()
            metrics = {f"{metric_key_prefix}_{k}": v for k, v in evaluate(self.model).items()}
            self.model.train()
            self.log(metrics)
            return metrics

    trainer = HarnessTrainer(
        model=model,
        args=args,
        train_dataset=train_rows,
        eval_dataset=validation_rows or None,
        processing_class=tokenizer,
        data_collator=collator,
        compute_metrics=compute_metrics,
        callbacks=[Progress()],
    )
    trainer.remove_callback(PrinterCallback)  # log lines reach the terminal through progress.log instead
    with progress.bar("train", total_steps) as bar:
        result = trainer.train()
    shutil.rmtree(workdir / "checkpoints", ignore_errors=True)
    best = trainer.state.best_model_checkpoint
    info = {
        "train_samples": len(train_rows) * settings["num_train_epochs"],
        "best_checkpoint": best and Path(best).name,
        "best_metric": trainer.state.best_metric,
        "train_loss": result.training_loss,
    }
    return trainer.model, info


def describe_model(artifact: Artifact, model: Any, name: str, device: str) -> None:
    """Record what every transformers approach records about its model."""
    from harness.models import count_parameters

    artifact.info.update(
        parameters=count_parameters(model),
        model=name,
        dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
        device=device,
    )
