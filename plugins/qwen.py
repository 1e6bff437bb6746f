"""qwen and qwen-lora: a causal LM tuned on the spec's prompt, all its weights (``qwen``) or a LoRA adapter
(``qwen-lora``); classified without generating, extracted by generating a JSON record.

``qwen``'s defaults are seed 000's: Qwen/Qwen3-0.6B, full fine-tuning, lr 1.2e-5, batch 12 x gradient
accumulation 8, warmup 1%, 1 epoch, cosine, cutoff 512, an evaluation (and checkpoint) every 0.2 of
training; the loss is on the answer only. ``qwen-lora``'s are seed 001's: rank 8, alpha 32, every linear
layer, lr 1e-4, 10 epochs, batch 20 x gradient accumulation 16, cutoff 2048, warmup 5%.

The loss covers the whole assistant turn by default (``answer_loss: turn``, the seeds' recipe: the
thinking block the chat template writes, the answer and the end of turn); ``answer_loss: letter`` covers
the answer and end of turn only.

Classification needs one forward pass per prompt: with ``scoring: letter`` the logits of the option
letters at the last prompt position give each option's probability (only that position's logits are
computed). With ``scoring: perplexity`` (seed 000's "lowest perplexity") each option's answer is scored
by its mean log-probability per token, and with ``scoring: likelihood`` by the sum, all options in one
batch that reuses the prompt's KV cache. Checkpoints are selected with letter scoring when every answer
is one distinct token, else with perplexity, whatever ``scoring`` says: scoring is a predict setting.
Extraction generates greedily (batched, left padded, KV cache, each row stopping at its end of turn, the
model's generation_config applied as ``generate`` applies it: the row's notes say which rule decoded) and
parses the JSON record; checkpoints are selected on exact record. ``num_train_epochs: 0`` asks the untuned
model with the same prompt (zero-shot).

Precision: on a CUDA GPU with bf16, and on a CPU with bf16 units (AVX512-BF16 or AMX), training runs under
bf16 autocast (``mixed_precision: auto``) and the model serves in bf16 (``dtype: auto``); elsewhere fp32.
``dtype: float32`` serves in fp32 anywhere.

Memory: the loss computes vocabulary logits only at answer tokens, a few hundred at a time, and
``gradient_checkpointing`` (a Trainer setting, :mod:`harness.train_memory`) keeps only each layer's input for the
backward pass where training would not fit the memory available (``auto``, the default), or wherever it is true.

The prompt, the loss, scoring and generation are the core's (:mod:`harness.decoder`,
:mod:`harness.decoder_scoring`, :mod:`harness.decoder_generation`), shared with every decoder approach; this
module loads the model and tokenizer, adds the adapter, trains with the Hugging Face Trainer and serves.
"""

from __future__ import annotations

from typing import Any, Literal

from harness import Approach, Artifact, Example, Parity, Prediction, RunContext, Serving, Task, hookimpl, setting
from harness.decoder import Prompter
from harness.decoder_generation import decoding_note, extract, generate
from harness.decoder_scoring import answer_loss, check_letter_scoring, classify, selection_scoring
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
    answer_reserve: int = setting(
        256, ge=1, help="extraction: the room a training prompt keeps for its answer when it is cut to max_length"
    )
    max_new_tokens: int = setting(256, ge=1, predict=True, help="extraction: the longest answer generated")
    predict_batch_size: int = setting(
        0, ge=0, predict=True, help="0: 64 on CUDA; on CPU 16 (classification), 64 (extraction)"
    )
    bucket_by_length: bool = setting(True, predict=True, help="False: predict in file order (the baseline)")
    # auto: letter scoring packs each batch end to end on CPU (harness.packing) where the model family allows
    # it, pads elsewhere; packed (an error where it cannot); padded.
    packing: Literal["auto", "packed", "padded"] = setting("auto", predict=True)
    device: str = setting("auto", predict=True, help="where the model serves: a GPU-trained model may serve on CPU")
    dtype: Literal["auto", "bfloat16", "float32"] = setting(
        "auto", predict=True, help="the serving dtype; auto: bf16 on a CUDA GPU or a CPU with bf16 units, else fp32"
    )
    # Seed 000's training settings.
    learning_rate: float = setting(1.2e-5, gt=0)
    num_train_epochs: float = setting(1.0, ge=0, help="0: the untuned model with the same prompt (zero-shot)")
    per_device_train_batch_size: int = setting(12, ge=1)
    gradient_accumulation_steps: int = setting(8, ge=1)
    lr_scheduler_type: str = setting("cosine")
    warmup_steps: float = setting(0.01, ge=0)
    eval_steps: float = setting(0.2, gt=0)
    logging_steps: float = setting(0.01, gt=0)


