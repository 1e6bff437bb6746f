"""Loading Hugging Face models for approaches: from a hub id or local directory, or, with
``--random-weights``, from an architecture config alone (shipped for the seed models)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

# Architecture configs shipped with harness, so speed can be measured with no weights and no network.
SHIPPED_CONFIGS = {
    "google-bert/bert-base-cased": "bert-base-cased.json",
    "bert-base-cased": "bert-base-cased.json",
    "Qwen/Qwen3-0.6B": "qwen3-0.6b.json",
    # SeqGPT-560M is BLOOM-560M's architecture (bigscience/bloom-560m's config): 24 layers, 1024 wide, 16 heads.
    "DAMO-NLP/SeqGPT-560M": "seqgpt-560m.json",
}


def shipped_config(model: str) -> Path | None:
    name = SHIPPED_CONFIGS.get(model)
    return Path(str(resources.files("harness") / "configs" / name)) if name else None


def load_config(model: str, **overrides: Any):
    """The model's config: a shipped one for the seed models, else from the hub id, local directory or GGUF file."""
    from transformers import AutoConfig

    path = shipped_config(model)
    if path is not None:
        return AutoConfig.from_pretrained(str(path), **overrides)
    source, gguf = pretrained_source(model)
    return AutoConfig.from_pretrained(source, **gguf, **overrides)


def pretrained_source(name: str) -> tuple[str, dict[str, Any]]:
    """What ``from_pretrained`` takes for a model setting: a hub id or local directory as it is; a ``.gguf``
    file (a local path, or ``org/repo/file.gguf`` on the hub) as its folder and ``gguf_file=``."""
    if not name.endswith(".gguf"):
        return name, {}
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        raise ImportError(
            f"{name} is a GGUF file: reading it needs the gguf package: pip install 'harness-compare[gguf]'"
        )
    path = Path(name)
    if path.is_file():
        return str(path.parent), {"gguf_file": path.name}
    repo, _, file = name.rpartition("/")
    return repo, {"gguf_file": file}


def from_pretrained(auto_class: Any, name: str, **kwargs: Any) -> Any:
    """``auto_class.from_pretrained`` for a model setting (see :func:`pretrained_source`). transformers
    dequantizes a GGUF file's weights as it reads them; the model then is an ordinary float one, and is
    told so, so that it can be trained and saved like any other."""
    source, gguf = pretrained_source(name)
    loaded = auto_class.from_pretrained(source, **gguf, **kwargs)
    if gguf and getattr(loaded, "hf_quantizer", None) is not None:
        loaded.hf_quantizer = None
        loaded.is_quantized = False  # the Trainer refuses to fine-tune a model that says it is quantized
        if hasattr(loaded.config, "quantization_config"):
            del loaded.config.quantization_config
    return loaded


def pick_device(setting: str) -> str:
    import torch

    if setting != "auto":
        return setting
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(device: str, setting: str = "auto", cpu_bf16: bool = False):
    """The serving dtype. ``setting``: ``bfloat16``, ``float32``, or ``auto``: bf16 on a CUDA GPU that
    supports it, and with ``cpu_bf16`` (decoders) on a CPU with bf16 units too (:func:`cpu_has_bf16`);
    fp32 elsewhere."""
    import torch

    if setting != "auto":
        return getattr(torch, setting)
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device == "cpu" and cpu_bf16 and cpu_has_bf16():
        return torch.bfloat16
    return torch.float32


def cpu_has_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX512-BF16 or AMX), as torch's oneDNN sees it.
    Without it bf16 is emulated and slower than fp32, so fp32 stays."""
    import torch

    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def count_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def length_buckets(lengths: list[int], batch_size: int, by_length: bool = True) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first, so padding wastes little compute
    and the largest batch runs first (an out-of-memory error comes at once, not at the end).
    ``by_length=False`` keeps file order: the baseline that bucketing is measured against."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i]) if by_length else list(range(len(lengths)))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def length_bucket_order(lengths: list[int], batch_size: int, seed: int, megabatch: int = 50) -> list[int]:
    """A training order whose consecutive ``batch_size`` slices hold examples of similar length.

    Shuffle, cut into megabatches of ``megabatch * batch_size``, sort each by length, cut into batches,
    then shuffle the batches (the longest stays first, so an out-of-memory error comes at once).
    Hugging Face's ``group_by_length`` skips that last shuffle, so every megabatch runs from its
    longest batch to its shortest: an ordering the optimiser sees, which this avoids.
    """
    import random

    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    size = max(batch_size, megabatch * batch_size)
    batches = []
    for start in range(0, len(order), size):
        chunk = sorted(order[start : start + size], key=lambda i: -lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    longest = max(range(len(batches)), key=lambda b: lengths[batches[b][0]])
    first = batches.pop(longest)
    rng.shuffle(batches)
    return [i for batch in [first, *batches] for i in batch]


class LengthBucketSampler:
    """A torch Sampler over :func:`length_bucket_order`, a new order each epoch.

    The order is a function of the epoch alone: the Trainer says which epoch it is with ``set_epoch``
    before each one, also the first epoch of a run resumed from a checkpoint, so a resumed run sees the
    order the uninterrupted run saw. Iterated without ``set_epoch``, it moves to the next epoch by itself.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed, self.epoch = lengths, batch_size, seed, 0

    def __len__(self) -> int:
        return len(self.lengths)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        order = length_bucket_order(self.lengths, self.batch_size, self.seed + self.epoch)
        self.epoch += 1
        return iter(order)
