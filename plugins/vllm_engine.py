"""vllm and vllm-lora: what ``qwen`` or ``qwen-lora`` trained (or, for a zero-shot row, the base model), served
by vLLM's OpenAI-compatible server, which harness starts, waits for and stops.

Engines (``serves = "qwen"`` / ``"qwen-lora"``): they never train; ``--plugins qwen,vllm`` trains qwen once and
serves the same stored model both ways. vLLM is not a dependency of harness: it lives in an environment of its
own, as its users run it, and ``command`` says how to start its server there (``vllm serve`` by default; the
model directory and the options below are appended as ``--model DIR --port N ...``, which ``vllm serve`` and
``python -m vllm.entrypoints.openai.api_server`` both take). ``extra_args`` adds options (``--enforce-eager``),
``env`` environment variables (``VLLM_CPU_KVCACHE_SPACE=4``). The server gets them as written; a record (its
settings and identity) holds ``env``'s values and the value after a secret-looking option (``--api-key``,
``--hf-token``) as ``<secret>`` (:func:`harness.redaction.redact_settings`).

- What is served: the stored fine-tuned directory as it is; an adapter merged into its base first (vllm-lora
  serves merged weights, not vLLM's LoRA path: one model, the same weights qwen-lora's ``merge: true`` serves),
  and a base model that is not a plain directory (a GGUF file) saved as one; both built once in the load cache.
  The serving dtype is qwen's rule (``dtype``): bf16 on a CPU with bf16 units or a GPU, else fp32.
- The prompts are harness's own: :class:`harness.decoder.Prompter` renders them and their token ids are sent
  as the completion's prompt, so both engines see the same tokens.
- Classification: one generated token restricted to the option letters (``allowed_token_ids``), the letters'
  log-probabilities after that restriction (the server runs with ``--logprobs-mode processed_logprobs``): the
  softmax over the letters that qwen's letter scoring computes. Extraction: greedy generation to the end of the
  turn (``stop_token_ids``), the JSON record parsed by the core's :func:`harness.answers.parse_fields`.
- ``concurrency`` requests in flight (:class:`harness.endpoint.Endpoint`), all through one client and its
  connection pool for the unit's life; speed is what a client sees. A row most of whose requests failed fails.
- Parity on every run, after the timed pass: the same model through transformers (qwen's serving path, same
  dtype) on ``parity_samples`` test examples (0: all); answer agreement and, for classification, the largest
  letter-probability difference are recorded, and below ``min_agreement`` the row fails in one line (vLLM's
  kernels differ from torch's: bf16 answers near a tie may flip, which the default 0.99 allows).
- The server is started in the measuring unit's process group, so it stops with the unit, also when the unit
  is killed; it is stopped (SIGTERM, then SIGKILL) when measuring ends, and (bench, try) when harness gets
  SIGTERM or exits.

Needs the ``[openai]`` extra (the client) here and vLLM wherever ``command`` points.
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path
from typing import Any

from harness import Approach, Artifact, Example, Parity, Prediction, RunContext, Serving, Task, hookimpl, setting
from harness.answers import letter_choice, parse_fields
from harness.decoder import LETTERS
from harness.decoder_generation import extract
from harness.decoder_scoring import classify
from harness.endpoint import Endpoint
from harness.errors import UserError
from harness.local_server import Server, free_port
from harness.redaction import parse_env
from harness_plugins.qwen import QwenLora, QwenLoraSettings

SERVED_NAME = "harness-served"


class VllmSettings(QwenLoraSettings):
    """qwen's and qwen-lora's settings (an engine's shared settings take the trained run's values: the model, the
    prompt, max_length, max_new_tokens, dtype), and the server's own."""

    command: str = setting(
        "vllm serve", help="how to start vLLM's OpenAI server; --model DIR and the options are appended"
    )
    extra_args: str = setting("", help="more server options, e.g. --enforce-eager")
    env: str = setting("", help="environment for the server, KEY=VALUE separated by commas")
    concurrency: int = setting(8, ge=1, help="requests in flight")
    start_timeout: float = setting(600.0, gt=0, help="seconds the server may take to answer /health")
    timeout: float = setting(300.0, gt=0, help="seconds per request")
    parity_samples: int = setting(0, ge=0, help="test examples the parity check answers through transformers; 0: all")
    min_agreement: float = setting(0.99, ge=0, le=1, help="parity: the share of answers equal to transformers'")


