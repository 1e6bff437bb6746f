"""openai: any OpenAI-compatible endpoint as a zero-shot approach (a hosted API, ``vllm serve``, SGLang, a
llama.cpp server), asked the spec's prompt through the maintained ``openai`` client (the ``[openai]`` extra).

Nothing trains. Every test example is one chat request with the spec's prompt as messages
(:func:`harness.decoder.chat_messages`, the messages qwen's chat template renders), ``concurrency`` in
flight (:class:`harness.endpoint.Endpoint`: retries with backoff, a 429's ``Retry-After`` honoured, an answer
that still fails counted as wrong and noted).

- Classification: the first answer token's top log-probabilities give the option letters' probabilities
  (``logprobs: true``, where the server offers them); else the answer text is parsed (a letter, or an option's
  name). An answer naming no option is invalid (counted).
- Extraction: ``response_format: json_object`` where the server supports it (``none`` where it does not), the
  answer parsed by the core's :func:`harness.answers.parse_fields` and scored as every approach's.
- The key: ``api_key_env`` names the environment variable holding it; the key itself is never a setting, never
  in a record, a log or an error. The endpoint and model are in the run's identity (they are its settings);
  the server's ``system_fingerprint``, known only once it answers, is in the row's notes.
- Speed is the client's view: requests/s over the test set at ``concurrency`` in flight, batch-1 latency,
  prompt and completion tokens as the server counts them. One client (one connection pool, one event loop)
  serves the unit's every request (:class:`harness.openai_client.Session`), as a real client would.
- A row most of whose answers in the timed pass failed (more than half, after retries) fails, in one line with
  the first error (the core's rule, :class:`harness.units.AnswersFailed`); a few failed requests are answers
  counted as wrong, and noted.
- bench's raw row (``reference``): the same chat requests from a bare loop over one persistent client, nothing
  parsed.

``harness compare`` checks the endpoint before anything trains: unreachable, a refused key (401) or a model it
does not serve (404) is one line and exit 2.
"""

from __future__ import annotations

from typing import Any, Literal

from harness import Artifact, Example, Prediction, RunContext, Serving, Task, hookimpl, setting
from harness.answers import letter_choice, parse_fields
from harness.approach import Settings, ZeroShotApproach
from harness.completions import Reply
from harness.decoder import chat_messages
from harness.endpoint import Endpoint
from harness.openai_client import Session


class OpenAISettings(Settings):
    base_url: str = setting(
        "http://127.0.0.1:8000/v1",
        predict=True,
        help="the server's OpenAI API root (vllm serve's default; https://api.openai.com/v1, ...)",
    )
    model: str = setting("", predict=True, help="the model name the server knows")
    api_key_env: str = setting("", predict=True, help="the environment variable that holds the API key; empty: none")
    concurrency: int = setting(8, ge=1, predict=True, help="requests in flight")
    timeout: float = setting(60.0, gt=0, predict=True, help="seconds per request before it is retried")
    max_retries: int = setting(
        4,
        ge=0,
        predict=True,
        help="retries of a request that timed out, was refused with 429 or failed with 5xx, with backoff",
    )
    max_tokens: int = setting(256, ge=1, predict=True, help="extraction: the longest answer; classification asks 16")
    logprobs: bool = setting(True, predict=True, help="classification: read the letters' log-probabilities")
    response_format: Literal["json_object", "none"] = setting(
        "json_object", predict=True, help="extraction: ask for a JSON object"
    )


