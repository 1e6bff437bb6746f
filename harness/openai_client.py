"""The transport to an OpenAI-compatible server: one client and event loop a session, requests under deadlines.

What the ``openai`` approach, the ``vllm`` engines and a teacher send goes through a :class:`Session`:

- one event loop and one ``AsyncOpenAI`` client (one connection pool) on it, made on first use and kept until
  :meth:`Session.close` (or until it is garbage, or the process exits): every request of a unit goes through the
  same client and open connections, as a real client's do, so batch-1 latency measures the server, not a new
  client, event loop and TCP connection per request;
- every try of a request has a deadline, ``timeout`` seconds for all of it (connecting, waiting, reading the
  whole answer): the client's own time-out bounds each read, and a server that sends a byte a second would never
  reach it. A try past its deadline is a time-out, which the client retries with its backoff as any other;
- :meth:`Session.gather`: the one loop that sends a call's requests, in order, ``concurrency`` in flight; what
  is asked and what is made of the answers is the caller's (:class:`harness.endpoint.Endpoint`, a bench
  reference's bare loop).
"""

from __future__ import annotations

import asyncio
import functools
import sys
import threading
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")
Item = TypeVar("Item")


def openai_module() -> Any:
    try:
        import openai
    except ImportError:
        raise ImportError(
            "talking to an OpenAI-compatible endpoint needs the openai client: pip install 'harness-compare[openai]'"
        ) from None
    return openai


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

    def gather(self, ask: Callable[[Any, Item], Awaitable[T]], items: Sequence[Item], concurrency: int) -> list[T]:
        """``await ask(client, item)`` for every item, results in order, at most ``concurrency`` in flight: the
        one loop that sends a call's requests on the session's client. One item is awaited as it is, with no
        task scheduled around it (batch-1 latency); no item sends nothing."""
        if not items:
            return []

        async def all_of(client: Any) -> list[T]:
            if len(items) == 1:  # batch 1: the request itself, no task to schedule around it
                return [await ask(client, items[0])]
            gate = asyncio.Semaphore(concurrency)

            async def one(item: Item) -> T:
                async with gate:
                    return await ask(client, item)

            return await asyncio.gather(*(one(item) for item in items))

        return self.run(all_of)

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
