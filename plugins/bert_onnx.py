"""bert-onnx: the model ``bert`` trained, exported to ONNX and served by ONNX Runtime, in fp32, fp16 or int8.

An engine (``serves = "bert"``): it never trains. ``--plugins bert,bert-onnx`` trains bert once and serves the
same stored model both ways; a bert run already in the store is reused. What it derives from the trained
model (the export with dynamic batch and sequence axes, onnxruntime's transformer optimization, the int8
quantization or fp16 conversion) is built once per trained model and engine settings in the load cache
(``context.cache_dir``), timed as the build apart from serving; later measurements load what was built.

- ``precision``: ``fp32``; ``int8``, dynamic quantization of the weights (``onnxruntime.quantization.
  quantize_dynamic``, CPU); ``fp16``, the optimized graph converted to float16 (CUDA).
- ``optimize``: onnxruntime's transformer optimizer (``onnxruntime.transformers.optimizer``) at a level;
  ``auto`` uses it only where it measured faster: never on CPU (MiniLM on 2 cores, docs/benchmarks.md: the
  fused graph was slower in fp32 and in int8), always for fp16 on CUDA, which needs its fused graph.
- ``providers``: ONNX Runtime execution providers in order; empty: TensorRT, CUDA, CPU, those installed.
- ``intra_op_threads``: 0 is the unit's threads (``OMP_NUM_THREADS``, else the usable cores), which the
  measurement identity records.
- Parity on every run: after the timed pass, the same test texts through the PyTorch model it was exported
  from; label agreement and the largest |Δlogit| are recorded, and below ``min_agreement`` (default 100% for
  fp32, 98.5% for int8, 99% for fp16) or above ``max_logit_diff`` (default 1e-3 for fp32) the row fails.

Batches are formed by length as bert's are, each padded to its longest text (ONNX Runtime runs padded
batches; bert's packing is a PyTorch path). Needs the ``[onnx]`` extra (``[onnx-gpu]`` on CUDA).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Literal

from harness import Approach, Artifact, Example, Parity, Prediction, RunContext, Serving, Task, hookimpl, setting
from harness.approach import Settings
from harness.errors import UserError

OPTIMIZER_LEVELS = {"basic": 1, "extended": 2, "all": 99}
# The parity defaults, per precision: label agreement with PyTorch, and the largest |logit difference|.
MIN_AGREEMENT = {"fp32": 1.0, "int8": 0.985, "fp16": 0.99}
MAX_LOGIT_DIFF = {"fp32": 1e-3}


class BertOnnxSettings(Settings):
    precision: Literal["fp32", "fp16", "int8"] = setting("fp32", help="int8: dynamic quantization (CPU); fp16: CUDA")
    optimize: Literal["auto", "off", "basic", "extended", "all"] = setting(
        "auto", help="onnxruntime's transformer optimizer level; auto: only where measured faster (fp16 on CUDA)"
    )
    providers: str = setting(
        "", help="execution providers in order, separated by commas; empty: TensorRT, CUDA, CPU as installed"
    )
    intra_op_threads: int = setting(0, ge=0, help="0: the unit's threads")
    predict_batch_size: int = setting(0, ge=0, help="0: 64")
    bucket_by_length: bool = setting(True, help="False: predict in file order")
    max_length: int = setting(512, ge=1, help="truncation; the bert run's max_length unless set for bert-onnx")
    min_agreement: float = setting(
        -1.0,
        le=1,
        help="parity: the share of test labels equal to PyTorch's; -1: 1.0 for fp32, 0.985 for int8, 0.99 for fp16",
    )
    max_logit_diff: float = setting(
        -1.0, help="parity: the largest |logit difference| from PyTorch; -1: 1e-3 for fp32, unchecked otherwise"
    )
    opset: int = setting(17, ge=11, help="the ONNX opset of the export")


class BertOnnx(Approach):
    name = "bert-onnx"
    serves = "bert"
    task_types = ("classification",)
    settings = BertOnnxSettings
    description = "bert's trained model exported to ONNX and served by ONNX Runtime (fp32, fp16, int8)"

    def check(self, task: Task, settings: BertOnnxSettings, context: RunContext) -> None:
        """The parity bounds and the providers, before bert trains. A missing ONNX Runtime is left to load, whose
        failed row names the extra to install while the other rows run."""
        for name in ("min_agreement", "max_logit_diff"):
            value = getattr(settings, name)
            if value != -1 and not 0 <= value < float("inf"):
                raise UserError(f"must be -1 (the precision's default) or a number from 0, got {value:g}", where=name)
        try:
            ort = _onnxruntime()
        except ImportError:
            return
        try:
            _providers(settings, ort)
        except ValueError as exc:
            raise UserError(str(exc).removeprefix("providers: "), where="providers") from None

    def load(self, task: Task, artifact: Artifact, settings: BertOnnxSettings, context: RunContext) -> Serving:
        ort = _onnxruntime()
        if "session" not in artifact.state:
            if artifact.path is None:
                raise ValueError(
                    "bert-onnx serves a stored bert model, and this bert run stored none "
                    "(num_train_epochs: 0 trains nothing)"
                )
            providers = _providers(settings, ort)
            device = "cuda" if providers[0] in ("TensorrtExecutionProvider", "CUDAExecutionProvider") else "cpu"
            if settings.precision == "fp16" and device != "cuda":
                raise ValueError(
                    "precision fp16 needs the CUDA or TensorRT provider (the [onnx-gpu] extra on a GPU); "
                    f"this machine has {', '.join(providers)}"
                )
            folder = context.cache_dir or Path(artifact.path).parent / "onnx-uncached"
            model_file, optimized = build(Path(artifact.path), folder, settings, device)
            from transformers import AutoTokenizer

            from harness.measure import unit_threads

            options = ort.SessionOptions()
            options.intra_op_num_threads = settings.intra_op_threads or unit_threads()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            session = ort.InferenceSession(str(model_file), options, providers=providers)
            artifact.state.update(
                session=session,
                tokenizer=AutoTokenizer.from_pretrained(str(artifact.path)),
                inputs=[i.name for i in session.get_inputs()],
                device=device,
                provider=session.get_providers()[0],
                optimized=optimized,
            )
        notes = [
            f"ONNX Runtime {ort.__version__} on {artifact.state['provider']}, {settings.precision}"
            + (f", graph optimized ({artifact.state['optimized']})" if artifact.state["optimized"] else "")
        ]
        return Serving(device=artifact.state["device"], dtype=settings.precision, batch_size=64, notes=notes)

    def predict(
        self, task: Task, artifact: Artifact, examples: list[Example], settings: BertOnnxSettings, context: RunContext
    ) -> list[Prediction]:
        import numpy as np

        batch_size = (
            context.batch_size or settings.predict_batch_size or self.load(task, artifact, settings, context).batch_size
        )
        logits = _logits(artifact, [ex.text for ex in examples], settings, batch_size, context.progress)
        shifted = np.exp(logits - logits.max(-1, keepdims=True))
        probabilities = (shifted / shifted.sum(-1, keepdims=True)).tolist()
        predictions = []
        for row in probabilities:
            scores = dict(zip(task.labels, row))
            predictions.append(Prediction(label=max(scores, key=scores.__getitem__), scores=scores))
        return predictions

    def reference(self, task: Task, artifact: Artifact, settings: BertOnnxSettings, context: RunContext) -> Any:
        """A bare InferenceSession call: the tokenizer's padded batch, the session, the argmax to the host."""
        session, tokenizer, inputs = (artifact.state[k] for k in ("session", "tokenizer", "inputs"))

        def forward(texts: list[str]) -> None:
            batch = tokenizer(texts, padding=True, truncation=True, max_length=settings.max_length, return_tensors="np")
            session.run(["logits"], {name: batch[name].astype("int64") for name in inputs})[0].argmax(-1).tolist()

        return forward

    def parity(
        self, task: Task, artifact: Artifact, examples: list[Example], settings: BertOnnxSettings, context: RunContext
    ) -> Parity:
        """The same texts through the PyTorch model the export came from (fp32, CPU, the same padded batches)."""
        import numpy as np
        import torch
        from transformers import AutoModelForSequenceClassification

        texts = [ex.text for ex in examples]
        served = _logits(artifact, texts, settings, 64)
        model = AutoModelForSequenceClassification.from_pretrained(str(artifact.path)).eval()
        tokenizer = artifact.state["tokenizer"]
        reference = np.zeros_like(served)
        with torch.inference_mode():
            for start in range(0, len(texts), 64):
                batch = tokenizer(
                    texts[start : start + 64],
                    padding=True,
                    truncation=True,
                    max_length=settings.max_length,
                    return_tensors="pt",
                )
                reference[start : start + 64] = model(**batch).logits.float().numpy()
        agreement = float((served.argmax(-1) == reference.argmax(-1)).mean()) if texts else 1.0
        diff = float(np.abs(served - reference).max()) if texts else 0.0
        floor = settings.min_agreement if settings.min_agreement >= 0 else MIN_AGREEMENT[settings.precision]
        ceiling = settings.max_logit_diff if settings.max_logit_diff >= 0 else MAX_LOGIT_DIFF.get(settings.precision)
        problems = []
        if agreement < floor:
            problems.append(
                f"labels equal to PyTorch's on {agreement:.1%} of {len(texts)} test texts, below "
                f"min_agreement {floor:.1%}"
            )
        if ceiling is not None and diff > ceiling:
            problems.append(f"largest |logit difference| from PyTorch {diff:.2g}, above max_logit_diff {ceiling:g}")
        return Parity(
            against="PyTorch",
            n=len(texts),
            agreement=agreement,
            max_abs_diff=diff,
            ok=not problems,
            message=f"{settings.precision}: " + "; ".join(problems) + " (the row's min_agreement and "
            "max_logit_diff settings loosen it)"
            if problems
            else "",
        )