class QwenLoraSettings(QwenSettings):
    lora_r: int = setting(8, ge=1, help="the adapter's rank")
    lora_alpha: float = setting(32.0, gt=0, help="the adapter's scale is lora_alpha / lora_r")
    lora_dropout: float = setting(0.05, ge=0, lt=1)
    target_modules: str = setting(
        "all-linear",
        help="the layers that get an adapter: all-linear (every linear "
        "layer but the output head), or module names separated by commas",
    )
    merge: bool = setting(
        False,
        predict=True,
        help="serve with the adapter merged into the weights (checked "
        "against the unmerged adapter on parity_samples test examples)",
    )
    merge_min_agreement: float = setting(
        1.0, ge=0, le=1, predict=True, help="merge: the share of parity answers that must equal the unmerged ones"
    )
    parity_samples: int = setting(32, ge=1, predict=True, help="merge: test examples the parity check answers")
    # Seed 001's training settings.
    learning_rate: float = setting(1e-4, gt=0)
    num_train_epochs: float = setting(10.0, ge=0, help="0: the base model with the same prompt (zero-shot)")
    per_device_train_batch_size: int = setting(20, ge=1)
    gradient_accumulation_steps: int = setting(16, ge=1)
    max_length: int = setting(2048, ge=1, help="seed 001's cutoff: prompt and answer together")
    warmup_steps: float = setting(0.05, ge=0)


DEFAULTS: dict[str, Any] = QwenSettings().as_dict()


class Qwen(Approach):
    """Full fine-tuning of a decoder on the spec's prompt."""

    name = "qwen"
    task_types = ("classification", "extraction")
    settings = QwenSettings
    description = "causal LM fine-tuned on the spec's prompt: options scored by likelihood, records generated"
    adapter = False  # qwen-lora: a LoRA adapter on the frozen model

    def train(
        self, task: Task, train: list[Example], validation: list[Example], settings: QwenSettings, context: RunContext
    ) -> Artifact:
        return _train(task, train, validation, settings, context, adapter=self.adapter)

    def load(self, task: Task, artifact: Artifact, settings: QwenSettings, context: RunContext) -> Serving:
        return _load(task, artifact, settings, context)

    def predict(
        self, task: Task, artifact: Artifact, examples: list[Example], settings: QwenSettings, context: RunContext
    ) -> list[Prediction]:
        serving = _load(task, artifact, settings, context)
        model, prompter = artifact.state["serving_model"], artifact.state["prompter"]
        batch = context.batch_size or settings.predict_batch_size or serving.batch_size
        if task.type == "extraction":
            return extract(
                model,
                prompter,
                serving.device,
                examples,
                max_new_tokens=settings.max_new_tokens,
                batch_size=batch,
                progress=context.progress,
            )
        # Packed where load chose it (letter scoring, serving; never evaluation during training).
        return classify(
            model,
            prompter,
            serving.device,
            examples,
            batch_size=batch,
            scoring=settings.scoring,
            bucket_by_length=settings.bucket_by_length,
            packed=artifact.state["packed"],
            progress=context.progress,
        )

    def reference(self, task: Task, artifact: Artifact, settings: QwenSettings, context: RunContext) -> Any:
        return _reference(task, artifact, settings)


class QwenLora(Qwen):
    """LoRA (peft) on any causal LM: only the adapter trains and is stored; the base model it was trained on
    is pinned by the run's training identity. ``merge: true`` serves it merged, checked against the adapter."""

    name = "qwen-lora"
    settings = QwenLoraSettings
    description = "causal LM with a LoRA adapter tuned on the spec's prompt (peft); merged or not for serving"
    adapter = True

    def parity(
        self, task: Task, artifact: Artifact, examples: list[Example], settings: QwenLoraSettings, context: RunContext
    ) -> Parity | None:
        return _merge_parity(task, artifact, examples, settings) if settings.merge else None


@hookimpl
def harness_register_approaches(register: Any) -> None:
    register(Qwen())
    register(QwenLora())


