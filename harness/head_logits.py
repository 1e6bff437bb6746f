"""A decoder's logits of chosen tokens, computed in fp32 from its last hidden states and its output head's rows:
what scoring options (:mod:`harness.decoder_scoring`) and packed prediction (:mod:`harness.packing`) both read."""

from __future__ import annotations

from typing import Any


def plain_head(model: Any) -> Any:
    """The model's output head when it is one linear layer over the last hidden state (logits = hidden @ W.T + b),
    else None: a head with logit scaling or soft-capping in its config keeps its own logits."""
    import torch

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    config = getattr(model, "config", None)
    special = any(getattr(config, name, None) for name in ("final_logit_softcapping", "logit_scale", "logits_scaling"))
    return head if isinstance(head, torch.nn.Linear) and not special else None


def token_logits(model: Any, tokens: list[int], positions: Any = None, **inputs: Any) -> Any:
    """The logits of ``tokens`` alone, shape (batch, positions, len(tokens)), at ``positions`` of the sequence
    (default: the last), computed in fp32 from the decoder's last hidden states and the output head's rows of
    those tokens. A bf16 model's own logits are rounded to bf16, a step of 1/16 to 1/8 at the magnitudes
    options score (10 to 30): close options then tie, and argmax picks the first (docs/benchmarks.md, "bf16
    against fp32 on AG News", measured what that cost before this). A model
    whose head is more than a linear layer (:func:`plain_head`) keeps its own logits."""

    head = plain_head(model)
    keep = positions if positions is not None else 1
    if head is None:
        logits = model(**inputs, logits_to_keep=keep).logits
        return logits[..., tokens].float()
    hidden = model.get_decoder()(**inputs).last_hidden_state
    hidden = hidden[:, -1:] if positions is None else hidden[:, positions]
    return fp32_head(hidden, head, tokens)


def fp32_head(hidden: Any, head: Any, rows: Any) -> Any:
    """The head's logits of ``rows`` (token ids: a list for every position, or a (batch, k) tensor for each
    row of a (batch, 1, hidden) state), computed in fp32 from ``hidden``, under a caller's autocast too."""
    import torch

    with torch.autocast(hidden.device.type, enabled=False):
        logits = hidden.float() @ head.weight[rows].float().transpose(-1, -2)
    return logits + head.bias[rows].float().unsqueeze(-2) if head.bias is not None else logits