class Vllm(Approach):
    name = "vllm"
    serves = "qwen"
    task_types = ("classification", "extraction")
    settings = VllmSettings
    description = "qwen's trained model served by vLLM's OpenAI-compatible server (started by harness)"

    def check(self, task: Task, settings: VllmSettings, context: RunContext) -> None:
        program = shlex.split(settings.command)[0] if settings.command.strip() else ""
        if not program or shutil.which(program) is None:
            raise UserError(
                f"{program or settings.command!r} is not a command here: set vllm.command to how vLLM's "
                "server starts where it is installed (e.g. /opt/vllm/bin/vllm serve)",
                where="command",
            )

    def load(self, task: Task, artifact: Artifact, settings: VllmSettings, context: RunContext) -> Serving:
        if "endpoint" not in artifact.state:
            folder, prompter, dtype, generation = _served_model(task, artifact, settings, context)
            port = free_port()
            args = [
                "--model",
                str(folder),
                "--served-model-name",
                SERVED_NAME,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--dtype",
                dtype,
                "--max-model-len",
                str(settings.max_length),
                "--logprobs-mode",
                "processed_logprobs",
                "--seed",
                str(context.seed),
                *shlex.split(settings.extra_args),
            ]
            server = Server(
                settings.command, args, port, start_timeout=settings.start_timeout, env=parse_env(settings.env)
            ).start()
            artifact.state.update(
                server=server,
                prompter=prompter,
                dtype=dtype,
                folder=folder,
                generation=generation,
                endpoint=Endpoint(
                    server.base_url,
                    SERVED_NAME,
                    concurrency=settings.concurrency,
                    timeout=settings.timeout,
                    max_retries=2,
                ),
            )
        notes = [
            f"vLLM ({artifact.state['server'].shown}) on {artifact.state['folder'].name}, {artifact.state['dtype']}, "
            f"{settings.concurrency} requests in flight"
        ]
        if self.serves == "qwen-lora":
            notes.append("the LoRA adapter merged into the weights for vLLM")
        if task.type == "extraction":
            notes.append(vllm_decoding_note(artifact.state["generation"], settings.extra_args))
        return Serving(device="server", dtype=artifact.state["dtype"], batch_size=settings.concurrency, notes=notes)

    def predict(
        self, task: Task, artifact: Artifact, examples: list[Example], settings: VllmSettings, context: RunContext
    ) -> list[Prediction]:
        self.load(task, artifact, settings, context)
        endpoint, prompter = artifact.state["endpoint"], artifact.state["prompter"]
        if task.type == "extraction":
            prompts, cut = _prompts(prompter, examples, settings.max_new_tokens)
            replies = endpoint.complete(
                prompts,
                max_tokens=settings.max_new_tokens,
                temperature=0,
                extra_body={"stop_token_ids": prompter.end_ids, "skip_special_tokens": True},
            )
            return [
                Prediction(
                    fields=None if r.error else parse_fields(r.text.strip()),
                    raw=r.text.strip(),
                    truncated=c,
                    generated_tokens=r.completion_tokens,
                    prompt_tokens=r.prompt_tokens,
                    error=r.error,
                )
                for r, c in zip(replies, cut)
            ]
        reserve = max(len(ids) for ids in prompter.answer_ids) + len(prompter.end_ids)
        prompts, cut = _prompts(prompter, examples, reserve)
        letters = {f"token_id:{token}": LETTERS[i] for i, token in enumerate(prompter.option_tokens)}
        replies = endpoint.complete(
            prompts,
            max_tokens=1,
            temperature=0,
            logprobs=len(letters),
            extra_body={"allowed_token_ids": prompter.option_tokens, "return_tokens_as_token_ids": True},
        )
        predictions = []
        for reply, truncated in zip(replies, cut):
            top = {letters[k]: v for k, v in (reply.top_logprobs or [{}])[0].items() if k in letters}
            label, scores = (None, None) if reply.error else letter_choice(task, top, "")
            predictions.append(
                Prediction(
                    label=label,
                    scores=scores,
                    truncated=truncated,
                    error=reply.error,
                    generated_tokens=reply.completion_tokens,
                    prompt_tokens=reply.prompt_tokens,
                )
            )
        return predictions

    def reference(self, task: Task, artifact: Artifact, settings: VllmSettings, context: RunContext) -> Any:
        """A bare client loop against the same server: the openai client's completions, ``concurrency`` in
        flight, the same prompts and parameters, nothing parsed; through the loop and the one persistent client
        predict's requests take (:meth:`harness.openai_client.Session.gather`)."""
        self.load(task, artifact, settings, context)
        prompter, session = artifact.state["prompter"], artifact.state["endpoint"].session
        if task.type == "extraction":
            reserve = settings.max_new_tokens
            params = {"max_tokens": settings.max_new_tokens, "extra_body": {"stop_token_ids": prompter.end_ids}}
        else:
            reserve = max(len(ids) for ids in prompter.answer_ids) + len(prompter.end_ids)
            params = {
                "max_tokens": 1,
                "logprobs": len(prompter.option_tokens),
                "extra_body": {"allowed_token_ids": prompter.option_tokens},
            }

        def forward(texts: list[str]) -> list[Any]:
            prompts = [prompter.prompt_ids(text, reserve=reserve)[0] for text in texts]
            return session.gather(
                lambda client, prompt: client.completions.create(
                    model=SERVED_NAME, prompt=prompt, temperature=0, **params
                ),
                prompts,
                settings.concurrency,
            )

        return forward

    def parity(
        self, task: Task, artifact: Artifact, examples: list[Example], settings: VllmSettings, context: RunContext
    ) -> Parity:
        """The same examples through transformers, as qwen serves them (same weights, dtype and prompts)."""
        sample = examples[: settings.parity_samples] if settings.parity_samples else examples
        served = self.predict(task, artifact, sample, settings, context)
        state = artifact.state
        local = Artifact(path=artifact.path, info=artifact.info)
        QwenLora().load(task, local, _qwen_settings(settings, self.serves), context)
        model, prompter, device = (local.state[k] for k in ("serving_model", "prompter", "device"))
        if task.type == "extraction":
            ours = extract(model, prompter, device, sample, max_new_tokens=settings.max_new_tokens, batch_size=16)
            same = sum(a.fields == b.fields and a.raw == b.raw for a, b in zip(served, ours))
            diff = None
        else:
            ours = classify(model, prompter, device, sample, batch_size=16)
            same = sum(a.label == b.label for a, b in zip(served, ours))
            diff = max(
                (
                    abs(a.scores[label] - b.scores[label])
                    for a, b in zip(served, ours)
                    if a.scores and b.scores
                    for label in task.labels
                ),
                default=0.0,
            )
        del local, model
        agreement = same / len(sample) if sample else 1.0
        ok = agreement >= settings.min_agreement
        what = "records" if task.type == "extraction" else "labels"
        message = (
            ""
            if ok
            else (
                f"vLLM's {what} equal transformers' on {agreement:.1%} of {len(sample)} test examples, "
                f"below min_agreement {settings.min_agreement:.1%}"
                + (f"; largest letter-probability difference {diff:.3g}" if diff is not None else "")
            )
        )
        state["endpoint"].close()  # measuring is done: the client's connections, then the server
        state["server"].stop()
        return Parity(
            against=f"{self.serves} through transformers ({state['dtype']})",
            n=len(sample),
            agreement=agreement,
            max_abs_diff=diff,
            ok=ok,
            message=message,
        )