def _train(
    task: Task,
    train: list[Example],
    validation: list[Example],
    settings: QwenSettings,
    context: RunContext,
    adapter: bool,
) -> Artifact:
    from transformers import DataCollatorForSeq2Seq

    from harness.hf_trainer import describe_model, train_with_trainer
    from harness.metrics import classification_metrics, extraction_metrics
    from harness.models import pick_device

    progress, workdir = context.progress, context.workdir
    device = pick_device(settings.train_device)
    with progress.phase("load"):
        tokenizer = _tokenizer(settings)
        model = _base_model(settings, tokenizer, context.random_weights)
    prompter = Prompter(task, tokenizer, settings)
    if task.type == "classification" and settings.scoring == "letter":
        check_letter_scoring(prompter)
    artifact = Artifact(path=None)
    artifact.state.update(tokenizer=tokenizer, prompter=prompter, device=device)
    if adapter:
        model = _with_adapter(model, settings)
        artifact.info.update(_adapter_info(model, settings))

    if settings.num_train_epochs > 0:

        def encode(examples: list[Example]) -> tuple[list[dict[str, Any]], int]:
            """The examples' training rows, and how many had their article cut."""
            rows = [prompter.training_row(ex) for ex in examples]
            return [row for row, _ in rows], sum(cut for _, cut in rows)

        scoring = selection_scoring(prompter) if task.type == "classification" else None
        batch = settings.per_device_eval_batch_size

        def evaluate(current: Any) -> dict[str, float]:  # the core's scorers, on the validation set
            if task.type == "extraction":
                predictions = extract(
                    current, prompter, device, validation, max_new_tokens=settings.max_new_tokens, batch_size=batch
                )
                metrics = extraction_metrics(
                    task.fields,
                    [ex.fields or {} for ex in validation],
                    [p.fields for p in predictions],
                    unicode=task.normalize,
                )
            else:
                predictions = classify(
                    current,
                    prompter,
                    device,
                    validation,
                    batch_size=batch,
                    scoring=scoring,
                    bucket_by_length=settings.bucket_by_length,
                )
                metrics = classification_metrics(
                    task.labels, [ex.label for ex in validation], [p.label for p in predictions]
                )
            return {k: v for k, v in metrics.items() if isinstance(v, float)}

        trainer_settings = {**settings.as_dict(), "seed": context.seed}
        if task.type == "extraction":  # a record is right only if every field matches
            trainer_settings["metric_for_best_model"] = "exact_match"

        with progress.phase("prepare"):
            (train_rows, truncated), (validation_rows, _) = encode(train), encode(validation)
        model, info = train_with_trainer(
            model=model,
            tokenizer=tokenizer,
            train_rows=train_rows,
            validation_rows=validation_rows,
            settings=trainer_settings,
            training_argument_names=list(TRAINING_ARGUMENTS),
            workdir=workdir,
            progress=progress,
            device=device,
            collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, padding=True),
            evaluate=evaluate,
            compute_loss=answer_loss,
            cpu_bf16=True,
        )
        artifact.info.update(info, truncated_train=truncated, answer_loss=settings.answer_loss)
        artifact.train_samples = len(train) * settings.num_train_epochs
        if truncated:
            artifact.notes.append(f"articles cut to fit max_length in {truncated} of {len(train)} training prompts")
        artifact.path = workdir / "model"
        with progress.phase("save"):
            model.save_pretrained(artifact.path)  # a PeftModel saves its adapter alone
            tokenizer.save_pretrained(artifact.path)
            if adapter and context.random_weights:
                # A base built from its config exists nowhere else: keep it beside the adapter.
                model.get_base_model().save_pretrained(workdir / "base")
                artifact.info["base_path"] = "base"
        if adapter:
            artifact.info["adapter_bytes"] = sum(p.stat().st_size for p in artifact.path.glob("adapter_model*"))
            artifact.notes.append(
                f"LoRA: trained {artifact.info['trainable_parameters'] / 1e6:.2f} M parameters; the "
                f"stored adapter is {artifact.info['adapter_bytes'] / 2**20:.1f} MB"
            )
    describe_model(artifact, model, settings.model, device)
    if adapter:
        artifact.info["base_model"] = settings.model
    artifact.state["model"] = model.eval()
    return artifact


def _with_adapter(model: Any, settings: QwenLoraSettings) -> Any:
    """The model with a fresh LoRA adapter on ``target_modules``; only the adapter's weights train. Target
    names that match no layer are one line listing the model's linear layers."""
    from peft import LoraConfig, get_peft_model

    targets = settings.target_modules.strip()
    modules: Any = targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    config = LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=modules,
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        if "not found" not in str(exc) and "did not match" not in str(exc):
            raise
        raise ValueError(
            f"target_modules {targets!r} match no layer of {settings.model}; its linear layers: "
            f"{', '.join(linear_layers(model))}"
        ) from None


