"""An OpenAI-compatible server asked through the maintained ``openai`` client (the ``[openai]`` extra).

What the ``openai`` approach (any endpoint), the ``vllm`` engine (a server harness starts) and a teacher share:

- :class:`Endpoint`: one base URL and model, asked with up to ``concurrency`` requests in flight (asyncio, the
  client's ``AsyncOpenAI``). Time-outs, connection errors, 429s and 5xxs are retried by the client with its
  exponential backoff, and a 429's ``Retry-After`` is honoured (openai-python waits what the server asks, up to
  a minute); what still fails is a :class:`Reply` with ``error`` set, never an exception: the run finishes and
  counts it. Each reply keeps its latency, token usage and the server's ``system_fingerprint``.
- :meth:`Endpoint.check`: the endpoint reached, the key accepted, the model served, in one line each
  (:class:`~harness.errors.UserError`) before anything trains.
- The key comes from an environment variable named by a setting: it is given to the client and nowhere else,
  and every message that leaves this module has it replaced by ``<secret>``.
- :class:`Server`: an OpenAI-compatible server started from a command (``vllm serve``), waited for until
  ``/health`` answers, stopped (SIGTERM, then SIGKILL) when done or when the process exits; one that dies while
  starting is one line with the last lines of its log.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import UserError

SECRET = "<secret>"


def openai_module() -> Any:
    try:
        import openai
    except ImportError:
        raise ImportError("talking to an OpenAI-compatible endpoint needs the openai client: "
                          "pip install 'harness-compare[openai]'") from None
    return openai


@dataclass
class Reply:
    """One request's outcome: the answer's text, the top log-probabilities of each generated token (token text,
    or ``token_id:N`` where asked, to log-probability), usage, latency, and ``error`` when no answer came."""

    text: str = ""
    top_logprobs: list[dict[str, float]] = field(default_factory=list)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    fingerprint: str | None = None
    seconds: float = 0.0
    error: str | None = None


class Endpoint:
    """``model`` on the OpenAI-compatible server at ``base_url``; the key is read from the environment variable
    ``api_key_env`` (empty: no key, as a local vLLM or llama.cpp server takes)."""

    def __init__(self, base_url: str, model: str, *, api_key_env: str = "", concurrency: int = 8,
                 timeout: float = 60.0, max_retries: int = 4):
        self.base_url, self.model = base_url.rstrip("/"), model
        self.concurrency, self.timeout, self.max_retries = concurrency, timeout, max_retries
        self.api_key_env = api_key_env
        self._key = os.environ.get(api_key_env, "") if api_key_env else ""
        if api_key_env and not self._key:
            raise UserError(f"the environment variable {api_key_env} that should hold the API key is not set",
                            where="api_key_env")

    def hide(self, text: str) -> str:
        """``text`` with the key replaced: what any message about a request may say."""
        return text.replace(self._key, SECRET) if self._key else text

    def _client(self) -> Any:
        openai = openai_module()
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=self._key or "EMPTY", timeout=self.timeout,
                                  max_retries=self.max_retries)

    def check(self) -> None:
        """The server answers, takes the key and serves the model; else one line, and the compare stops."""
        openai = openai_module()

        async def models() -> list[str]:
            async with self._client().with_options(max_retries=1) as client:
                return [m.id async for m in client.models.list()]

        try:
            served = asyncio.run(models())
        except openai.AuthenticationError:
            raise UserError(f"{self.base_url} refused the API key in ${self.api_key_env or '(none set)'} (401)",
                            where="api_key_env") from None
        except openai.APIConnectionError as exc:
            raise UserError(f"cannot reach {self.base_url}: {self.hide(_cause(exc))}", where="base_url") from None
        except openai.APIStatusError as exc:
            raise UserError(f"{self.base_url} answered GET /models with {self.hide(_status_line(exc))}",
                            where="base_url") from None
        if served and self.model not in served:
            raise UserError(f"{self.base_url} does not serve model {self.model!r} (404); it serves "
                            f"{', '.join(served[:10])}", where="model")

    def chat(self, conversations: Sequence[list[dict[str, str]]], **params: Any) -> list[Reply]:
        """One chat completion per conversation, in order, ``concurrency`` in flight."""
        return self._run("chat", list(conversations), params)

    def complete(self, prompts: Sequence[str | list[int]], **params: Any) -> list[Reply]:
        """One completion per prompt (text, or token ids as vLLM takes them), in order."""
        return self._run("completion", list(prompts), params)

    def _run(self, kind: str, items: list[Any], params: dict[str, Any]) -> list[Reply]:
        async def all_of() -> list[Reply]:
            gate = asyncio.Semaphore(self.concurrency)
            async with self._client() as client:
                async def one(item: Any) -> Reply:
                    async with gate:
                        return await self._ask(client, kind, item, params)

                return await asyncio.gather(*(one(item) for item in items))

        return asyncio.run(all_of()) if items else []

    async def _ask(self, client: Any, kind: str, item: Any, params: dict[str, Any]) -> Reply:
        openai = openai_module()
        start = time.perf_counter()
        try:
            if kind == "chat":
                response = await client.chat.completions.create(model=self.model, messages=item, **params)
            else:
                response = await client.completions.create(model=self.model, prompt=item, **params)
        except openai.APIStatusError as exc:
            return Reply(seconds=time.perf_counter() - start, error=self.hide(_status_line(exc)))
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            return Reply(seconds=time.perf_counter() - start, error=self.hide(f"{type(exc).__name__}: {_cause(exc)}"))
        seconds = time.perf_counter() - start
        choice = response.choices[0]
        usage = response.usage
        reply = Reply(seconds=seconds, fingerprint=getattr(response, "system_fingerprint", None),
                      prompt_tokens=usage.prompt_tokens if usage else None,
                      completion_tokens=usage.completion_tokens if usage else None)
        if kind == "chat":
            reply.text = choice.message.content or ""
            content = choice.logprobs.content if choice.logprobs and choice.logprobs.content else []
            reply.top_logprobs = [{alt.token: alt.logprob for alt in position.top_logprobs} for position in content]
        else:
            reply.text = choice.text or ""
            if choice.logprobs and choice.logprobs.top_logprobs:
                reply.top_logprobs = [dict(position or {}) for position in choice.logprobs.top_logprobs]
        return reply


def _status_line(exc: Any) -> str:
    """``HTTP 429: Rate limit reached``: the status and the server's own message, in one line."""
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error", body)
    message = (error.get("message") if isinstance(error, dict) else None) or str(error or exc.message)
    return f"HTTP {exc.status_code}: {message}".splitlines()[0]


