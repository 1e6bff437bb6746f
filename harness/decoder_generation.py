"""Decoder generation: each row of a left-padded batch answered to its end of turn, greedily or with beams.

The model's generation_config is applied as ``generate`` applies it.

- :func:`greedy_answers` is harness's greedy loop (the KV cache, each row leaving the batch at its end of turn,
  bf16's close tokens told apart in fp32 by :func:`next_tokens`, the generation_config's logits processors
  from :func:`greedy_processors`): the same tokens as :func:`generate`, which is the library's own
  ``model.generate`` (beam search, seqgpt's, runs there); :func:`decoding_note` says which rule decoded.
- :func:`extract` answers an extraction task by greedy generation of a JSON object, which
  :func:`harness.answers.parse_fields` reads.

Nothing here imports torch or transformers at module level.
"""

from __future__ import annotations

import functools
from typing import Any

from harness.answers import parse_fields
from harness.batching import left_padded
from harness.decoder import Prompter
from harness.decoder_scoring import cache_renamed
from harness.head_logits import fp32_head, plain_head
from harness.types import Example, Prediction


def next_tokens(logits: Any, hidden: Any = None, head: Any = None, candidates: int = 8, process: Any = None) -> Any:
    """Each row's greedy next token from its last-position ``logits`` (rows, vocabulary). Logits below fp32
    (a bf16 model's, or any model's under bf16 autocast) are rounded to a step of 1/16 to 1/8 where tokens
    score: close tokens tie and argmax takes the lowest id. With the ``hidden`` state the ``head`` read, the
    top ``candidates`` are scored again in fp32 from the head's rows, as :func:`token_logits` scores options:
    the token whose exact product is highest, which the rounding cannot have pushed out of the top few.

    ``process`` (fp32 scores to scores: the model's generation_config's logits processors on the rows' ids,
    :func:`greedy_processors`) is applied as ``generate`` applies it, to an fp32 copy of the logits; the
    candidates are the top of the processed scores, and their exact products are processed again (each in
    its place among the others' logits) before they are compared."""
    import torch

    scores = logits if process is None else process(logits.to(dtype=torch.float32, copy=True))
    if hidden is None or head is None or logits.dtype == torch.float32:
        return scores.argmax(-1)
    top = scores.topk(min(candidates, scores.shape[-1]), dim=-1).indices
    exact = fp32_head(hidden[:, None], head, top)[:, 0]
    if process is not None:
        exact = process(logits.float().scatter(-1, top, exact)).gather(-1, top)
    return top.gather(-1, exact.argmax(-1, keepdim=True)).squeeze(-1)


# What of a generation_config changes greedy scores (the logits processors ``generate`` builds without
# sampling), with each setting's value that builds none. Sampling settings (temperature, top_p, top_k) don't
# apply to greedy decoding: ``generate(do_sample=False)`` ignores them too.
PROCESSOR_SETTINGS = {
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_repetition_penalty": 1.0,
    "encoder_no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "sequence_bias": None,
    "min_length": 0,
    "min_new_tokens": 0,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "remove_invalid_values": False,
    "exponential_decay_length_penalty": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "guidance_scale": 1.0,
    "watermarking_config": None,
}


def generation_settings(model: Any) -> dict[str, Any]:
    """The settings of the model's generation_config that greedy decoding applies (:data:`PROCESSOR_SETTINGS`
    not at their neutral value): {} for plain greedy."""
    config = getattr(model, "generation_config", None)
    found = {}
    for name, neutral in PROCESSOR_SETTINGS.items():
        value = getattr(config, name, None)
        if value is not None and value != neutral and value != [] and value != {}:
            found[name] = value
    return found


def decoding_note(model: Any) -> str:
    """The serving row's note on the rule greedy decoding follows: the model's generation_config, or plain."""
    found = generation_settings(model)
    if not found:
        return "plain greedy decoding (the model's generation_config sets no logits processors)"
    return "greedy decoding applies the model's generation_config: " + ", ".join(f"{k}={v}" for k, v in found.items())


