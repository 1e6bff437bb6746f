"""Padding-free prediction: a batch's sequences packed end to end into one row, for encoders and decoders.

A padded batch computes every layer over ``batch x longest`` positions; texts that arrive in any order (a
served batch, a file-order sample) pad to their longest, and on a CPU that waste is most of the time: on
512 AG News texts in arrival order, batches of 8 hold 41,848 positions for 26,988 tokens. Packed, the
linear layers (most of an encoder's work) see only the real tokens, and attention runs per sequence, so
no position attends across a boundary and the output equals the padded one to float rounding.

How: the sequences go in as one row with their own ``position_ids`` (each restarting at the family's
first position) and their cumulative lengths as ``cu_seq_lens_q``/``cu_seq_lens_k``, the keyword
transformers gives padding-free flash attention (:func:`harness.batching.packed` builds the row). For the
call, the model's attention implementation is :data:`VARLEN`, registered here:
``scaled_dot_product_attention`` on each sequence's slice. Outside a packed call the model keeps its own
implementation, so a padded call is exactly transformers' own. The encoder's output is cut back to each
sequence's first token, which is all a CLS-pooled head reads, so the model's own head (pooler, dropout,
classifier) runs unchanged on a ``(batch, 1, hidden)`` tensor (:func:`packed_calls`). A decoder attends
causally within each sequence and gives the logits at each sequence's last position
(:func:`packed_last_logits`), what scoring by the next token reads.

What a model learns does not depend on this module unless its training calls it (qwen's checkpoint
selection scores with the decoder's code, which can pack): the training identity follows calls, not
files (harness.identity.code_fingerprint).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

from harness.batching import packed

VARLEN = "harness_varlen_sdpa"

# Model families whose sequence-classification head reads only the first token, and the position of a
# sequence's first token: BERT-style absolute positions start at 0; RoBERTa's at padding_idx + 1.
# Each is checked against padded logits in tests/test_packing.py.
CLS_HEADS: dict[str, int | str] = {"bert": 0, "electra": 0, "roberta": "pad+1", "xlm-roberta": "pad+1"}
# Decoder families with rotary positions from ``position_ids``, each checked against left-padded logits.
DECODERS = ("llama", "qwen2", "qwen3")

PACKING = ("auto", "packed", "padded")  # the choices of a plugin's ``packing`` setting
NOTE = "batches packed end to end, no padding"  # the serving note of a plugin that packs


def _register() -> None:
    """Make :data:`VARLEN` known to transformers (a dict entry each: registering again is harmless)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(VARLEN, varlen_sdpa_attention)
    # A packed call needs no mask: the sequence bounds are the mask. (transformers would otherwise build a
    # tokens x tokens block mask from the restarting position ids.)
    AttentionMaskInterface.register(VARLEN, lambda *args, **kwargs: None)


def varlen_sdpa_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
):
    """Attention over a packed row ``(1, heads, tokens, dim)``: each sequence of ``cu_seq_lens_q`` attends
    only to itself. Returns ``(1, tokens, heads, dim)`` as transformers' attention functions do."""
    import torch
    import torch.nn.functional as F

    bounds = kwargs["cu_seq_lens_q"].tolist()
    causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", False))
    grouped = key.shape[1] != query.shape[1]  # grouped-query attention: fewer key/value heads
    outputs = [
        F.scaled_dot_product_attention(
            query[:, :, a:b],
            key[:, :, a:b],
            value[:, :, a:b],
            dropout_p=dropout,
            scale=scaling,
            is_causal=causal and b - a > 1,
            enable_gqa=grouped,
        )
        for a, b in zip(bounds[:-1], bounds[1:])
    ]
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


def first_position(model: Any) -> int | None:
    """Where a sequence's positions start for this encoder, or None when packing does not apply to it:
    a family outside :data:`CLS_HEADS`, or a model whose attention does not go through transformers'
    AttentionInterface (it could not be told where sequences end)."""
    config = model.config
    start = CLS_HEADS.get(config.model_type)
    if start is None or getattr(config, "position_embedding_type", "absolute") != "absolute":
        return None
    if not model._can_set_attn_implementation():
        return None
    return int(config.pad_token_id) + 1 if start == "pad+1" else int(start)


