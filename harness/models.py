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
}


def shipped_config(model: str) -> Path | None:
    name = SHIPPED_CONFIGS.get(model)
    return Path(str(resources.files("harness") / "configs" / name)) if name else None


def load_config(model: str, **overrides: Any):
    """The model's config: a shipped one for the seed models, else from the hub id or local directory."""
    from transformers import AutoConfig

    path = shipped_config(model)
    if path is not None:
        return AutoConfig.from_pretrained(str(path), **overrides)
    return AutoConfig.from_pretrained(model, **overrides)


def pick_device(setting: str) -> str:
    import torch

    if setting != "auto":
        return setting
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(device: str):
    """bf16 on a CUDA GPU that supports it, fp32 elsewhere."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def count_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def length_buckets(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first, so padding wastes little compute
    and the largest batch runs first (an out-of-memory error comes at once, not at the end)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
