"""harness.endpoint's own parts: a server harness starts dies with harness on SIGTERM (a real process tree: a
Python program that starts a Server running Python's http.server, then gets SIGTERM), and what an engine's
settings may hold that is secret never reaches a record's settings."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time

import psutil

from harness.redaction import SECRET, redact_settings, secret_values


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_sigterm_to_harness_stops_the_server_it_started(tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    (www / "health").write_text("ok\n")  # GET /health answers 200, as a real server's health route
    command = f"{shlex.quote(sys.executable)} -m http.server --bind 127.0.0.1 --directory {shlex.quote(str(www))}"
    program = tmp_path / "starts_a_server.py"
    program.write_text(
        textwrap.dedent(f"""
        import time
        from harness.local_server import Server, free_port

        port = free_port()
        server = Server({command!r}, [str(port)], port, start_timeout=60).start()
        try:
            print(server.process.pid, flush=True)  # inside the try: the SIGTERM it invites finds the finally
            time.sleep(300)
        finally:
            print("finally ran", flush=True)
    """)
    )
    process = subprocess.Popen(
        [sys.executable, str(program)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    pid = None
    try:
        pid = int(process.stdout.readline() or 0)
        assert pid and alive(pid), process.stderr.read()
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
        assert process.returncode == 128 + signal.SIGTERM, err
        assert "finally ran" in out  # SIGTERM unwound the program: its finally blocks and atexit ran
        deadline = time.monotonic() + 10
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(pid), "the server outlived harness"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if pid and alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_an_engines_env_values_and_secret_arguments_are_redacted_and_nothing_else():
    settings = {
        "env": "HF_TOKEN=hf_live_7f3a9c,VLLM_CPU_KVCACHE_SPACE=4",
        "extra_args": "--enforce-eager --api-key sk-live-1b2c3d --hf-token=hf_other_9z8y "
        "--max-num-batched-tokens 8192 --tokenizer /models/tok --ssl-keyfile /etc/key.pem",
        "command": "vllm serve --api-key 'sk live with space'",
        "model": "Qwen/Qwen3-0.6B",
        "max_length": 256,
        "api_key_env": "OPENAI_API_KEY",
    }
    shown = redact_settings(settings)
    assert shown["env"] == f"HF_TOKEN={SECRET},VLLM_CPU_KVCACHE_SPACE={SECRET}"
    assert shown["extra_args"] == (
        f"--enforce-eager --api-key {SECRET} --hf-token={SECRET} --max-num-batched-tokens 8192 "
        "--tokenizer /models/tok --ssl-keyfile /etc/key.pem"
    )
    assert shown["command"] == f"vllm serve --api-key {SECRET}"
    for name in ("model", "max_length", "api_key_env"):  # not secrets: as they were, so identities do not move
        assert shown[name] is settings[name]
    text = repr(shown)
    for secret in ("hf_live_7f3a9c", "sk-live-1b2c3d", "hf_other_9z8y", "sk live with space"):
        assert secret not in text
    # What a server's log is searched for before its last lines reach an error message.
    assert set(
        secret_values(
            ["--api-key", "sk-live-1b2c3d", "--hf-token=hf_other_9z8y", "--port", "8000"],
            {"HF_TOKEN": "hf_live_7f3a9c"},
        )
    ) == {"sk-live-1b2c3d", "hf_other_9z8y", "hf_live_7f3a9c"}


def test_an_identity_holds_a_keyed_digest_of_a_secret_so_a_changed_value_is_a_changed_identity(tmp_path):
    from harness.store import Store

    store, other = Store(tmp_path / "a"), Store(tmp_path / "b")
    one, two = (
        {"env": f"VLLM_ATTENTION_BACKEND={backend}", "extra_args": "--api-key sk-live-1b2c3d"}
        for backend in ("FLASH_ATTN", "TORCH_SDPA")
    )
    first, again, changed = (redact_settings(s, store.secret_mark) for s in (one, dict(one), two))
    assert first == again and first["env"] != changed["env"] and first["extra_args"] == changed["extra_args"]
    assert first["env"].startswith("VLLM_ATTENTION_BACKEND=<secret ") and "FLASH_ATTN" not in repr(first)
    assert "sk-live-1b2c3d" not in repr(first) and first["extra_args"].startswith("--api-key <secret ")
    # Another store keys its digests with another key: a digest means nothing outside its store.
    assert redact_settings(one, other.secret_mark)["env"] != first["env"]
    assert (tmp_path / "a" / "secret-key").stat().st_mode & 0o077 == 0


def test_a_secret_in_the_servers_command_is_hidden_in_what_it_says(tmp_path):
    import pytest

    from harness.local_server import Server

    command = f"{shlex.quote(sys.executable)} -c 'import sys; print(sys.argv); sys.exit(3)' --api-key sk-live-cmd-0042"
    server = Server(command, ["--port", "1"], 1, start_timeout=30)
    assert "sk-live-cmd-0042" not in server.shown and "--api-key <secret>" in server.shown
    with pytest.raises(RuntimeError) as failed:
        server.start()
    message = str(failed.value)
    assert "exited with status 3" in message and "sk-live-cmd-0042" not in message, message
    assert SECRET in message