def linear_layers(model: Any) -> list[str]:
    """The distinct names of a model's linear layers (``q_proj``, ``up_proj``, ...), as target_modules takes them."""
    import torch

    return sorted(
        {name.rpartition(".")[2] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    )


def _adapter_info(model: Any, settings: QwenLoraSettings) -> dict[str, Any]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "trainable_parameters": trainable,
        "lora_r": settings.lora_r,
        "lora_alpha": settings.lora_alpha,
        "target_modules": sorted(next(iter(model.peft_config.values())).target_modules),
    }


def _load(task: Task, artifact: Artifact, settings: QwenSettings, context: RunContext) -> Serving:
    """The model on its device in the serving dtype, once per artifact: the model trained in this process,
    else the stored one (an adapter on its base, merged when asked), else (nothing trained: zero-shot) the
    base model."""
    from harness.models import pick_device, pick_dtype
    from harness.packing import NOTE as PACKED_NOTE
    from harness.packing import use_packing

    merge = bool(getattr(settings, "merge", False))
    if "serving_model" not in artifact.state:
        device = pick_device(settings.device)
        model = artifact.state.pop("model", None)  # one copy: the serving one
        tokenizer = artifact.state.get("tokenizer")
        if model is None:
            model, tokenizer = _stored_model(artifact, settings, context)
        if hasattr(model, "get_base_model"):  # an adapter (peft): served as the plain model it is injected into
            # Merged in the training dtype (fp32) and cast after, so no bf16 rounding enters the merge.
            model = model.merge_and_unload() if merge else model.get_base_model()
        dtype = pick_dtype(device, settings.dtype, cpu_bf16=True)
        model = model.to(device).eval()
        # Cast parameters only: the rotary-embedding frequencies (buffers) stay fp32, as in training.
        for parameter in model.parameters():
            parameter.data = parameter.data.to(dtype)
        artifact.state.update(
            serving_model=model,
            tokenizer=tokenizer,
            device=device,
            prompter=artifact.state.get("prompter") or Prompter(task, tokenizer, settings),
            dtype=str(dtype).removeprefix("torch."),
        )
    device = artifact.state["device"]
    # Packing serves letter scoring, one forward per batch; generation and the likelihoods pad.
    artifact.state["packed"] = (
        task.type == "classification"
        and settings.scoring == "letter"
        and use_packing(artifact.state["serving_model"], device, settings.packing, decoder=True, where="qwen.packing")
    )
    notes = [PACKED_NOTE] if artifact.state["packed"] else []
    if task.type == "extraction":  # which rule greedy decoding follows: the model's generation_config, or plain
        notes.append(decoding_note(artifact.state["serving_model"]))
    if merge:
        notes.append("the LoRA adapter merged into the weights for serving")
    # On CPU, scoring saturates the cores at 16 prompts a batch; generation's one-token steps need more rows
    # (docs/benchmarks.md, "Rows per batch for generation on CPU").
    cpu_batch = 64 if task.type == "extraction" else 16
    return Serving(
        device=device,
        dtype=artifact.state["dtype"],
        batch_size=64 if device.startswith("cuda") else cpu_batch,
        notes=notes,
    )


