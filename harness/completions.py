"""Reading an OpenAI-compatible server's answers: completions checked field by field, model lists, errors.

A completion's every field is checked into a :class:`Reply`; a model list gives its ids, and a failed request's
reason is one line. A 200 answer that is not a completion (not JSON, an HTML page, no choices, a field missing or of
the wrong type) is :class:`Unreadable`, with what was wrong; the endpoint makes it a :class:`Reply` with ``error``
set, which the run counts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


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
        raise Unreadable(f"not JSON ({glimpse(raw)})") from None
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
    usage = body.get("usage")
    if not isinstance(usage, dict):
        usage = {}
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


def model_ids(raw: Any) -> list[str] | None:
    """The model ids of a GET /models reply, or None when it is not a model list."""
    try:
        body = json.loads(raw.content)
    except ValueError:
        return None
    models = body.get("data") if isinstance(body, dict) else None
    if not isinstance(models, list) or not all(isinstance(m, dict) and isinstance(m.get("id"), str) for m in models):
        return None
    return [m["id"] for m in models]


def glimpse(raw: Any, length: int = 40) -> str:
    """``text/html: '<html><head>…'``: a reply's content type and its first characters, in one line."""
    content_type = raw.headers.get("content-type", "").split(";")[0].strip() or "no content type"
    text = " ".join(raw.content[: 4 * length].decode("utf-8", "replace").split())
    return (
        f"{content_type}: {text[:length] + '…' if len(text) > length else text!r}" if text else f"{content_type}, empty"
    )


def status_line(exc: Any) -> str:
    """``HTTP 429: Rate limit reached``: the status and the server's own message, in one line."""
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error", body)
    message = (error.get("message") if isinstance(error, dict) else None) or str(error or exc.message)
    return f"HTTP {exc.status_code}: {message}".splitlines()[0]


def cause(exc: BaseException) -> str:
    """The innermost reason of a connection error, in one line (``[Errno 111] Connection refused``)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
