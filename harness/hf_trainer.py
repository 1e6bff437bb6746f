"""The Hugging Face Trainer as harness approaches use it: settings under TrainingArguments names,
shuffled length buckets, progress bars, log lines and timed phases through ``progress``, the best
checkpoint kept, mixed precision and gradient accumulation made explicit."""

from __future__ import annotations

import contextlib
import json
import math
import shutil
from pathlib import Path
from typing import Any, Callable, Literal

from harness.approach import Settings, setting
from harness.storage import checkpoint_saved, checkpoint_step
from harness.types import Artifact

PHASES_FILE = "harness_phases.json"  # in each checkpoint: the phases' seconds up to it


def steps(value: float) -> float | int:
    """HF reads a float below 1 as a fraction of all training steps and anything else as a step count."""
    return int(value) if value >= 1 else value


MIXED_PRECISION = ("auto", "bf16", "no")
TRAIN_SAMPLERS = ("length_buckets", "random", "group_by_length", "sequential")


class TrainerSettings(Settings):
    """The settings every approach trained with the Hugging Face Trainer has, under the names users know
    from ``TrainingArguments``, with their ranges. An approach subclasses it and redeclares the defaults it
    wants (bert's and qwen's are their seeds'); :data:`TRAINING_ARGUMENTS` go to TrainingArguments as they are."""

    learning_rate: float = setting(5e-5, gt=0)
    num_train_epochs: float = setting(1.0, ge=0, help="0: no training (zero-shot, or an untrained head for speed)")
    per_device_train_batch_size: int = setting(8, ge=1)
    per_device_eval_batch_size: int = setting(64, ge=1)
    gradient_accumulation_steps: int = setting(1, ge=1)
    lr_scheduler_type: str = setting("linear")
    weight_decay: float = setting(0.0, ge=0)
    warmup_steps: float = setting(0.0, ge=0, help="below 1: a fraction of all steps")
    eval_steps: float = setting(
        0.1, gt=0, help="an evaluation and a checkpoint every so many steps; below 1: a fraction"
    )
    logging_steps: float = setting(0.02, gt=0)
    max_grad_norm: float = setting(1.0, ge=0)
    optim: str = setting("adamw_torch")
    metric_for_best_model: str = setting("f1_weighted")
    load_best_model_at_end: bool = setting(True)
    # length_buckets: batches of similar length in shuffled order (harness.models.length_bucket_order);
    # or a Trainer train_sampling_strategy: random, group_by_length, sequential.
    train_sampler: Literal["length_buckets", "random", "group_by_length", "sequential"] = setting("length_buckets")
    mixed_precision: Literal["auto", "bf16", "no"] = setting(
        "auto", help="auto: bf16 autocast on a CUDA GPU that has it (and for decoders on a CPU with bf16 units)"
    )
    train_device: str = setting(
        "auto", help="where training runs (part of what was trained): auto is CUDA where there is one"
    )
    # The same gradients in less memory and more time: each layer keeps only its input and computes its
    # activations again in the backward pass. auto: on where harness.train_memory's estimate of training's peak
    # exceeds the memory available; the run's log says which and why.
    gradient_checkpointing: Literal[True, False, "auto"] = setting(
        "auto", help="recompute layers' activations in the backward pass: less memory, more time, the same model"
    )


TRAINING_ARGUMENTS = (
    "learning_rate",
    "num_train_epochs",
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "lr_scheduler_type",
    "weight_decay",
    "warmup_steps",
    "eval_steps",
    "logging_steps",
    "max_grad_norm",
    "optim",
    "metric_for_best_model",
)


def uses_bf16(setting: str, device: str, cpu_bf16: bool = False) -> bool:
    """``mixed_precision``: auto is bf16 autocast on a CUDA GPU that supports it, and with ``cpu_bf16``
    (decoders) on a CPU with bf16 units (:func:`harness.models.cpu_has_bf16`); fp32 elsewhere. bf16
    forces it (on any CPU); no is fp32 throughout."""
    import torch

    from harness.models import cpu_has_bf16

    if setting == "auto":
        if device.startswith("cuda"):
            return torch.cuda.is_bf16_supported()
        return device == "cpu" and cpu_bf16 and cpu_has_bf16()
    return setting == "bf16"


class LogLines:
    """The training log's lines made from the Trainer's logs: by the callback as training runs, and again from
    a checkpoint's ``log_history`` when a killed run resumes (:func:`harness.runner._log_until`). The step and
    epoch come first; an evaluation, which the Trainer reports twice at the last step, is one line, carrying
    the last training loss before it."""

    def __init__(self) -> None:
        self.last_loss: float | None = None
        self.last_eval_step = -1

    def line(self, step: int, epoch: float | None, logs: dict[str, Any]) -> dict[str, Any] | None:
        is_eval = any(k.startswith("eval_") for k in logs)
        if is_eval and step == self.last_eval_step:
            return None
        if is_eval:
            self.last_eval_step = step
        if "loss" in logs:
            self.last_loss = logs["loss"]
        entry = {"step": step, "epoch": epoch, **logs}
        if is_eval:
            entry["train_loss"] = self.last_loss
        return entry