def greedy_processors(model: Any, prompter: Prompter, input_ids: Any, attention_mask: Any, max_new_tokens: int) -> Any:
    """The logits processors ``model.generate(do_sample=False)`` builds from the model's generation_config for
    this left-padded batch (transformers' own: repetition penalty, no-repeat n-grams, ...), or None when it
    builds none. They read each row's whole ids, padding included, as ``generate`` passes them; a repetition
    penalty skips each row's left padding (read off ``attention_mask``), as ``generate`` has it."""
    if not generation_settings(model):
        return None
    if model.generation_config.guidance_scale not in (None, 1.0) or model.generation_config.watermarking_config:
        raise ValueError(
            "harness's greedy decoding cannot apply a generation_config's guidance_scale or "
            "watermarking_config (they keep state across the batch); remove them from the model's "
            "generation_config"
        )
    width = input_ids.shape[1]
    config, _ = model._prepare_generation_config(
        None,
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        eos_token_id=prompter.end_ids or None,
        pad_token_id=prompter.tokenizer.pad_token_id,
    )
    model._prepare_special_tokens(config, True, device=input_ids.device, batch_size=input_ids.shape[0])
    config.max_length = width + max_new_tokens  # as generate prepares the lengths
    if config.min_new_tokens is not None:
        config.min_length = config.min_new_tokens + width
    processors = model._get_logits_processor(
        config,
        input_ids_seq_length=width,
        encoder_input_ids=input_ids,
        device=input_ids.device,
        model_kwargs={"attention_mask": attention_mask},
    )
    return processors or None


def generate(
    model: Any, prompter: Prompter, input_ids: Any, attention_mask: Any, max_new_tokens: int, num_beams: int = 1
) -> list[str]:
    """Greedy (or with ``num_beams``, beam search) ``model.generate`` of a left-padded batch until the end of
    the turn, each row's answer decoded without special tokens: the library's own loop, as a user would call
    it (the raw reference of ``harness bench``). harness serves greedy decoding with :func:`greedy_answers`,
    which gives the same tokens faster."""
    return [text for text, _ in generate_counted(model, prompter, input_ids, attention_mask, max_new_tokens, num_beams)]


def generate_counted(
    model: Any, prompter: Prompter, input_ids: Any, attention_mask: Any, max_new_tokens: int, num_beams: int = 1
) -> list[tuple[str, int]]:
    """:func:`generate`, with each row's generated token count (its end-of-turn token included; the padding
    a finished row gets while the others go on is not). Beam search (seqgpt's) runs here, in the library."""
    tokenizer = prompter.tokenizer
    out = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=num_beams,
        eos_token_id=prompter.end_ids or None,
        pad_token_id=tokenizer.pad_token_id,
    )
    new = out[:, input_ids.shape[1] :]
    counts = []
    for row in new.tolist():
        ends = [i for i, token in enumerate(row) if token in prompter.end_ids]
        counts.append(ends[0] + 1 if ends else len(row))
    return list(zip(tokenizer.batch_decode(new, skip_special_tokens=True), counts))


