"""One model on an OpenAI-compatible server, asked for chat or text completions, its API key kept hidden.

The endpoint is checked before anything trains, each request's failure is a counted
:class:`~harness.completions.Reply`, and the key is hidden in all that comes back.
What the ``openai`` approach (any endpoint), the ``vllm`` engine (a server harness starts,
:mod:`harness.local_server`) and a teacher share:

- :class:`Endpoint`: one base URL and model, asked with up to ``concurrency`` requests in flight on one
  :class:`~harness.openai_client.Session` (its client, connection pool and per-try deadline). Time-outs (a try
  past its deadline among them), connection errors, 429s and 5xxs are retried by the client with its
  exponential backoff, each try with a deadline of its own, and a 429's ``Retry-After`` is honoured
  (openai-python waits what the server asks, up to a minute); what still fails is a :class:`Reply` with
  ``error`` set: the run finishes and counts it. So is an answer that is not a completion
  (:mod:`harness.completions`). Each reply keeps its latency, token usage and the server's
  ``system_fingerprint``. Whoever asked decides what too many failures mean: a row most of whose timed answers
  failed fails (harness.units), a teacher stops in one line.
- :meth:`Endpoint.check`: the endpoint reached within its deadline, OpenAI-compatible (a model list), the key
  accepted, the model served, in one line each (:class:`~harness.errors.UserError`) before anything trains.
- The key comes from an environment variable named by a setting: it is given to the client and nowhere else,
  and every message that leaves this module has it replaced by ``<secret>``; so has every reply (its text,
  top-logprob tokens, fingerprint and error), for a server may echo the request back.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from harness.completions import Reply, Unreadable, cause, glimpse, model_ids, read_completion, status_line
from harness.errors import UserError
from harness.openai_client import Session, openai_module
from harness.redaction import SECRET


class Endpoint:
    """``model`` on the OpenAI-compatible server at ``base_url``; the key is read from the environment variable
    ``api_key_env`` (empty: no key, as a local vLLM or llama.cpp server takes). One :class:`Session` for its
    life: :meth:`close` (or ``with``) ends it."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "",
        concurrency: int = 8,
        timeout: float = 60.0,
        max_retries: int = 4,
    ):
        self.base_url, self.model = base_url.rstrip("/"), model
        self.concurrency = concurrency
        self.api_key_env = api_key_env
        self._key = os.environ.get(api_key_env, "") if api_key_env else ""
        if api_key_env and not self._key:
            raise UserError(
                f"the environment variable {api_key_env} that should hold the API key is not set", where="api_key_env"
            )
        self.session = Session(self.base_url, self._key, timeout=timeout, max_retries=max_retries)

    def hide(self, text: str) -> str:
        """``text`` with the key replaced: what any message about a request may say."""
        return text.replace(self._key, SECRET) if self._key else text

    def hide_reply(self, reply: Reply) -> Reply:
        """``reply`` with the key replaced wherever a server could have put it (one that echoes the request)."""
        if self._key:
            hide = self.hide
            reply.text, reply.error = hide(reply.text), reply.error and hide(reply.error)
            reply.fingerprint = reply.fingerprint and hide(reply.fingerprint)
            reply.top_logprobs = [
                {hide(token): logprob for token, logprob in position.items()} for position in reply.top_logprobs
            ]
        return reply

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Endpoint:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def check(self) -> None:
        """The server answers, takes the key and serves the model; else one line, and the compare stops."""
        openai = openai_module()

        async def models(client: Any) -> Any:
            return await client.with_options(max_retries=1).models.with_raw_response.list()

        try:
            raw = self.session.run(models)
        except openai.AuthenticationError:
            raise UserError(
                f"{self.base_url} refused the API key in ${self.api_key_env or '(none set)'} (401)", where="api_key_env"
            ) from None
        except openai.APITimeoutError:
            raise UserError(
                f"{self.base_url} did not answer GET /models within the {self.session.timeout:g} s deadline",
                where="base_url",
            ) from None
        except openai.APIConnectionError as exc:
            raise UserError(f"cannot reach {self.base_url}: {self.hide(cause(exc))}", where="base_url") from None
        except openai.APIStatusError as exc:
            raise UserError(
                f"{self.base_url} answered GET /models with {self.hide(status_line(exc))}", where="base_url"
            ) from None
        served = model_ids(raw)
        if served is None:
            raise UserError(
                f"{self.base_url} answered GET /models with something that is not an OpenAI-compatible "
                f"model list ({self.hide(glimpse(raw))}): is base_url right?",
                where="base_url",
            )
        if served and self.model not in served:
            raise UserError(
                f"{self.base_url} does not serve model {self.model!r} (404); it serves "
                f"{self.hide(', '.join(served[:10]))}",
                where="model",
            )

    def chat(self, conversations: Sequence[list[dict[str, str]]], **params: Any) -> list[Reply]:
        """One chat completion per conversation, in order, ``concurrency`` in flight."""
        return self._run("chat", list(conversations), params)

    def complete(self, prompts: Sequence[str | list[int]], **params: Any) -> list[Reply]:
        """One completion per prompt (text, or token ids as vLLM takes them), in order."""
        return self._run("completion", list(prompts), params)

    def _run(self, kind: str, items: list[Any], params: dict[str, Any]) -> list[Reply]:
        return self.session.gather(lambda client, item: self._ask(client, kind, item, params), items, self.concurrency)

    async def _ask(self, client: Any, kind: str, item: Any, params: dict[str, Any]) -> Reply:
        openai = openai_module()
        start = time.perf_counter()
        try:
            if kind == "chat":
                raw = await client.chat.completions.with_raw_response.create(model=self.model, messages=item, **params)
            else:
                raw = await client.completions.with_raw_response.create(model=self.model, prompt=item, **params)
            reply = read_completion(kind, raw)
        except openai.APIStatusError as exc:
            reply = Reply(error=status_line(exc))
        except openai.APITimeoutError:
            reply = Reply(error=f"no whole answer within the {self.session.timeout:g} s deadline")
        except openai.APIConnectionError as exc:
            reply = Reply(error=f"{type(exc).__name__}: {cause(exc)}")
        except Unreadable as exc:
            reply = Reply(error=f"not a completion: {exc}")
        reply.seconds = time.perf_counter() - start
        return self.hide_reply(reply)