def log_lines_until(state_file: Path, step: int) -> list[dict[str, Any]] | None:
    """The training log's lines up to ``step``, made again from a checkpoint's ``trainer_state.json`` by the
    callback's own rules (:class:`LogLines`), or None where it cannot be read: what a run resumed from that
    checkpoint logged before it."""
    try:
        history = json.loads(state_file.read_text(encoding="utf-8")).get("log_history") or []
    except (OSError, ValueError):
        return None
    lines = LogLines()
    rebuilt = (
        lines.line(item["step"], item.get("epoch"), {k: v for k, v in item.items() if k != "step"})
        for item in history
        if item.get("step", 0) <= step
    )
    return [entry for entry in rebuilt if entry is not None]


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
    cpu_bf16: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """Train ``model`` and return it (the best checkpoint when there is validation) with what to record.

    Either ``compute_metrics`` (the Trainer's, over eval logits) or ``evaluate`` (called with the
    model, returning metrics without the ``eval_`` prefix) supplies the validation metrics.

    How the loss is normalised is said, not guessed. Without ``compute_loss`` the model's own loss is a
    mean over its micro-batch, and the Trainer divides it by the gradient-accumulation steps. (Left to
    itself the Trainer skips that division for any model whose forward takes ``**kwargs``, as BERT's
    does, and takes steps GA times too large.) ``compute_loss(model, inputs, num_items_in_batch)``
    replaces the model's loss and must divide by ``num_items_in_batch``, the target tokens of the whole
    accumulated batch, so the Trainer does not divide again. It runs under the Trainer's mixed-precision
    autocast, like the model's own forward.
    """
    import transformers
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    from harness.files import write_json
    from harness.models import LengthBucketSampler
    from harness.train_memory import FreedMemory

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # harness draws its own bars
    checkpointing = _checkpointing(model, train_rows, settings, device, progress)
    has_validation = bool(validation_rows)
    batch = settings["per_device_train_batch_size"] * settings["gradient_accumulation_steps"]
    total_steps = max(1, math.ceil(math.ceil(len(train_rows) / batch) * settings["num_train_epochs"]))
    args = TrainingArguments(
        output_dir=str(workdir / "checkpoints"),
        eval_strategy="steps" if has_validation else "no",
        # A whole checkpoint (optimizer, scheduler and RNG states too) every eval_steps, with or without
        # validation: a killed run resumes from the last one (harness.store). The best and the last are kept.
        save_strategy="steps",
        save_steps=steps(settings["eval_steps"]),
        save_total_limit=1,
        load_best_model_at_end=has_validation and settings["load_best_model_at_end"],
        bf16=uses_bf16(settings["mixed_precision"], device, cpu_bf16),
        use_cpu=device == "cpu",
        disable_tqdm=True,
        report_to="none",
        seed=settings["seed"],  # the run's seed (the core's): data order, dropout, the sampler
        # Our sampler replaces the Trainer's; its own strategies pass through by name.
        **(
            {}
            if settings["train_sampler"] == "length_buckets"
            else {"train_sampling_strategy": settings["train_sampler"]}
        ),
        **{key: steps(settings[key]) if key.endswith("_steps") else settings[key] for key in training_argument_names},
    )

    class Progress(TrainerCallback):
        lines = LogLines()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            bar.advance(1)

        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any
        ) -> None:
            entry = self.lines.line(state.global_step, state.epoch, logs or {})
            if entry is not None:
                progress.log(**entry)

    class HarnessTrainer(Trainer):
        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            if settings["train_sampler"] != "length_buckets":
                return super()._get_train_sampler(train_dataset)
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            lengths = [len(row["input_ids"]) for row in dataset]
            return LengthBucketSampler(lengths, self.args.per_device_train_batch_size, self.args.seed)

        def compute_loss(
            self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
        ) -> Any:
            if compute_loss is None:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            # accelerate puts autocast around the model's top-level forward only; a loss that calls the
            # model's parts (the decoder, then the head on a few positions) needs it said here.
            with self.accelerator.autocast():
                loss = compute_loss(model, inputs, num_items_in_batch)
            return (loss, None) if return_outputs else loss

        def evaluate(
            self, eval_dataset: Any = None, ignore_keys: Any = None, metric_key_prefix: str = "eval"
        ) -> dict[str, float]:
            with progress.phase("evaluation"):
                if evaluate is None:
                    return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
                self.model.eval()
                with self.accelerator.autocast():  # the training's precision: bf16 where it trains in bf16
                    metrics = {f"{metric_key_prefix}_{k}": v for k, v in evaluate(self.model).items()}
                self.model.train()
            self.log(metrics)
            return metrics

        def _save_checkpoint(self, model: Any, trial: Any) -> None:
            with progress.phase("save"):
                super()._save_checkpoint(model, trial)
                folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
                if folder.is_dir():  # for a run resumed from this checkpoint: the time and the loss so far
                    loss_sum = self._total_loss_scalar + self._tr_loss.item()
                    write_json(
                        folder / PHASES_FILE,
                        {"phases": progress.snapshot(), "loss_sum": loss_sum, "step": self.state.global_step},
                    )
                checkpoint_saved(Path(self.args.output_dir))  # written back where the unit mirrors to storage

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
    # The two switches the Trainer reads to decide whether to count target tokens and whether to divide
    # the loss by the accumulation steps (transformers' Trainer.training_step), set from what the loss is.
    trainer.model_accepts_loss_kwargs = compute_loss is not None
    trainer.loss_is_scaled_for_ga = compute_loss is not None
    resume = last_checkpoint(Path(args.output_dir))
    before = (
        json.loads((resume / PHASES_FILE).read_text(encoding="utf-8"))
        if resume and (resume / PHASES_FILE).is_file()
        else None
    )
    if before is not None:
        # The killed run's time up to its checkpoint; its load and prepare are done again here and count once.
        progress.carry({name: seconds for name, seconds in before["phases"].items() if name not in ("load", "prepare")})
    with progress.bar("train", total_steps) as bar, progress.phase("train_loop"):
        if resume is not None:
            bar.advance(_step(resume))
        try:
            # On CPU the memory a step frees goes back to the system as it goes (harness.train_memory).
            with FreedMemory().watching(trainer.model) if device == "cpu" else contextlib.nullcontext():
                result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        finally:
            if checkpointing:
                _set_checkpointing(_plain_model(trainer.model), False)
    shutil.rmtree(workdir / "checkpoints", ignore_errors=True)
    best = trainer.state.best_model_checkpoint
    train_loss = result.training_loss
    if before is not None and trainer.state.global_step:
        # The Trainer averages the loss over the steps it ran since resuming; the run's mean covers them all.
        train_loss = (
            before["loss_sum"] + train_loss * (trainer.state.global_step - before["step"])
        ) / trainer.state.global_step
    info = {
        "best_checkpoint": best and Path(best).name,
        "best_metric": trainer.state.best_metric,
        "train_loss": train_loss,
        "mixed_precision": "bf16" if args.bf16 else "no",
        "gradient_checkpointing": checkpointing,
        **({"resumed_from_checkpoint": resume.name} if resume else {}),
    }
    return trainer.model, info