def greedy_answers(
    model: Any, prompter: Prompter, input_ids: Any, attention_mask: Any, max_new_tokens: int
) -> list[tuple[str, int]]:
    """Greedy decoding of a left-padded batch with the KV cache, each row until its end of turn; every row's
    answer (decoded without special tokens) and its generated token count (the end of turn included).

    In fp32, the same tokens as ``model.generate(do_sample=False)`` (tests/test_decoder.py checks it); in bf16,
    each step's close tokens are told apart in fp32 (:func:`next_tokens`), where ``generate`` takes the lowest
    id among the tokens bf16 rounds to the same logit. A row that has finished leaves the batch and its cache:
    ``generate`` keeps computing finished rows as padding until the longest answer ends, which on waybill
    records (72 to 138 tokens in a batch of 64) is a quarter of the work.

    The model's generation_config decodes as it does in ``generate`` and vLLM: its logits processors
    (:func:`greedy_processors`; a repetition penalty, no-repeat n-grams...) see each row's own ids, its padded
    prompt then its answer so far, and are built again for the rows left when rows finish. Without any, the
    loop is plain greedy at no extra cost. Sampling settings don't apply to greedy decoding."""
    import torch

    # A peft model (qwen-lora's evaluation while training) passes the cache on to the model it wraps.
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    renamed = cache_renamed(base)
    cache_name = "cache" if renamed else "past_key_values"
    ends = set(prompter.end_ids)
    head, seen = plain_head(model), []  # the head's input: the last hidden state, for next_tokens
    # The generation_config's processors (None: plain greedy, nothing more to do), on each row's whole ids.
    processors = greedy_processors(base, prompter, input_ids, attention_mask, max_new_tokens)
    history = input_ids
    hook = (
        head.register_forward_hook(lambda module, args, output: seen.append(args[0][:, -1]))
        if head is not None
        else None
    )
    try:
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        out = model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=True, logits_to_keep=1
        )
        rows = list(range(input_ids.shape[0]))  # the batch's rows still generating, by their index in the batch
        answers: list[list[int]] = [[] for _ in rows]
        mask, position = attention_mask, positions[:, -1:]
        for step in range(max_new_tokens):
            cache = out.cache if renamed else out.past_key_values
            process = None if processors is None else functools.partial(processors, history)
            tokens = next_tokens(out.logits[:, -1], seen.pop() if seen else None, head, process=process)
            keep = []
            for j, token in enumerate(tokens.tolist()):
                answers[rows[j]].append(token)
                if token not in ends:
                    keep.append(j)
            if not keep or step == max_new_tokens - 1:
                break
            if processors is not None:
                history = torch.cat([history, tokens[:, None]], dim=1)
            if len(keep) < len(rows):  # finished rows leave the batch, and their cache with them
                index = torch.tensor(keep, device=tokens.device)
                cache.batch_select_indices(index)
                rows, tokens, mask, position = [rows[j] for j in keep], tokens[index], mask[index], position[index]
                if processors is not None:  # built again for the rows left: a processor may hold one value a row
                    history, left = history[index], torch.tensor(rows, device=tokens.device)
                    processors = greedy_processors(
                        base, prompter, input_ids[left], attention_mask[left], max_new_tokens
                    )
            mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
            position = position + 1
            out = model(
                input_ids=tokens[:, None],
                attention_mask=mask,
                position_ids=position,
                use_cache=True,
                **{cache_name: cache},
            )
    finally:
        if hook is not None:
            hook.remove()
    texts = prompter.tokenizer.batch_decode(answers, skip_special_tokens=True)
    return [(text, len(ids)) for text, ids in zip(texts, answers)]


def extract(
    model: Any,
    prompter: Prompter,
    device: str,
    examples: list[Example],
    *,
    max_new_tokens: int,
    batch_size: int = 16,
    progress: Any = None,
) -> list[Prediction]:
    """Each example's fields by greedy generation, one batch of similar lengths at a time; the answer
    must be a JSON object (:func:`parse_fields`), and ``Prediction.raw`` keeps what was generated."""
    import torch

    from harness.models import length_buckets

    prompts, cut = (
        zip(*(prompter.prompt_ids(ex.text, reserve=max_new_tokens) for ex in examples)) if examples else ((), ())
    )
    batches = length_buckets([len(p) for p in prompts], batch_size)
    predictions: list[Prediction | None] = [None] * len(examples)
    if progress is not None:
        batches = progress.track(batches, "generate", total=len(examples), weight=len)
    with torch.inference_mode():
        for batch in batches:
            input_ids, mask, _ = left_padded([prompts[i] for i in batch], prompter.tokenizer.pad_token_id, device)
            for i, (answer, tokens) in zip(batch, greedy_answers(model, prompter, input_ids, mask, max_new_tokens)):
                raw = answer.strip()
                predictions[i] = Prediction(
                    fields=parse_fields(raw), raw=raw, truncated=cut[i], generated_tokens=tokens
                )
    return predictions  # type: ignore[return-value]