def _cause(exc: BaseException) -> str:
    """The innermost reason of a connection error, in one line (``[Errno 111] Connection refused``)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """An OpenAI-compatible server started from ``command`` (split as a shell would, then ``args`` appended),
    listening on 127.0.0.1:``port``, in the calling process's process group: a harness unit's group, so it
    stops with the unit even if the unit is killed. :meth:`stop` (also at interpreter exit) ends it."""

    def __init__(self, command: str, args: list[str], port: int, *, start_timeout: float = 600.0,
                 env: dict[str, str] | None = None):
        self.command, self.args, self.port, self.start_timeout = command, args, port, start_timeout
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self.env = env
        self.process: subprocess.Popen | None = None
        self.log = Path(tempfile.mkstemp(prefix="harness-server-", suffix=".log")[1])

    def start(self) -> Server:
        import atexit

        argv = shlex.split(self.command) + self.args
        try:
            handle = self.log.open("wb")
            self.process = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env={**os.environ, **(self.env or {})})
        except FileNotFoundError:
            raise UserError(f"{argv[0]!r} is not a command here: point the setting at the environment where the "
                            "server is installed", where="command") from None
        atexit.register(self.stop)
        self._wait()
        return self

    def _wait(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        health = f"http://127.0.0.1:{self.port}/health"
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"the server ({self.command}) exited with status {self.process.returncode} while "
                                   f"starting: {self.last_lines()}")
            try:
                with urllib.request.urlopen(health, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the server ({self.command}) did not answer {health} within {self.start_timeout:.0f} s: "
                           f"{self.last_lines()}")

    def last_lines(self, n: int = 3) -> str:
        lines = [line.strip() for line in self.log.read_text(errors="replace").splitlines() if line.strip()]
        return " | ".join(lines[-n:]) or "(it wrote nothing)"

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