def _plain_model(model: Any) -> Any:
    """The transformers model itself: a peft model's base, whose layers its adapters are injected into."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _set_checkpointing(model: Any, on: bool) -> None:
    """Checkpointing on (non-reentrant) or off, under its newer name (activation checkpointing) where transformers
    has it: the older one warns that it is deprecated."""
    if on:
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        getattr(model, "activation_checkpointing_disable", model.gradient_checkpointing_disable)()


def _checkpointing(
    model: Any, train_rows: list[dict[str, Any]], settings: dict[str, Any], device: str, progress: Any
) -> bool:
    """Turn gradient checkpointing on where ``gradient_checkpointing`` says so (auto: where the estimate of
    :mod:`harness.train_memory` exceeds the memory available), and say which and why in one line of the
    run's log. Checkpointing is non-reentrant (torch.utils.checkpoint, ``use_reentrant=False``): it needs no
    input that requires gradients, so a peft model's frozen embeddings need no hook, and dropout's random
    draws are replayed, so the recomputed activations are the ones the forward pass had."""
    from harness.train_memory import available_memory, estimate_training_memory, use_checkpointing

    setting = settings.get("gradient_checkpointing", False)
    plain = _plain_model(model)
    supported = bool(getattr(plain, "supports_gradient_checkpointing", False))
    if setting is True and not supported:
        raise ValueError(f"gradient_checkpointing: {type(plain).__name__} does not support gradient checkpointing")
    estimate, available, source = None, 0, ""
    if setting == "auto":
        longest = max((len(row["input_ids"]) for row in train_rows), default=0)
        estimate = estimate_training_memory(model, settings["per_device_train_batch_size"], longest)
        if estimate is not None:
            available, source = available_memory(device, estimate.weights)
    on, line = use_checkpointing(setting, estimate, available, source)
    if on and not supported:
        on, line = (
            False,
            line.replace("gradient checkpointing on", "gradient checkpointing off", 1)
            + (f"; {type(plain).__name__} does not support it"),
        )
    if on:
        _set_checkpointing(plain, True)
    progress.log(step=0, note=line)
    return on


def last_checkpoint(folder: Path) -> Path | None:
    """The newest complete Trainer checkpoint a killed run left in ``folder`` (its trainer_state.json is
    written last), or None."""
    if not folder.is_dir():
        return None
    complete = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").is_file() and _step(p) >= 0]
    return max(complete, key=_step, default=None)


def _step(checkpoint: Path) -> int:
    """The step in a Trainer checkpoint's name (``checkpoint-16``), or -1 for a name that has none."""
    return checkpoint_step(checkpoint.name)


def describe_model(artifact: Artifact, model: Any, name: str, device: str) -> None:
    """Fill the Artifact fields every transformers approach records about its model."""
    from harness.models import count_parameters

    artifact.parameters = count_parameters(model)
    artifact.model = name
    artifact.dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    artifact.device = device
