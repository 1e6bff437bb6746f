"""An OpenAI-compatible server asked through the maintained ``openai`` client (the ``[openai]`` extra).

What the ``openai`` approach (any endpoint), the ``vllm`` engine (a server harness starts) and a teacher share:

- :class:`Session`: one event loop and one ``AsyncOpenAI`` client (one connection pool) on it, made on first
  use and kept until :meth:`Session.close` (or until it is garbage, or the process exits): every request of a
  unit goes through the same client and open connections, as a real client's do, so batch-1 latency measures
  the server, not a new client, event loop and TCP connection per request.
- :class:`Endpoint`: one base URL and model, asked with up to ``concurrency`` requests in flight on its
  session. Every try of a request has a deadline, ``timeout`` seconds for all of it (connecting, waiting,
  reading the whole answer): the client's own time-out bounds each read, and a server that sends a byte a
  second would never reach it. Time-outs (a try past its deadline among them), connection errors, 429s and 5xxs
  are retried by the client with its exponential backoff, each try with a deadline of its own, and a 429's
  ``Retry-After`` is honoured (openai-python waits what the server asks, up to a minute); what still fails is a
  :class:`Reply` with ``error`` set: the run finishes and counts it. So is an answer that is not a completion
  (not JSON, an HTML page, no choices, a field missing or of the wrong type), with what was wrong. Each reply
  keeps its latency, token usage and the server's ``system_fingerprint``. Whoever asked decides what too many
  failures mean: a row most of whose timed answers failed fails (harness.launcher), a teacher stops in one line.
- :meth:`Endpoint.check`: the endpoint reached within its deadline, OpenAI-compatible (a model list), the key
  accepted, the model served, in one line each (:class:`~harness.errors.UserError`) before anything trains.
- The key comes from an environment variable named by a setting: it is given to the client and nowhere else,
  and every message that leaves this module has it replaced by ``<secret>``; so has every reply (its text,
  top-logprob tokens, fingerprint and error), for a server may echo the request back.
- :func:`redact_settings`: settings as a record and an identity may hold them: the values of an engine's
  ``env`` and the value after a secret-looking command-line option (``--api-key``, ``--hf-token``, any option
  whose name has a word key, token, secret or password) are ``<secret>``; the server gets the real ones.
- :class:`Server`: an OpenAI-compatible server started from a command (``vllm serve``), waited for until
  ``/health`` answers, stopped (SIGTERM, then SIGKILL, with what it started) when done, when the process
  exits, and when the process gets SIGTERM; one that dies while starting is one line with the last lines of
  its log.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from harness.errors import UserError

SECRET = "<secret>"
T = TypeVar("T")


def openai_module() -> Any:
    try:
        import openai
    except ImportError:
        raise ImportError(
            "talking to an OpenAI-compatible endpoint needs the openai client: pip install 'harness-compare[openai]'"
        ) from None
    return openai


# ---------------------------------------------------------------------------------------------
# One client, one connection pool, one event loop.
# ---------------------------------------------------------------------------------------------


class _Loop:
    """An event loop and the AsyncOpenAI client made on it: what a :class:`Session` holds. The loop runs in
    the calling thread, one call at a time (a lock), and waits, stopped, in between, its connections kept
    open: no thread to wake and hand the answer over, so a request costs what the client's own loop costs.
    It never refers to its Session, so the Session's finalizer can close it."""

    def __init__(self, options: dict[str, Any]):
        self.options = options
        self.client: Any = None
        self.loop = asyncio.new_event_loop()
        self.lock = threading.RLock()

    def run(self, make: Callable[[Any], Awaitable[T]]) -> T:
        async def call() -> T:
            if self.client is None:
                http_client = deadline_client_class()(deadline=self.options["timeout"])
                self.client = openai_module().AsyncOpenAI(**self.options, http_client=http_client)
            return await make(self.client)

        try:
            asyncio.get_running_loop()
        except RuntimeError:  # the usual case: a plain thread, no loop of its own running
            with self.lock:
                return self.loop.run_until_complete(call())
        # Called from a coroutine (a notebook, an async caller): its loop is busy, so ours runs on a helper
        # thread, and the caller waits for it as for any blocking call.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1, thread_name_prefix="harness-endpoint") as pool:
            return pool.submit(self.run, make).result()

    def close(self) -> None:
        if not self.lock.acquire(timeout=10):  # a call still running on another thread: the process ends it
            return
        try:
            if self.loop.is_closed() or self.loop.is_running():  # garbage-collected inside its own call
                return
            try:
                asyncio.get_running_loop()
                return  # inside another loop, ours cannot run here: its sockets close with the process
            except RuntimeError:
                pass
            try:
                if self.client is not None:
                    self.loop.run_until_complete(self.client.close())
            except Exception:  # a connection that will not close cleanly is closed with the loop
                pass
            self.client = None
            self.loop.close()
        finally:
            self.lock.release()


