"""seqgpt: seed 002's zero-shot SeqGPT (``DAMO-NLP/SeqGPT-560M``, a BLOOM model tuned for zero-shot
classification and extraction in Chinese and English), or any BLOOM-style causal LM. Nothing trains.

The prompt is the seed's, to the character::

    输入: {text}
    分类: {label names joined by "，"}
    输出: [GEN]

with ``抽取`` instead of ``分类`` and the field names for extraction. The label names are the interface of a
zero-shot model: the spec's ``option_labels`` (else ``labels``) are what it is asked, whatever ids the data
uses, and the row's notes say which names it saw; for extraction ``field_names`` gives the names it is asked
for each spec field (empty: the spec's own).

- Generation: beam search with ``num_beams`` (4) and at most ``max_new_tokens`` (256), batched with prompts of
  similar length together, left padded, each row stopping at the end token
  (:func:`harness.decoder_generation.generate_counted`, the shared decoder code; the prompt is
  :class:`harness.decoder.Prompter`'s raw prompt, which cuts the text, never the question, to fit ``max_length``).
- Classification: the answer's first line (before a ``:``, if any) is matched to an asked name exactly, then
  after the seed's normalisation (NFKC, case, spaces and punctuation); no match is an invalid answer (counted).
- Extraction: at most ``max_fields`` (6) field names per prompt, a longer list split into balanced parts, as
  the seed does; each output line ``name: value`` is read (several lines or values for one field are joined
  with "，"; ``None`` and ``无`` mean empty); the parts' answers are merged into one record, scored by the core's
  extraction metrics. An answer with no line naming an asked field is invalid; a field without a line is empty.
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Any, Literal

from harness import Artifact, Example, Prediction, RunContext, Serving, Task, hookimpl, setting
from harness.approach import Settings, ZeroShotApproach
from harness.batching import left_padded
from harness.decoder import Prompter
from harness.decoder_generation import generate, generate_counted
from harness.types import Prompt

EMPTY = {"none", "无", "null", ""}
JOIN = "，"  # the seed joins names, and harness joins several values, with the full-width comma


class SeqGPTSettings(Settings):
    # Not predict settings: the model's content hash is then part of the run's (trivial) training identity.
    model: str = setting("DAMO-NLP/SeqGPT-560M", model=True, help="a hub id or a local directory")
    tokenizer: str = setting("", model=True, help="empty: the model's own")
    num_beams: int = setting(4, ge=1, predict=True, help="beam search width (the seed's 4)")
    max_new_tokens: int = setting(256, ge=1, predict=True)
    max_length: int = setting(1024, ge=16, predict=True, help="prompt and answer together; the text is cut to fit")
    max_fields: int = setting(6, ge=1, predict=True, help="extraction: field names asked in one prompt")
    field_names: str = setting(
        "",
        predict=True,
        help="extraction: the names asked for the spec's fields, in their "
        "order, separated by commas; empty: the spec's field names",
    )
    predict_batch_size: int = setting(0, ge=0, predict=True, help="0: 32 on CUDA, 8 on CPU")
    device: str = setting("auto", predict=True)
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = setting(
        "auto", predict=True, help="auto: bf16 on a GPU or a CPU with bf16 units, else fp32"
    )


class SeqGPT(ZeroShotApproach):
    """Zero-shot answers from SeqGPT: the seed's prompt, beam search, the answers parsed."""

    name = "seqgpt"
    task_types = ("classification", "extraction")
    settings = SeqGPTSettings
    description = "zero-shot SeqGPT (BLOOM): the seed's prompt, beam search, answers parsed; nothing trains"

    def check(self, task: Task, settings: SeqGPTSettings, context: RunContext) -> None:
        _asked(task, settings)  # field_names that do not match the spec's fields: one line before the model loads

    def load(self, task: Task, artifact: Artifact, settings: SeqGPTSettings, context: RunContext) -> Serving:
        if "model" not in artifact.state:
            artifact.state.update(_model(settings, context))
        names = _asked(task, settings)
        kind = "labels" if task.type == "classification" else "fields"
        notes = [
            f"zero-shot; asked with the {kind} {JOIN.join(names)}",
            f"beam search, {settings.num_beams} beams, at most {settings.max_new_tokens} new tokens",
        ]
        device = artifact.state["device"]
        return Serving(
            device=device, dtype=artifact.state["dtype"], batch_size=32 if device.startswith("cuda") else 8, notes=notes
        )

    def predict(
        self, task: Task, artifact: Artifact, examples: list[Example], settings: SeqGPTSettings, context: RunContext
    ) -> list[Prediction]:
        serving = self.load(task, artifact, settings, context)
        batch = context.batch_size or settings.predict_batch_size or serving.batch_size
        if task.type == "classification":
            names = _asked(task, settings)
            answers = _answers(artifact, task, settings, [(ex.text, names) for ex in examples], batch, context)
            return [
                Prediction(
                    label=parse_label(raw, names, list(task.labels)), raw=raw, truncated=cut, generated_tokens=tokens
                )
                for raw, tokens, cut in answers
            ]
        groups = field_groups(list(task.fields), _asked(task, settings), settings.max_fields)
        asks = [(ex.text, [name for _, name in group]) for ex in examples for group in groups]
        answers = _answers(artifact, task, settings, asks, batch, context)
        predictions = []
        for i in range(len(examples)):
            parts = answers[i * len(groups) : (i + 1) * len(groups)]
            record = merge_fields([(group, raw) for group, (raw, _, _) in zip(groups, parts)])
            predictions.append(
                Prediction(
                    fields=record,
                    raw="\n".join(raw for raw, _, _ in parts),
                    truncated=any(cut for _, _, cut in parts),
                    generated_tokens=sum(tokens for _, tokens, _ in parts),
                )
            )
        return predictions

    def reference(self, task: Task, artifact: Artifact, settings: SeqGPTSettings, context: RunContext) -> Any:
        """The seed's own way: the prompt string through the tokenizer (left padding), ``generate`` with its
        beams, the answers decoded."""
        import torch

        model, tokenizer, device = (artifact.state[k] for k in ("model", "tokenizer", "device"))
        names = _asked(task, settings)
        if task.type == "extraction":
            names = names[: settings.max_fields]
        prompter = _prompter(task, tokenizer, settings, names)

        def forward(texts: list[str]) -> list[str]:
            with torch.inference_mode():
                batch = tokenizer(
                    [prompter.prompt_text(t) for t in texts], padding=True, padding_side="left", return_tensors="pt"
                ).to(device)
                return generate(
                    model,
                    prompter,
                    batch["input_ids"],
                    batch["attention_mask"],
                    settings.max_new_tokens,
                    num_beams=settings.num_beams,
                )

        return forward


