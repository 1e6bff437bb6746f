"""Decoder scoring: the log-probabilities of given answers, to classify without generating and to train on them.

- :func:`classify` answers a classification batch by batch without generating. ``scoring: letter`` reads the
  option letters' logits at the last prompt position (:func:`letter_scores`, one forward per batch, left
  padded by :func:`harness.batching.left_padded` or packed end to end by :mod:`harness.packing`);
  ``perplexity`` and ``likelihood`` score each option's whole answer, the mean or the sum of its
  log-probabilities, on the prompt's shared KV cache (:func:`likelihood_scores`). :func:`check_letter_scoring`
  refuses letter scoring when the answers are not one distinct token each, and :func:`selection_scoring` is
  how checkpoints are selected during training.
- :func:`answer_loss` is the Trainer's loss for fine-tuning approaches (qwen, qwen-lora): cross-entropy on
  the answer tokens only, with vocabulary logits computed only where an answer token is predicted, a few
  hundred tokens at a time (:func:`head_cross_entropy`).

Nothing here imports torch or transformers at module level.
"""

from __future__ import annotations

import functools
from typing import Any

from harness.batching import left_padded, padded
from harness.decoder import Prompter
from harness.head_logits import token_logits
from harness.types import Example, Prediction

SCORINGS = ("letter", "perplexity", "likelihood")  # the choices of a ``scoring`` setting


def check_letter_scoring(prompter: Prompter) -> None:
    """A ValueError unless letter scoring can tell the answers apart: each one token, all distinct."""
    if not prompter.single_token_answers():
        raise ValueError(
            "scoring: letter needs every answer to be one distinct token, but the answers tokenize to "
            f"{prompter.answer_ids}; use scoring: perplexity or likelihood"
        )


def selection_scoring(prompter: Prompter) -> str:
    """How checkpoints are selected during training: independent of the ``scoring`` predict setting."""
    return "letter" if prompter.single_token_answers() else "perplexity"