class OpenAIEndpoint(ZeroShotApproach):
    """Zero-shot answers from an OpenAI-compatible endpoint: one chat request per example with the spec's prompt,
    ``concurrency`` in flight, the endpoint checked (reached, key accepted, model served) before anything
    trains."""

    name = "openai"
    task_types = ("classification", "extraction")
    settings = OpenAISettings
    description = "any OpenAI-compatible endpoint, zero-shot on the spec's prompt (openai client)"

    def check(self, task: Task, settings: OpenAISettings, context: RunContext) -> None:
        with _endpoint(settings) as endpoint:
            endpoint.check()

    def load(self, task: Task, artifact: Artifact, settings: OpenAISettings, context: RunContext) -> Serving:
        if "serving" not in artifact.state:
            endpoint = _endpoint(settings)
            endpoint.check()
            notes = [f"{settings.model} at {settings.base_url}, {settings.concurrency} requests in flight"]
            artifact.state.update(
                endpoint=endpoint,
                fingerprints=set(),
                serving=Serving(device="endpoint", batch_size=settings.concurrency, notes=notes),
            )
        return artifact.state["serving"]

    def predict(
        self, task: Task, artifact: Artifact, examples: list[Example], settings: OpenAISettings, context: RunContext
    ) -> list[Prediction]:
        self.load(task, artifact, settings, context)
        endpoint: Endpoint = artifact.state["endpoint"]
        conversations = [chat_messages(task, ex.text) for ex in examples]
        replies = endpoint.chat(conversations, **_params(task, settings, context.seed))
        _note_fingerprints(artifact, replies)
        # Each answer's system_fingerprint, for a teacher's cache (harness.teacher): the last call's, in order.
        artifact.state["reply_fingerprints"] = [reply.fingerprint for reply in replies]
        return [answer(task, reply) for reply in replies]

    def reference(self, task: Task, artifact: Artifact, settings: OpenAISettings, context: RunContext) -> Any:
        """bench's raw row: the same chat requests, ``concurrency`` in flight, through the loop predict's requests
        take (:meth:`harness.openai_client.Session.gather`, the endpoint's persistent client), nothing parsed or
        counted."""
        self.load(task, artifact, settings, context)
        session: Session = artifact.state["endpoint"].session
        params = _params(task, settings, context.seed)

        def forward(texts: list[str]) -> list[Any]:
            return session.gather(
                lambda client, text: client.chat.completions.create(
                    model=settings.model, messages=chat_messages(task, text), **params
                ),
                texts,
                settings.concurrency,
            )

        return forward


def _params(task: Task, settings: OpenAISettings, seed: int) -> dict[str, Any]:
    """The request's parameters besides the messages: greedy, seeded, and what the task asks for."""
    params: dict[str, Any] = {"temperature": 0, "seed": seed}
    if task.type == "classification":
        params["max_tokens"] = 16
        if settings.logprobs:
            params.update(logprobs=True, top_logprobs=20)
    else:
        params["max_tokens"] = settings.max_tokens
        if settings.response_format != "none":
            params["response_format"] = {"type": settings.response_format}
    return params


def answer(task: Task, reply: Reply) -> Prediction:
    """A server's reply as a Prediction: the label (letters' log-probabilities, else the text parsed) or the
    record (:func:`parse_fields`); a failed request is an answer with ``error`` set, counted as wrong."""
    usage = {"generated_tokens": reply.completion_tokens, "prompt_tokens": reply.prompt_tokens, "error": reply.error}
    if task.type == "classification":
        label, scores = (
            (None, None) if reply.error else letter_choice(task, (reply.top_logprobs or [None])[0], reply.text)
        )
        return Prediction(label=label, scores=scores, raw=reply.text, **usage)
    raw = reply.text.strip()
    return Prediction(fields=None if reply.error else parse_fields(raw), raw=raw, **usage)


def _note_fingerprints(artifact: Artifact, replies: list[Reply]) -> None:
    """The server's system_fingerprint(s), in the row's notes, once each."""
    serving: Serving = artifact.state["serving"]
    for fingerprint in sorted({r.fingerprint for r in replies if r.fingerprint} - artifact.state["fingerprints"]):
        artifact.state["fingerprints"].add(fingerprint)
        serving.notes.append(f"system_fingerprint {fingerprint}")


def _endpoint(settings: OpenAISettings) -> Endpoint:
    if not settings.model:
        from harness.errors import UserError

        raise UserError("openai needs the model name its endpoint serves: --set openai.model=NAME", where="model")
    return Endpoint(
        settings.base_url,
        settings.model,
        api_key_env=settings.api_key_env,
        concurrency=settings.concurrency,
        timeout=settings.timeout,
        max_retries=settings.max_retries,
    )


@hookimpl
def harness_register_approaches(register: Any) -> None:
    register(OpenAIEndpoint())