def seqgpt_prompt(task_type: str, names: list[str]) -> str:
    """The seed's prompt template for a list of label or field names: ``{text}`` is the only placeholder."""
    kind = "分类" if task_type == "classification" else "抽取"
    listed = JOIN.join(names).replace("{", "{{").replace("}", "}}")
    return f"输入: {{text}}\n{kind}: {listed}\n输出: [GEN]"


def _asked(task: Task, settings: SeqGPTSettings) -> list[str]:
    if task.type == "classification":
        return list(task.option_labels or task.labels)
    if not settings.field_names.strip():
        return list(task.fields)
    names = [n.strip() for n in settings.field_names.split(",")]
    if len(names) != len(task.fields) or not all(names):
        from harness.errors import UserError

        raise UserError(
            f"has {len(names)} names for the spec's {len(task.fields)} fields ({', '.join(task.fields)})",
            where="field_names",
        )
    return names


def field_groups(fields: list[str], names: list[str], most: int) -> list[list[tuple[str, str]]]:
    """The (field, asked name) pairs split into the fewest prompts of at most ``most`` names, sizes balanced
    (8 fields, at most 6 a prompt: 4 and 4)."""
    pairs = list(zip(fields, names))
    parts = max(1, math.ceil(len(pairs) / most))
    size, extra = divmod(len(pairs), parts)
    groups, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        groups.append(pairs[start:end])
        start = end
    return groups