def decoder_packs(model: Any) -> bool:
    """Whether :func:`packed_last_logits` applies: a family of :data:`DECODERS` whose every layer attends
    to the whole sequence (a sliding window would need windowed attention per sequence)."""
    config = model.config
    layers = getattr(config, "layer_types", None) or ["full_attention"]
    return (
        config.model_type in DECODERS
        and all(kind == "full_attention" for kind in layers)
        and model._can_set_attn_implementation()
    )


def use_packing(model: Any, device: str, packing: str, *, decoder: bool, where: str) -> bool:
    """What a plugin's ``packing`` setting means for this model: ``auto`` packs on CPU where the model
    allows it (on CUDA a padded batch runs one kernel per layer, packed attention one per sequence);
    ``packed`` packs wherever it can and is a one-line error naming ``where`` elsewhere; ``padded`` never."""
    from harness.errors import UserError

    if packing == "padded" or (packing == "auto" and device != "cpu"):
        return False
    if decoder_packs(model) if decoder else first_position(model) is not None:
        return True
    if packing == "packed":
        kind, families = ("decoder", DECODERS) if decoder else ("encoder", CLS_HEADS)
        raise UserError(
            f"packing: packed needs one of the {kind} families {', '.join(families)}; this model is "
            f"{model.config.model_type}",
            where=where,
        )
    return False


def packing_if_it_saves(calls: Any, model: Any, packed: bool, n_examples: int, batch_size: int) -> Any:
    """``calls(model)`` (:func:`packed_calls` or :func:`packed_last_logits`) for a predict call that packs and
    has batches of several texts; else a context that gives None. One text has no padding to save: it
    runs as it is, and batch-1 latency pays nothing for packing."""
    from contextlib import nullcontext

    return calls(model) if packed and n_examples > 1 and batch_size > 1 else nullcontext()


@contextmanager
def _varlen(model: Any):
    _register()
    own = model.config._attn_implementation
    model.set_attn_implementation(VARLEN)
    try:
        yield
    finally:
        model.set_attn_implementation(own)


@contextmanager
def packed_calls(model: Any):
    """For the duration of a predict call: ``forward(sequences) -> logits``, one packed forward per batch
    of token-id lists through an encoder classifier. Call it under ``torch.inference_mode()``."""
    start = first_position(model)
    if start is None:
        raise ValueError(
            f"{type(model).__name__} cannot run packed: only {', '.join(CLS_HEADS)} encoders with absolute positions"
        )
    device = next(model.parameters()).device
    firsts: Any = None  # where each sequence of the current forward begins

    def first_tokens(module: Any, args: Any, output: Any) -> Any:
        # The encoder's output cut to each sequence's first token: (1, tokens, H) -> (batch, 1, H).
        output.last_hidden_state = output.last_hidden_state[0, firsts].unsqueeze(1)
        return output

    def forward(sequences: list[list[int]]) -> Any:
        nonlocal firsts
        inputs, bounds = packed(sequences, start, device)
        firsts = bounds[:-1]
        return model(**inputs).logits

    hook = model.base_model.encoder.register_forward_hook(first_tokens)
    try:
        with _varlen(model):
            yield forward
    finally:
        hook.remove()


@contextmanager
def packed_last_logits(model: Any):
    """For the duration of a predict call: ``forward(sequences, tokens=None) -> logits`` of shape (batch,
    vocabulary), each sequence's next-token logits, from one packed causal forward per batch through a decoder;
    with ``tokens``, only those tokens' logits, in fp32 (:func:`harness.head_logits.token_logits`).
    Call it under ``torch.inference_mode()``."""
    from harness.head_logits import token_logits

    if not decoder_packs(model):
        raise ValueError(
            f"{type(model).__name__} cannot run packed: only {', '.join(DECODERS)} decoders "
            "with full attention in every layer"
        )
    device = next(model.parameters()).device

    def forward(sequences: list[list[int]], tokens: list[int] | None = None) -> Any:
        inputs, bounds = packed(sequences, 0, device)
        if tokens is not None:
            return token_logits(model, tokens, positions=bounds[1:] - 1, **inputs)[0]
        return model(**inputs, logits_to_keep=bounds[1:] - 1).logits[0]

    with _varlen(model):
        yield forward