class VllmLora(Vllm):
    name = "vllm-lora"
    serves = "qwen-lora"
    description = "qwen-lora's adapter merged into its base and served by vLLM's OpenAI-compatible server"


def _qwen_settings(settings: VllmSettings, serves: str) -> QwenLoraSettings:
    """The settings qwen's own serving path reads, merged for an adapter (vLLM serves merged weights)."""
    # parity_samples is the engine's own (its check against transformers), not qwen-lora's merge check.
    fields = {
        k: v for k, v in settings.as_dict().items() if k in QwenLoraSettings.model_fields and k != "parity_samples"
    }
    return QwenLoraSettings(**{**fields, "merge": serves == "qwen-lora"})


# What of a generation_config vLLM applies to a greedy request (its default sampling parameters, read from the
# model's generation_config under --generation-config auto, vLLM's default since 0.8, which .ci/run's 0.32
# has: sampling settings aside, only the repetition penalty changes greedy scores); harness's loop and
# generate apply more.
VLLM_GENERATION = ("repetition_penalty",)


def vllm_decoding_note(generation: dict[str, Any], extra_args: str = "") -> str:
    """The extraction row's note on the decoding rule: what of the model's generation_config vLLM applies,
    and what it cannot (answers may then differ from transformers', which the parity check counts)."""
    args = shlex.split(extra_args)
    source = next(
        (
            arg.partition("=")[2] or (args[i + 1] if i + 1 < len(args) else "")
            for i, arg in enumerate(args)
            if arg.partition("=")[0] == "--generation-config"
        ),
        "auto",
    )
    if source == "vllm":
        return (
            "vLLM decodes plain greedy (--generation-config vllm): it applies none of the model's "
            "generation_config, which harness's transformers path does"
            if generation
            else "vLLM decodes plain greedy (--generation-config vllm)"
        )
    if source != "auto":  # a folder: its generation_config.json, not the model's
        return (
            f"vLLM decodes greedy with the generation_config in {source} (--generation-config), not the model's: "
            "answers may differ from transformers' (the parity check counts them)"
        )
    applied = {k: v for k, v in generation.items() if k in VLLM_GENERATION}
    missing = {k: v for k, v in generation.items() if k not in VLLM_GENERATION}
    note = (
        "vLLM decodes greedy with the model's generation_config: " + ", ".join(f"{k}={v}" for k, v in applied.items())
        if applied
        else "vLLM decodes plain greedy (the model's generation_config sets no repetition_penalty)"
    )
    if missing:
        note += (
            "; vLLM has no "
            + ", ".join(f"{k}={v}" for k, v in missing.items())
            + ", which transformers applies: answers may differ (the parity check counts them)"
        )
    return note


