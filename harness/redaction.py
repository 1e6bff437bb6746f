"""Secrets kept out of records, identities and messages: settings, command lines and logs with ``<secret>``.

An engine's ``env`` values and the value after a secret-looking command-line option are ``<secret>`` wherever
harness writes them; the server gets the real ones.

:func:`redact_settings`: settings as a record and an identity may hold them: the values of an engine's ``env``
and the value after a secret-looking command-line option (``--api-key``, ``--hf-token``, any option whose name
has a word key, token, secret or password) are ``<secret>``. :func:`secret_values`: the secrets of a server's
arguments and environment, to hide in what it logs. An endpoint's key (harness.endpoint) is hidden with the same
mark.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from typing import Any

SECRET = "<secret>"

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


def secret_values(args: list[str], env: dict[str, str] | None) -> list[str]:
    """The secrets in a server's arguments and environment, to be hidden in anything it wrote."""
    values = list((env or {}).values())

    def keep(secret: str) -> str:  # collects the values redact_args would hide
        values.append(secret)
        return SECRET

    redact_args(args, keep)
    return [value for value in values if len(value) >= 4]