@functools.lru_cache(maxsize=None)
def deadline_client_class() -> type:
    """The openai client's own httpx client (its connection limits, redirects), each try of a request bounded
    by ``deadline`` seconds as a whole: connecting, the first byte and the whole answer. A try past it raises
    the client's read time-out, which the openai client retries as any time-out (a new try, a new deadline)."""
    base = openai_module().DefaultAsyncHttpxClient
    # httpx, or the httpx2 of openai 3: the package whose AsyncClient the openai client's is.
    http = sys.modules[next(c for c in base.__mro__ if c.__name__ == "AsyncClient").__module__.split(".")[0]]

    class DeadlineClient(base):  # type: ignore[misc, valid-type]
        def __init__(self, *, deadline: float, **kwargs: Any):
            super().__init__(**kwargs)
            self.deadline = deadline

        async def send(self, request: Any, **kwargs: Any) -> Any:
            try:
                return await within(self.deadline, super().send(request, **kwargs))
            except asyncio.TimeoutError:
                raise http.ReadTimeout(
                    f"no whole answer within the {self.deadline:g} s deadline", request=request
                ) from None

    return DeadlineClient


async def within(seconds: float, awaitable: Awaitable[T]) -> T:
    """``await awaitable``, cancelled after ``seconds`` (:class:`asyncio.TimeoutError`)."""
    if sys.version_info >= (3, 11):  # no task of its own around the request
        async with asyncio.timeout(seconds):
            return await awaitable
    return await asyncio.wait_for(awaitable, seconds)