def _served_model(
    task: Task, artifact: Artifact, settings: VllmSettings, context: RunContext
) -> tuple[Path, Any, str, dict[str, Any]]:
    """The directory vLLM loads, the Prompter, the serving dtype, and what of the model's generation_config
    changes greedy decoding (:func:`harness.decoder_generation.generation_settings`). A stored fine-tuned model
    is served from its own directory; a merged adapter or a base model that is not a plain directory is saved
    once in the load cache."""
    import json

    from harness.decoder_generation import generation_settings

    local = Artifact(path=artifact.path, info=artifact.info)
    serving = QwenLora().load(task, local, _qwen_settings(settings, "qwen-lora"), context)
    prompter, tokenizer, dtype = local.state["prompter"], local.state["tokenizer"], serving.dtype
    generation = generation_settings(local.state["serving_model"])
    path = artifact.path
    if (
        path is not None
        and (Path(path) / "config.json").is_file()
        and not (Path(path) / "adapter_config.json").is_file()
    ):
        return Path(path), prompter, dtype, generation
    folder = (context.cache_dir or Path(path or ".").parent) / "vllm-model"
    done = folder / "harness-built.json"
    if not done.is_file():
        if folder.exists():
            shutil.rmtree(folder)
        local.state["serving_model"].save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        done.write_text(json.dumps({"from": str(path or settings.model), "dtype": dtype}))
    return folder, prompter, dtype, generation


def _prompts(prompter: Any, examples: list[Example], reserve: int) -> tuple[list[list[int]], list[bool]]:
    pairs = [prompter.prompt_ids(ex.text, reserve=reserve) for ex in examples]
    return [ids for ids, _ in pairs], [cut for _, cut in pairs]


@hookimpl
def harness_register_approaches(register: Any) -> None:
    register(Vllm())
    register(VllmLora())
