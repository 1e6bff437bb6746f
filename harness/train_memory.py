"""Training memory: an estimate of a training step's peak, and whether ``gradient_checkpointing: auto`` turns on.

The estimate, in bytes (docs/benchmarks.md, "Decoder training memory on CPU", holds it against measured
peaks):

- weights: every parameter at its own size (4 bytes in fp32);
- gradients: 4 bytes per trained parameter;
- optimizer state: 8 bytes per trained parameter (AdamW's two moments in fp32);
- activations: ``tokens x layers x (10 x hidden + 4 x intermediate) x 4`` bytes, what a decoder layer keeps
  for its backward pass per token (its norms, the attention's queries, keys, values and output, the MLP's
  gate, up, activation and product), plus, where a LoRA adapter has dropout, 5 bytes per adapted layer's
  input feature (peft keeps each adapter's dropped-out copy of the input and its mask). With gradient
  checkpointing a layer keeps only its input, ``tokens x layers x hidden x 4``, and one layer's whole set
  lives at a time while the backward pass recomputes it;
- tokens: ``per_device_train_batch_size`` x the longest training row (at most ``max_length``): the collator pads
  each batch to its longest row, so a cutoff far above the rows costs nothing.

``auto`` turns checkpointing on where the estimate, with a margin of :data:`MARGIN`, exceeds the memory training
can have: what the device has free when training starts plus the weights, which are loaded by then.
``HARNESS_AVAILABLE_MEMORY_MB`` says that figure instead (a machine shared with other work, or a test).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

AVAILABLE_ENV = "HARNESS_AVAILABLE_MEMORY_MB"
# auto compares the estimate plus this share with the memory available: the estimate leaves out the process's own
# runtime (Python, torch, the data) and what the allocator holds beyond what is in use, which measured 5 to 14%
# of the estimate on SmolLM2 (docs/benchmarks.md, "Decoder training memory on CPU"); running out of memory loses
# the run, where checkpointing costs a few percent of its time.
MARGIN = 1.25
ACTIVATION_BYTES = 4  # fp32; under bf16 autocast the layers keep bf16 casts beside fp32 norms
MB = 2**20


@dataclass(frozen=True)
class MemoryEstimate:
    """A training step's peak memory, in bytes, by part; ``tokens`` is the micro-batch's padded tokens."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    tokens: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations


def estimate_training_memory(
    model: Any, batch_size: int, longest_row: int, checkpointing: bool = False
) -> MemoryEstimate | None:
    """The estimate of training ``model`` (a transformers model, or a peft model around one) on micro-batches of
    ``batch_size`` rows padded to ``longest_row`` tokens; None where its config does not say its layers' sizes."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    sizes = [getattr(config, name, None) for name in ("hidden_size", "intermediate_size", "num_hidden_layers")]
    if not all(isinstance(size, int) and size > 0 for size in sizes):
        return None
    hidden, intermediate, layers = (int(size or 0) for size in sizes)
    parameters = list(model.parameters())
    trained = sum(p.numel() for p in parameters if p.requires_grad)
    tokens = batch_size * longest_row
    adapted = adapter_dropout_features(model) // layers  # a layer's LoRA inputs with dropout on
    per_layer = (10 * hidden + 4 * intermediate) * ACTIVATION_BYTES + adapted * (ACTIVATION_BYTES + 1)
    if checkpointing:
        activations = tokens * (layers * hidden * ACTIVATION_BYTES + per_layer)
    else:
        activations = tokens * layers * per_layer
    return MemoryEstimate(
        weights=sum(p.numel() * p.element_size() for p in parameters),
        gradients=4 * trained,
        optimizer=8 * trained,
        activations=activations,
        tokens=tokens,
    )


def adapter_dropout_features(model: Any) -> int:
    """The input features of every LoRA layer (peft) whose dropout is on: each keeps a dropped-out copy of its
    input for the backward pass, which the frozen layer beside it does not need."""
    import torch

    total = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, torch.nn.ModuleDict) and any(
            isinstance(d, torch.nn.Dropout) and d.p > 0 for d in dropouts.values()
        ):
            total += int(getattr(module, "in_features", 0) or 0)
    return total


def available_memory(device: str, weights: int) -> tuple[int, str]:
    """The bytes training may use on ``device``, and where the figure comes from: ``HARNESS_AVAILABLE_MEMORY_MB``
    where set, else the device's free memory (the RAM's available, within a cgroup's limit; a GPU's free) plus
    ``weights``, which are loaded by then."""
    given = os.environ.get(AVAILABLE_ENV, "").strip()
    if given:
        return int(float(given) * MB), AVAILABLE_ENV
    if device.startswith("cuda"):
        import torch

        return torch.cuda.mem_get_info(torch.device(device))[0] + weights, f"free on {device}"
    import psutil

    free = psutil.virtual_memory().available
    limit = _cgroup_free()
    return (min(free, limit) if limit is not None else free) + weights, "free RAM"


def _cgroup_free() -> int | None:
    """What this process's cgroup (v2) lets it add, where the cgroup has a memory limit; else None."""
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as handle:
            limit = handle.read().strip()
        if limit == "max":
            return None
        with open("/sys/fs/cgroup/memory.current", encoding="ascii") as handle:
            return max(0, int(limit) - int(handle.read().strip()))
    except (OSError, ValueError):
        return None