@hookimpl
def harness_register_approaches(register: Any) -> None:
    register(BertOnnx())


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ImportError(
            "bert-onnx needs ONNX Runtime: pip install 'harness-compare[onnx]' (or [onnx-gpu] for CUDA)"
        ) from None
    return onnxruntime


def _providers(settings: BertOnnxSettings, ort: Any) -> list[str]:
    available = ort.get_available_providers()
    if settings.providers.strip():
        asked = [p.strip() for p in settings.providers.split(",") if p.strip()]
        missing = [p for p in asked if p not in available]
        if missing:
            raise ValueError(f"providers: {', '.join(missing)} not installed; available: {', '.join(available)}")
        return asked
    order = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    return [p for p in order if p in available] or available


def build(model_dir: Path, folder: Path, settings: BertOnnxSettings, device: str) -> tuple[Path, str | None]:
    """The ONNX file to serve, built in ``folder`` if it is not there yet: torch.onnx's export of the trained
    model (dynamic batch and sequence axes), then onnxruntime's transformer optimizer where asked (and for
    fp16), then int8 dynamic quantization or the fp16 conversion. Returns the file and the optimizer level."""
    level = settings.optimize
    if level == "auto":
        level = "all" if settings.precision == "fp16" else "off"
    final = folder / f"model-{settings.precision}-{level}.onnx"
    if final.is_file():
        return final, None if level == "off" else level
    folder.mkdir(parents=True, exist_ok=True)
    exported = folder / "model.onnx"
    if not exported.is_file():
        _export(model_dir, exported, settings.opset)
    current = exported
    if level != "off":
        from onnxruntime.transformers.optimizer import optimize_model
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(model_dir))
        optimized = optimize_model(
            str(exported),
            model_type="bert",
            num_heads=config.num_attention_heads,
            hidden_size=config.hidden_size,
            opt_level=OPTIMIZER_LEVELS[level],
            use_gpu=device == "cuda",
        )
        if settings.precision == "fp16":
            optimized.convert_float_to_float16(keep_io_types=True)
        current = folder / f"model-optimized-{level}-{settings.precision}.onnx"
        optimized.save_model_to_file(str(current))
    if settings.precision == "int8":
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # DefaultTensorType: the optimizer's fused nodes (com.microsoft domain) have outputs that ONNX's shape
        # inference cannot type; without it quantizing an optimized graph fails ("Unable to find data type").
        quantize_dynamic(
            str(current),
            str(final),
            weight_type=QuantType.QInt8,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    elif current != final:
        shutil.copyfile(current, final)
    return final, None if level == "off" else level


def _export(model_dir: Path, path: Path, opset: int) -> None:
    """torch.onnx's TorchScript exporter, fp32 on CPU, logits out; batch and sequence axes dynamic."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    sample = tokenizer(["a short text", "a somewhat longer text to export with"], padding=True, return_tensors="pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in sample]
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"logits": {0: "batch"}}

    class Logits(torch.nn.Module):  # the model's output object as one tensor
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: Any) -> Any:
            return self.model(**dict(zip(names, inputs))).logits

    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(
            Logits(),
            tuple(sample[n] for n in names),
            str(path),
            input_names=names,
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )


def _logits(
    artifact: Artifact, texts: list[str], settings: BertOnnxSettings, batch_size: int, progress: Any = None
) -> Any:
    """Logits of ``texts`` from the session, in batches formed by length (as bert's), each padded to its longest."""
    import numpy as np

    from harness.batching import padded
    from harness.models import length_buckets

    session, tokenizer, inputs = (artifact.state[k] for k in ("session", "tokenizer", "inputs"))
    encoded = tokenizer(texts, truncation=True, max_length=settings.max_length)
    ids = encoded["input_ids"]
    types = encoded.get("token_type_ids")
    batches = length_buckets([len(x) for x in ids], batch_size, settings.bucket_by_length)
    if progress is not None:
        batches = progress.track(batches, "predict", total=len(texts), weight=len)
    out: Any = None
    pad = tokenizer.pad_token_id or 0
    for batch in batches:
        input_ids, attention_mask = padded([ids[i] for i in batch], pad, numpy=True)
        feed = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": (
                padded([types[i] for i in batch], 0, numpy=True)[0] if types is not None else np.zeros_like(input_ids)
            ),
        }
        logits = session.run(["logits"], {name: feed[name] for name in inputs})[0]
        if out is None:
            out = np.zeros((len(texts), logits.shape[-1]), dtype=np.float32)
        out[batch] = logits
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)