class Session:
    """One ``AsyncOpenAI`` client for ``base_url`` (its connection pool) on one event loop, both made on the
    first :meth:`run` and kept until :meth:`close`: the life of a unit. Callable from any thread, one call at
    a time (the requests within a call run ``concurrency`` at once). Each try of a request has ``timeout``
    seconds for all of it (:func:`deadline_client_class`); a retry starts a new deadline."""

    def __init__(self, base_url: str, api_key: str = "", *, timeout: float = 60.0, max_retries: int = 2):
        self.timeout = timeout
        self._options = {
            "base_url": base_url,
            "api_key": api_key or "EMPTY",
            "timeout": timeout,
            "max_retries": max_retries,
        }
        self._lock = threading.Lock()
        self._loop: _Loop | None = None
        self._finalizer: Any = None

    def run(self, make: Callable[[Any], Awaitable[T]]) -> T:
        """``await make(client)`` on the session's loop; its result, or its exception."""
        with self._lock:
            if self._loop is None:
                self._loop = _Loop(self._options)
                # Closed when the session is garbage, or at interpreter exit, if nobody closed it before.
                self._finalizer = weakref.finalize(self, self._loop.close)
            loop = self._loop
        return loop.run(make)

    def close(self) -> None:
        """Close the client's connections and stop the loop; a later :meth:`run` starts them again."""
        with self._lock:
            finalizer, self._loop, self._finalizer = self._finalizer, None, None
        if finalizer is not None:
            finalizer()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


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
            raise UserError(f"cannot reach {self.base_url}: {self.hide(_cause(exc))}", where="base_url") from None
        except openai.APIStatusError as exc:
            raise UserError(
                f"{self.base_url} answered GET /models with {self.hide(_status_line(exc))}", where="base_url"
            ) from None
        served = _model_ids(raw)
        if served is None:
            raise UserError(
                f"{self.base_url} answered GET /models with something that is not an OpenAI-compatible "
                f"model list ({self.hide(_glimpse(raw))}): is base_url right?",
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
        if not items:
            return []

        async def all_of(client: Any) -> list[Reply]:
            if len(items) == 1:  # batch 1: the request itself, no task to schedule around it
                return [await self._ask(client, kind, items[0], params)]
            gate = asyncio.Semaphore(self.concurrency)

            async def one(item: Any) -> Reply:
                async with gate:
                    return await self._ask(client, kind, item, params)

            return await asyncio.gather(*(one(item) for item in items))

        return self.session.run(all_of)

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
            reply = Reply(error=_status_line(exc))
        except openai.APITimeoutError:
            reply = Reply(error=f"no whole answer within the {self.session.timeout:g} s deadline")
        except openai.APIConnectionError as exc:
            reply = Reply(error=f"{type(exc).__name__}: {_cause(exc)}")
        except Unreadable as exc:
            reply = Reply(error=f"not a completion: {exc}")
        reply.seconds = time.perf_counter() - start
        return self.hide_reply(reply)


class Unreadable(ValueError):
    """A reply that is not a completion; the message says what is wrong with it."""


def read_completion(kind: str, raw: Any) -> Reply:
    """A 200 reply (the client's raw response) read as a ``chat`` completion or a text one, every field of the
    answer checked (the client's own models take anything: ``choices: []`` would fail later, unexplained);
    :class:`Unreadable` says what is not as a completion has it. Usage and fingerprint of another type are left
    out, the answer kept."""
    try:
        body = json.loads(raw.content)
    except ValueError:  # not JSON, or not UTF-8
        raise Unreadable(f"not JSON ({_glimpse(raw)})") from None
    if not isinstance(body, dict):
        raise Unreadable(f"the body is {_json_type(body)}, not an object")
    if not body.get("choices") and isinstance(body.get("error"), dict):  # an error sent with status 200
        raise Unreadable(f"an error: {body['error'].get('message')}".splitlines()[0])
    choices = _field(body, "choices", "a list", "choices")
    if not choices:
        raise Unreadable("no choices")
    choice = _typed(choices[0], "an object", "choices[0]")
    logprobs = _field(choice, "logprobs", "an object", "choices[0].logprobs", nullable=True, optional=True) or {}
    top: list[dict[str, float]] = []
    if kind == "chat":
        message = _field(choice, "message", "an object", "choices[0].message")
        text = _field(message, "content", "a string", "choices[0].message.content", nullable=True)
        where = "choices[0].logprobs.content"
        for i, position in enumerate(_field(logprobs, "content", "a list", where, nullable=True, optional=True) or []):
            at = f"{where}[{i}].top_logprobs"
            alternatives = (
                _field(
                    _typed(position, "an object", f"{where}[{i}]"),
                    "top_logprobs",
                    "a list",
                    at,
                    nullable=True,
                    optional=True,
                )
                or []
            )
            top.append(
                {
                    _field(_typed(alt, "an object", f"{at}[{j}]"), "token", "a string", f"{at}[{j}].token"): _field(
                        alt, "logprob", "a number", f"{at}[{j}].logprob"
                    )
                    for j, alt in enumerate(alternatives)
                }
            )
    else:
        text = _field(choice, "text", "a string", "choices[0].text", nullable=True)
        where = "choices[0].logprobs.top_logprobs"
        for i, position in enumerate(
            _field(logprobs, "top_logprobs", "a list", where, nullable=True, optional=True) or []
        ):
            alternatives = _typed(position, "an object", f"{where}[{i}]") if position is not None else {}
            top.append(
                {
                    token: _typed(logprob, "a number", f"{where}[{i}][{token!r}]")
                    for token, logprob in alternatives.items()
                }
            )
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    fingerprint = body.get("system_fingerprint")
    return Reply(
        text=text or "",
        top_logprobs=top,
        prompt_tokens=_count(usage.get("prompt_tokens")),
        completion_tokens=_count(usage.get("completion_tokens")),
        fingerprint=fingerprint if isinstance(fingerprint, str) else None,
    )


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _typed(value: Any, kind: str, path: str) -> Any:
    if _json_type(value) != kind:
        raise Unreadable(f"{path} is {_json_type(value)}, not {kind}")
    return value


def _field(
    parent: dict[str, Any], key: str, kind: str, path: str, *, nullable: bool = False, optional: bool = False
) -> Any:
    """``parent[key]``, of JSON type ``kind``; None where it may be null or missing and is."""
    if key not in parent:
        if optional:
            return None
        raise Unreadable(f"no {path}")
    value = parent[key]
    return None if value is None and nullable else _typed(value, kind, path)


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _model_ids(raw: Any) -> list[str] | None:
    """The model ids of a GET /models reply, or None when it is not a model list."""
    try:
        body = json.loads(raw.content)
    except ValueError:
        return None
    models = body.get("data") if isinstance(body, dict) else None
    if not isinstance(models, list) or not all(isinstance(m, dict) and isinstance(m.get("id"), str) for m in models):
        return None
    return [m["id"] for m in models]


def _glimpse(raw: Any, length: int = 40) -> str:
    """``text/html: '<html><head>…'``: a reply's content type and its first characters, in one line."""
    content_type = raw.headers.get("content-type", "").split(";")[0].strip() or "no content type"
    text = " ".join(raw.content[: 4 * length].decode("utf-8", "replace").split())
    return (
        f"{content_type}: {text[:length] + '…' if len(text) > length else text!r}" if text else f"{content_type}, empty"
    )


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


# ---------------------------------------------------------------------------------------------
# Secrets in an engine's settings.
# ---------------------------------------------------------------------------------------------

# An option whose name has one of these words (split at - and _) takes a secret: --api-key, --hf-token,
# --token, --client-secret, --db-password. Not --max-num-batched-tokens, --tokenizer or --ssl-keyfile.
SECRET_WORDS = frozenset({"key", "keys", "apikey", "token", "secret", "secrets", "password", "passwd"})
ENV_SETTING = "env"  # KEY=VALUE pairs separated by commas: the environment of a server harness starts


def secret_option(arg: str) -> bool:
    """``--api-key`` or ``--api-key=...``: an option whose value is a secret."""
    if not arg.startswith("-") or arg.lstrip("-") == "":
        return False
    words = re.split(r"[-_.]+", arg.lstrip("-").split("=", 1)[0].lower())
    return any(word in SECRET_WORDS for word in words)


def redact_args(args: list[str], mark: Callable[[str], str] | None = None) -> list[str]:
    """``args`` with the value of every secret-looking option (the next argument, or what follows ``=``)
    replaced by ``mark(value)`` (default ``<secret>``)."""
    mark = mark or _hidden
    out, hide_next = [], False
    for arg in args:
        if hide_next:
            out.append(mark(arg))
            hide_next = False
        elif secret_option(arg):
            if "=" in arg:
                name, _, value = arg.partition("=")
                out.append(name + "=" + mark(value))
            else:
                out.append(arg)
                hide_next = True
        else:
            out.append(arg)
    return out


def _hidden(value: str) -> str:
    return SECRET


def parse_env(text: str) -> dict[str, str]:
    """An ``env`` setting (``KEY=VALUE,KEY=VALUE``) as a dict."""
    return dict(pair.strip().split("=", 1) for pair in text.split(",") if "=" in pair)


def redact_value(name: str, value: Any, mark: Callable[[str], str] | None = None) -> Any:
    """One setting as a record may hold it: an ``env`` setting's values ``<secret>``; a string that is a
    command line with a secret-looking option, that option's value ``<secret>``. Anything else as it is (the
    same object: an identity without secrets does not change). ``mark`` writes a hidden value instead of
    ``<secret>``: an identity's keyed digest, so that a changed value is a changed identity."""
    mark = mark or _hidden
    if not isinstance(value, str) or not value:
        return value
    if name == ENV_SETTING and "=" in value:
        return ",".join(f"{key}={mark(secret)}" for key, secret in parse_env(value).items())
    if "-" not in value:
        return value
    try:
        args = shlex.split(value)
    except ValueError:  # an unclosed quote: not a command line
        return value
    redacted = redact_args(args, mark)
    return value if redacted == args else " ".join(b if a != b else shlex.quote(b) for a, b in zip(args, redacted))


def redact_settings(settings: dict[str, Any], mark: Callable[[str], str] | None = None) -> dict[str, Any]:
    """``settings`` with :func:`redact_value` applied to each: what a record's settings and a run's identity
    hold (the runner applies it where it writes them; an identity with the store's :meth:`Store.secret_mark`);
    the real values still go to the approach."""
    return {name: redact_value(name, value, mark) for name, value in settings.items()}


def _split(command: str) -> list[str]:
    try:
        return shlex.split(command)
    except ValueError:  # an unclosed quote: Popen will say so
        return command.split()


def secret_values(args: list[str], env: dict[str, str] | None) -> list[str]:
    """The secrets in a server's arguments and environment, to be hidden in anything it wrote."""
    values = list((env or {}).values())
    redact_args(args, lambda secret: values.append(secret) or SECRET)  # the values redact_args would hide
    return [value for value in values if len(value) >= 4]


# ---------------------------------------------------------------------------------------------
# A server harness starts.
# ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _stop_on_sigterm() -> None:
    """SIGTERM raises SystemExit in this process, so ``finally`` blocks and atexit (which stop the servers it
    started) run: by default SIGTERM ends Python at once and a server it started would run on. Only where
    nobody installed a handler of their own, and only from the main thread (where Python runs handlers)."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)


class Server:
    """An OpenAI-compatible server started from ``command`` (split as a shell would, then ``args`` appended),
    listening on 127.0.0.1:``port``, in the calling process's process group: a harness unit's group, so it
    stops with the unit even if the unit is killed. :meth:`stop` (also at interpreter exit, and on SIGTERM to
    this process) ends it and what it started. ``env`` is added to its environment; the values there and
    after secret-looking options in ``args`` are hidden in every message about it."""

    def __init__(
        self,
        command: str,
        args: list[str],
        port: int,
        *,
        start_timeout: float = 600.0,
        env: dict[str, str] | None = None,
    ):
        self.command, self.args, self.port, self.start_timeout = command, args, port, start_timeout
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self.env = env
        self.process: subprocess.Popen | None = None
        self.log = Path(tempfile.mkstemp(prefix="harness-server-", suffix=".log")[1])
        # The command line may hold a secret too (vllm serve --api-key ...): hidden in messages, as the args are.
        self._secrets = secret_values(_split(command) + list(args), env)
        self.shown = redact_value("command", command)

    def start(self) -> Server:
        import atexit

        argv = shlex.split(self.command) + self.args
        _stop_on_sigterm()
        try:
            handle = self.log.open("wb")
            self.process = subprocess.Popen(
                argv,
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(self.env or {})},
            )
        except FileNotFoundError:
            raise UserError(
                f"{argv[0]!r} is not a command here: point the setting at the environment where the "
                "server is installed",
                where="command",
            ) from None
        atexit.register(self.stop)
        self._wait()
        return self

    def _wait(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        health = f"http://127.0.0.1:{self.port}/health"
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the server ({self.shown}) exited with status {self.process.returncode} while "
                    f"starting: {self.last_lines()}"
                )
            try:
                with urllib.request.urlopen(health, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(
            f"the server ({self.shown}) did not answer {health} within {self.start_timeout:.0f} s: {self.last_lines()}"
        )

    def last_lines(self, n: int = 3) -> str:
        text = self.log.read_text(errors="replace")
        for secret in self._secrets:  # a server that logs its arguments (vLLM does) would write the key
            text = text.replace(secret, SECRET)
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return " | ".join(lines[-n:]) or "(it wrote nothing)"

    def stop(self) -> None:
        """SIGTERM, up to 30 s to exit, then SIGKILL; then what it started and left behind (an engine's
        workers), the same way."""
        import psutil

        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        try:
            children = psutil.Process(process.pid).children(recursive=True)
        except psutil.Error:
            children = []
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        alive = [child for child in children if child.is_running()]
        for child in alive:
            try:
                child.terminate()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(alive, timeout=5)
        for child in alive:
            try:
                child.kill()
            except psutil.Error:
                pass
