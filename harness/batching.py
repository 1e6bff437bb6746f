"""Token-id lists made into one batch of model inputs: padded to the longest row, or packed end to end in one row.

Every approach that runs a batch of token ids through a model builds it here, so a padded row is the same
tensor everywhere: bert's and bert-onnx's right-padded batches (torch, or numpy for ONNX Runtime), a decoder's
left-padded prompts with their position ids (:func:`left_padded`: scoring, generation, seqgpt's beams, qwen's
parity) and a decoder's right-padded answers after a shared prompt (likelihood scoring). :func:`packed` is the
padding-free layout :mod:`harness.packing` runs: the sequences in one row, their bounds beside it.

Ids and masks are int64 (``torch.long``), the type embeddings take. Nothing here imports torch or numpy at
module level.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal


def padded(
    rows: Sequence[Sequence[int]], pad: int, *, side: Literal["left", "right"] = "right", numpy: bool = False
) -> tuple[Any, Any]:
    """The input ids and attention mask of ``rows`` padded with ``pad`` to the longest row, on the ``side``
    given: ``(len(rows), longest)`` int64 arrays, torch tensors on the CPU, or numpy arrays with ``numpy``.
    The mask is 1 on each row's own tokens and 0 on its padding."""
    width = max((len(row) for row in rows), default=0)
    if numpy:
        import numpy as np

        input_ids = np.full((len(rows), width), pad, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
    else:
        import torch

        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        input_ids[i, span] = row if numpy else torch.tensor(row)
        mask[i, span] = 1
    return input_ids, mask


def left_padded(rows: list[list[int]], pad: int, device: str) -> tuple[Any, Any, Any]:
    """A left-padded batch (input ids, attention mask, position ids) with position ids that start at 0 on
    every row's first real token, so a padded row computes exactly what it would alone."""
    input_ids, mask = padded(rows, pad, side="left")
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return input_ids.to(device), mask.to(device), positions.to(device)


def packed(sequences: list[list[int]], start: int, device: Any) -> tuple[dict[str, Any], Any]:
    """The model inputs of one packed row, and the sequence bounds in it (``len(sequences) + 1`` offsets):
    the sequences end to end as one row of ``input_ids``, each one's ``position_ids`` restarting at ``start``,
    and the bounds as ``cu_seq_lens_q``/``cu_seq_lens_k``, the keywords transformers gives padding-free
    attention."""
    import torch

    lengths = torch.tensor([len(ids) for ids in sequences])
    bounds = torch.zeros(len(sequences) + 1, dtype=torch.long)
    torch.cumsum(lengths, 0, out=bounds[1:])
    input_ids = torch.tensor([token for ids in sequences for token in ids]).unsqueeze(0)
    # Each sequence's positions restart: arange over the packed row minus its sequence's offset.
    position_ids = torch.arange(int(bounds[-1])) - torch.repeat_interleave(bounds[:-1], lengths) + start
    bounds = bounds.to(device)
    inputs = {
        "input_ids": input_ids.to(device),
        "position_ids": position_ids.unsqueeze(0).to(device),
        "cu_seq_lens_q": bounds,
        "cu_seq_lens_k": bounds,
    }
    return inputs, bounds