def _stored_model(artifact: Artifact, settings: QwenSettings, context: RunContext) -> tuple[Any, Any]:
    """The stored model and tokenizer: a fine-tuned model's directory, an adapter on the base model it was
    trained on, or the base model itself (nothing was trained)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if artifact.path is None:
        tokenizer = _tokenizer(settings)
        return _base_model(settings, tokenizer, context.random_weights), tokenizer
    tokenizer = AutoTokenizer.from_pretrained(str(artifact.path))
    if not (artifact.path / "adapter_config.json").is_file():
        return AutoModelForCausalLM.from_pretrained(str(artifact.path)), tokenizer
    from peft import PeftModel

    base_path = artifact.info.get("base_path")
    if base_path:
        base = AutoModelForCausalLM.from_pretrained(str(artifact.path.parent / base_path))
    else:
        base = _base_model(settings, tokenizer, random_weights=False)
    return PeftModel.from_pretrained(base, str(artifact.path)), tokenizer


def _merge_parity(task: Task, artifact: Artifact, examples: list[Example], settings: QwenLoraSettings) -> Parity:
    """The merged model against the unmerged adapter on the first ``parity_samples`` examples, both in fp32
    (what is served is the merged fp32 weights cast to the serving dtype): the same answers (labels, or
    generated records), and the largest |difference| of the last prompt position's logits.

    In fp32 a right merge changes rounding only, so any answer that moves is the merge's fault. In bf16 the
    merged model and the adapter are two roundings of one fp32 model, and differ wherever bf16 moves an
    answer, while in fp32 they agree (docs/benchmarks.md, "Merged against unmerged LoRA on SmolLM2"). What
    bf16 costs is the serving dtype's own figure (a ``dtype: float32`` row beside it). Merging in bf16 is
    known to move outputs (peft issues #1836 and #2502); harness merges in fp32."""
    import torch

    from harness.batching import left_padded

    sample = examples[: settings.parity_samples]
    prompter, device = artifact.state["prompter"], artifact.state["device"]
    adapter = _stored_model(artifact, settings, RunContext())[0].float().to(device).eval()
    batch = settings.predict_batch_size or 16

    def answers_and_logits(model: Any) -> tuple[list[Any], list[Any]]:
        if task.type == "extraction":
            answers = [
                p.raw
                for p in extract(
                    model, prompter, device, sample, max_new_tokens=settings.max_new_tokens, batch_size=batch
                )
            ]
        else:
            answers = [
                p.label for p in classify(model, prompter, device, sample, batch_size=batch, scoring=settings.scoring)
            ]
        logits = []
        with torch.inference_mode():
            for start in range(0, len(sample), batch):
                prompts = [
                    prompter.prompt_ids(ex.text, reserve=settings.max_new_tokens)[0]
                    for ex in sample[start : start + batch]
                ]
                ids, mask, positions = left_padded(prompts, prompter.tokenizer.pad_token_id, device)
                logits.append(
                    model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1)
                    .logits[:, -1]
                    .float()
                )
        return answers, logits

    unmerged, unmerged_logits = answers_and_logits(adapter.get_base_model())  # the adapter's layers beside the base
    merged, merged_logits = answers_and_logits(adapter.merge_and_unload())
    diff = max(((a - b).abs().max().item() for a, b in zip(merged_logits, unmerged_logits)), default=0.0)
    same = sum(a == b for a, b in zip(merged, unmerged))
    agreement = same / len(sample) if sample else 1.0
    ok = agreement >= settings.merge_min_agreement
    message = (
        ""
        if ok
        else (
            f"the merged model answers {len(sample) - same} of {len(sample)} examples differently from "
            f"the unmerged adapter, both in fp32 ({agreement:.1%} < merge_min_agreement "
            f"{settings.merge_min_agreement:.1%}); largest logit difference {diff:.3g}"
        )
    )
    return Parity(
        against="the unmerged adapter (both in fp32)",
        n=len(sample),
        agreement=agreement,
        max_abs_diff=diff,
        ok=ok,
        message=message,
    )


def _reference(task: Task, artifact: Artifact, settings: QwenSettings) -> Any:
    """The model called by hand on the serving model, as a user would: the chat template, the tokenizer
    (left padding), then for classification one forward pass and the option letters' logits at the last
    position; for extraction one batched greedy ``generate`` to the end of the turn and the decoded answers."""
    import torch

    model, tokenizer, device, prompter = (
        artifact.state[k] for k in ("serving_model", "tokenizer", "device", "prompter")
    )

    def forward(texts: list[str]) -> list[Any]:
        with torch.inference_mode():
            prompts = [prompter.prompt_text(text) for text in texts]  # the chat template, as a user would apply it
            batch = tokenizer(
                prompts, padding=True, padding_side="left", add_special_tokens=False, return_tensors="pt"
            ).to(device)
            if task.type == "extraction":
                return generate(model, prompter, batch["input_ids"], batch["attention_mask"], settings.max_new_tokens)
            return model(**batch, logits_to_keep=1).logits[:, -1, prompter.option_tokens].argmax(-1).tolist()

    return forward


def _tokenizer(settings: QwenSettings):
    from transformers import AutoTokenizer

    from harness.models import from_pretrained

    tokenizer = from_pretrained(AutoTokenizer, settings.tokenizer or settings.model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _base_model(settings: QwenSettings, tokenizer: Any, random_weights: bool):
    """fp32 weights to train (the Trainer adds bf16 autocast where it is fast); serving casts to bf16 there.
    Qwen3's checkpoint and config say bfloat16, which would mean training in pure bf16."""
    import torch
    from transformers import AutoModelForCausalLM

    from harness.models import from_pretrained, load_config

    if not random_weights:
        return from_pretrained(AutoModelForCausalLM, settings.model, dtype=torch.float32)
    config = load_config(settings.model)
    config.vocab_size = max(config.vocab_size, len(tokenizer))
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)