def answer_loss(model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
    """Cross-entropy on the answer tokens, computing vocabulary logits only where there is an answer
    token to predict: with a 151k-token vocabulary the full logits would cost far more than the model.

    With ``num_items_in_batch`` (answer tokens in the whole accumulated batch) the sum is divided by it,
    so gradient accumulation gives the same gradient as one large batch.

    The head and the loss run on a few hundred answer tokens at a time (:func:`head_cross_entropy`), and the
    decoder keeps no KV cache: training reads none."""
    import torch

    labels, mask = inputs["labels"], inputs["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    if hasattr(model, "get_base_model"):  # a peft model: its adapters are injected into the base model's layers
        model = model.get_base_model()
    hidden = model.model(
        input_ids=inputs["input_ids"], attention_mask=mask, position_ids=positions, use_cache=False
    ).last_hidden_state
    # Position t predicts token t + 1.
    targets = labels[:, 1:]
    where = targets != -100
    total = head_cross_entropy(model.lm_head, hidden[:, :-1][where], targets[where])
    if num_items_in_batch is None:
        return total / torch.count_nonzero(where).clamp(min=1)
    return total / num_items_in_batch


HEAD_CHUNK_ELEMENTS = 2**24  # fp32 logits a chunk of the head's loss computes at most: 64 MB


def head_cross_entropy(head: Any, hidden: Any, targets: Any) -> Any:
    """The summed cross-entropy of ``head``'s logits of ``hidden`` (tokens, hidden) against ``targets``, in fp32,
    in chunks of tokens whose logits hold :data:`HEAD_CHUNK_ELEMENTS` at most. Each chunk's logits are computed
    again in the backward pass (``torch.utils.checkpoint``) instead of being kept: in one piece the logits,
    their log-softmax and its gradients are three fp32 copies of tokens x vocabulary at the step's peak
    (docs/benchmarks.md, "Decoder training memory on CPU"). The sum is the same up to float rounding."""
    import torch
    from torch.utils.checkpoint import checkpoint

    def chunk_loss(part: Any, gold: Any) -> Any:
        return torch.nn.functional.cross_entropy(head(part).float(), gold, reduction="sum")

    rows = max(1, HEAD_CHUNK_ELEMENTS // head.weight.shape[0])
    if hidden.shape[0] <= rows:
        return chunk_loss(hidden, targets)
    keep = torch.is_grad_enabled()
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], rows):
        part, gold = hidden[start : start + rows], targets[start : start + rows]
        total = total + (checkpoint(chunk_loss, part, gold, use_reentrant=False) if keep else chunk_loss(part, gold))
    return total


def classify(
    model: Any,
    prompter: Prompter,
    device: str,
    examples: list[Example],
    *,
    batch_size: int = 16,
    scoring: str = "letter",
    bucket_by_length: bool = True,
    packed: bool = False,
    progress: Any = None,
) -> list[Prediction]:
    """Each example's label and every label's probability, batch by batch, without generating.

    ``scoring`` is one of :data:`SCORINGS`; ``packed`` runs letter scoring packed end to end
    (:func:`harness.packing.use_packing` decides it), ``bucket_by_length=False`` predicts in file order, and
    ``progress`` (None: silent) tracks the batches. Runs under ``torch.inference_mode()``."""
    import torch

    from harness.models import length_buckets
    from harness.packing import packed_last_logits, packing_if_it_saves

    reserve = max(len(ids) for ids in prompter.answer_ids) + len(prompter.end_ids)
    prompts, cut = zip(*(prompter.prompt_ids(ex.text, reserve=reserve) for ex in examples)) if examples else ((), ())
    batches = length_buckets([len(p) for p in prompts], batch_size, bucket_by_length)
    if progress is not None:
        batches = progress.track(batches, "predict", total=len(examples), weight=len)
    predictions: list[Prediction | None] = [None] * len(examples)
    labels = prompter.task.labels
    with (
        torch.inference_mode(),
        packing_if_it_saves(
            packed_last_logits, model, packed and scoring == "letter", len(examples), batch_size
        ) as packs,
    ):
        for batch in batches:
            if scoring == "letter":
                log_probs = letter_scores(model, prompter, [prompts[i] for i in batch], device, packs)
            else:
                log_probs = [
                    likelihood_scores(model, prompter, prompts[i], device, per_token=scoring == "perplexity")
                    for i in batch
                ]
            for i, scores in zip(batch, log_probs):
                probabilities = torch.tensor(scores).softmax(-1).tolist()
                named = dict(zip(labels, probabilities))
                predictions[i] = Prediction(label=max(named, key=named.__getitem__), scores=named, truncated=cut[i])
    return predictions  # type: ignore[return-value]


def letter_scores(
    model: Any, prompter: Prompter, prompts: list[list[int]], device: str, packed: Any = None
) -> list[list[float]]:
    """Each prompt's option tokens' logits at its last position (softmax over them gives each option's
    probability, as the full vocabulary's log-probabilities would): one forward pass, left-padded or through
    ``packed`` (the forward of :func:`harness.packing.packed_last_logits`), and only the option tokens' logits
    computed, in fp32 (:func:`token_logits`)."""
    if packed is not None and len(prompts) > 1:
        logits = packed(prompts, prompter.option_tokens)
    else:
        input_ids, mask, positions = left_padded(prompts, prompter.tokenizer.pad_token_id, device)
        logits = token_logits(
            model, prompter.option_tokens, input_ids=input_ids, attention_mask=mask, position_ids=positions
        )[:, -1]
    return logits.tolist()


def cache_renamed(model: Any) -> bool:
    """Whether ``model`` names its KV cache ``cache``: transformers 5.24 renamed it from past_key_values, in and
    out; older 5.x has the old name. Read once per model class, not once per prompt."""
    model_class: type = type(model)
    return _forward_takes_cache(model_class)


@functools.cache
def _forward_takes_cache(model_class: Any) -> bool:
    import inspect

    return "cache" in inspect.signature(model_class.forward).parameters


def likelihood_scores(
    model: Any, prompter: Prompter, prompt: list[int], device: str, per_token: bool = False
) -> list[float]:
    """Summed log-probability of each answer after the prompt, or with ``per_token`` its mean per token
    (minus the log of the perplexity); the prompt runs once and its KV cache is shared by all answers,
    which run together as one batch."""
    import torch

    answers = [ids + prompter.end_ids for ids in prompter.answer_ids]  # the answer as trained, end of turn included
    out = model(input_ids=torch.tensor([prompt], device=device), use_cache=True, logits_to_keep=1)
    first = out.logits[0, -1].float().log_softmax(-1)
    renamed = cache_renamed(model)
    cache = out.cache if renamed else out.past_key_values
    cache.batch_repeat_interleave(len(answers))
    tokens, answer_mask = padded(answers, 0)  # right padded: each answer's positions follow the prompt's
    tokens, answer_mask, width = tokens.to(device), answer_mask.to(device), tokens.shape[1]
    mask = torch.cat([torch.ones((len(answers), len(prompt)), dtype=torch.long, device=device), answer_mask], dim=1)
    positions = torch.arange(len(prompt), len(prompt) + width, device=device).expand(len(answers), -1)
    logits = model(
        input_ids=tokens,
        attention_mask=mask,
        position_ids=positions,
        **{"cache" if renamed else "past_key_values": cache},
    ).logits
    log_probs = logits.float().log_softmax(-1)
    scores = []
    for i, ids in enumerate(answers):
        score = first[ids[0]].item()
        for t in range(1, len(ids)):
            score += log_probs[i, t - 1, ids[t]].item()
        scores.append(score / len(ids) if per_token else score)
    return scores