def use_checkpointing(
    setting: bool | str, estimate: MemoryEstimate | None, available: int, source: str
) -> tuple[bool, str]:
    """Whether training checkpoints its layers' activations, and the log line that says why: ``setting`` true or
    false as given; ``auto`` on where ``estimate`` (without checkpointing) exceeds ``available``."""
    if setting is True or setting is False:
        return (
            setting,
            f"gradient checkpointing {'on' if setting else 'off'} (gradient_checkpointing: {str(setting).lower()})",
        )
    if estimate is None:
        return False, "gradient checkpointing off (auto): the model's config does not say its layers' sizes"
    needed = int(estimate.total * MARGIN)
    on = needed > available
    parts = (
        f"weights {_gb(estimate.weights)}, gradients {_gb(estimate.gradients)}, optimizer {_gb(estimate.optimizer)}, "
        f"activations {_gb(estimate.activations)} for {estimate.tokens:,} tokens a micro-batch"
    )
    relation = "more" if on else "no more"
    return on, (
        f"gradient checkpointing {'on' if on else 'off'} (auto): training would need about {_gb(estimate.total)} "
        f"({parts}); with a {MARGIN - 1:.0%} margin {_gb(needed)}, {relation} than the {_gb(available)} available "
        f"({source})"
    )


def _gb(size: int) -> str:
    return f"{size / 2**30:.1f} GB"


# What the process may hold beyond what malloc has handed out (its code and Python's own arenas count there too)
# before freed memory is given back: each give-back costs the page faults of using that memory again, which a
# smaller slack pays often enough to slow a step (docs/benchmarks.md, "Decoder training memory on CPU").
SLACK = 1024 * MB


class FreedMemory:
    """Gives back to the system the memory glibc's malloc keeps after a program frees it, when the process holds
    more than ``slack`` bytes beyond what malloc has handed out (``malloc_trim``, which releases the free pages
    inside the heap). On CPU a training step frees gigabytes of activations, layer by layer, and the small
    allocations that live on between them (autograd's records) split the freed blocks, so the heap grows instead
    of reusing them (docs/benchmarks.md, "Decoder training memory on CPU", has what it held). A no-op where the C
    library is not glibc (2.33 or newer)."""

    def __init__(self, slack: int = SLACK) -> None:
        self.slack = slack
        self.trims = 0
        self._libc: Any = None
        self._page = 4096
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6")

            class MallInfo2(ctypes.Structure):
                _fields_ = [
                    (name, ctypes.c_size_t)
                    for name in (
                        "arena",
                        "ordblks",
                        "smblks",
                        "hblks",
                        "hblkhd",
                        "usmblks",
                        "fsmblks",
                        "uordblks",
                        "fordblks",
                        "keepcost",
                    )
                ]

            libc.mallinfo2.restype = MallInfo2
            libc.malloc_trim.argtypes = [ctypes.c_size_t]
            self._page = os.sysconf("SC_PAGE_SIZE")
            self._libc = libc
        except (OSError, AttributeError, ValueError):
            self._libc = None

    @property
    def active(self) -> bool:
        return self._libc is not None

    def held_beyond_used(self) -> int:
        """Bytes the process holds (RSS) beyond what malloc has handed out and not had back."""
        info = self._libc.mallinfo2()
        with open("/proc/self/statm", encoding="ascii") as handle:
            rss = int(handle.read().split()[1]) * self._page
        return rss - (info.uordblks + info.hblkhd)

    def check(self) -> None:
        """Give the freed memory back where the process holds more than ``slack`` beyond what it uses."""
        if self._libc is not None and self.held_beyond_used() > self.slack:
            self._libc.malloc_trim(0)
            self.trims += 1

    def watching(self, model: Any) -> Any:
        """A context in which :meth:`check` runs after each layer's forward and before its backward (hooks on
        the model's transformers layers, the blocks checkpointing works by); the hooks go with the context."""
        import contextlib

        return contextlib.ExitStack() if not self.active else self._hooks(model)

    def _hooks(self, model: Any) -> Any:
        import contextlib

        stack = contextlib.ExitStack()
        try:
            from transformers.modeling_layers import GradientCheckpointingLayer
        except ImportError:  # a transformers without it: no layer to watch
            return stack

        def after_forward(module: Any, inputs: Any, output: Any) -> None:
            self.check()
            hidden = output[0] if isinstance(output, tuple) else output
            if getattr(hidden, "requires_grad", False):
                hidden.register_hook(lambda grad: self.check())

        for module in model.modules():
            if isinstance(module, GradientCheckpointingLayer):
                stack.callback(module.register_forward_hook(after_forward).remove)
        return stack