def _fold(text: str) -> str:
    """The seed's normalisation: NFKC, case folded, spaces and punctuation removed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return "".join(c for c in text if not (c.isspace() or unicodedata.category(c).startswith("P")))


def parse_label(raw: str, names: list[str], labels: list[str]) -> str | None:
    """The label whose asked name the answer gives: the whole answer, or its first line (the part before a
    ``:`` if there is one), equal to a name, exactly or after :func:`_fold`; else None (invalid)."""
    text = raw.strip()
    first = text.splitlines()[0].strip() if text else ""
    key = re.split(r"[:：]", first, maxsplit=1)[0].strip()
    for candidate in (text, first, key):
        if candidate in names:
            return labels[names.index(candidate)]
    folded = [_fold(n) for n in names]
    for candidate in (text, first, key):
        if candidate and _fold(candidate) in folded:
            return labels[folded.index(_fold(candidate))]
    return None


def parse_lines(raw: str, names: list[str]) -> dict[str, list[str]]:
    """``name: value`` lines of an answer, by asked name: every non-empty value (a line's values split on
    commas, several lines allowed), ``None`` and ``无`` meaning nothing; names that are not asked are ignored."""
    found: dict[str, list[str]] = {}
    folded = {_fold(n): n for n in names}
    for line in raw.splitlines():
        if not re.search(r"[:：]", line):
            continue
        key, value = (part.strip() for part in re.split(r"[:：]", line, maxsplit=1))
        name = key if key in names else folded.get(_fold(key))
        if name is None:
            continue
        values = found.setdefault(name, [])
        for item in re.split(r"[，,]", value):
            item = item.strip()
            if item.casefold() not in EMPTY and item not in values:
                values.append(item)
    return found


def merge_fields(parts: list[tuple[list[tuple[str, str]], str]]) -> dict[str, Any] | None:
    """One record from the sub-prompts' answers: each spec field's values (joined by "，"), None where its line
    is missing or empty; None for the whole record when no answer named any asked field."""
    record: dict[str, Any] = {}
    named = False
    for group, raw in parts:
        found = parse_lines(raw, [name for _, name in group])
        named = named or bool(found)
        for field, name in group:
            values = found.get(name)
            record[field] = JOIN.join(values) if values else None
    return record if named else None


def _prompter(task: Task, tokenizer: Any, settings: SeqGPTSettings, names: list[str]) -> Prompter:
    from dataclasses import replace

    asked = replace(task, prompt=Prompt(user="{text}", raw=seqgpt_prompt(task.type, names)))
    return Prompter(
        asked,
        tokenizer,
        {
            "chat_template": False,
            "max_length": settings.max_length,
            "max_new_tokens": settings.max_new_tokens,
            "answer": "label",
        },
    )


def _answers(
    artifact: Artifact,
    task: Task,
    settings: SeqGPTSettings,
    asks: list[tuple[str, list[str]]],
    batch_size: int,
    context: RunContext,
) -> list[tuple[str, int, bool]]:
    """Each (text, names) asked: the raw answer, its generated tokens and whether the text was cut; prompts
    of similar length batched together."""
    import torch

    from harness.models import length_buckets

    model, tokenizer, device = (artifact.state[k] for k in ("model", "tokenizer", "device"))
    prompters: dict[tuple[str, ...], Prompter] = artifact.state.setdefault("prompters", {})
    prompts = []
    for text, names in asks:
        key = tuple(names)
        if key not in prompters:
            prompters[key] = _prompter(task, tokenizer, settings, names)
        prompts.append(prompters[key].prompt_ids(text, reserve=settings.max_new_tokens))
    any_prompter = next(iter(prompters.values()), None)
    results: list[tuple[str, int, bool] | None] = [None] * len(asks)
    batches = length_buckets([len(ids) for ids, _ in prompts], batch_size)
    batches = context.progress.track(batches, "generate", total=len(asks), weight=len)
    with torch.inference_mode():
        for batch in batches:
            input_ids, mask, _ = left_padded([prompts[i][0] for i in batch], tokenizer.pad_token_id, device)
            answers = generate_counted(
                model, any_prompter, input_ids, mask, settings.max_new_tokens, settings.num_beams
            )
            for i, (raw, tokens) in zip(batch, answers):
                results[i] = (raw.strip(), tokens, prompts[i][1])
    return results  # type: ignore[return-value]


def _model(settings: SeqGPTSettings, context: RunContext) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.models import from_pretrained, load_config, pick_device, pick_dtype

    device = pick_device(settings.device)
    dtype = pick_dtype(device, settings.dtype, cpu_bf16=True)
    tokenizer = from_pretrained(AutoTokenizer, settings.tokenizer or settings.model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if context.random_weights:
        model = AutoModelForCausalLM.from_config(load_config(settings.model), dtype=dtype)
    else:
        model = from_pretrained(AutoModelForCausalLM, settings.model, dtype=dtype)
    return {
        "model": model.to(device).eval(),
        "tokenizer": tokenizer,
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
    }


@hookimpl
def harness_register_approaches(register: Any) -> None:
    register(SeqGPT())
