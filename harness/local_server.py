"""An OpenAI-compatible server process that harness starts from a command, waits for and stops.

The command (``vllm serve``) is started, waited for until ``/health`` answers, and stopped with all it started
(SIGTERM, then SIGKILL) when done, when the process exits, and when the process gets SIGTERM; one that dies while
starting is one line with the last lines of its log, the secrets of its command line and environment hidden
(harness.redaction).
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.redaction import SECRET, redact_value, secret_values


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


def _split(command: str) -> list[str]:
    try:
        return shlex.split(command)
    except ValueError:  # an unclosed quote: Popen will say so
        return command.split()


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
