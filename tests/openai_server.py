"""A real OpenAI-compatible HTTP server on 127.0.0.1 for the tests: the subset harness uses (GET /v1/models,
POST /v1/chat/completions with logprobs and response_format), answering from gold, with the faults a real
endpoint has: some answers wrong, some not an answer at all, a 429 with Retry-After on a text's first request,
a slow answer, a request that always fails with 500 (while its text is in ``faults.broken``, which a test may
change between runs), and a key it checks. It keeps connections alive (HTTP/1.1), as real servers do.

And the faults of a server that misbehaves: an answer that is not a completion (cut short, no choices, an HTML
page: ``MALFORMED``), an answer or a model list trickled one byte at a time (each read gets a byte, the answer
never ends), a proxy's HTML page for GET /models, and an echo of the request's Authorization header in every
answer (its text, a JSON field, a top-logprob token, its system_fingerprint, an error message).

It knows nothing of harness: it finds which example a request asks about by the example's text in the user
message, and it logs every request (path, arrival time, example, status) for the tests to read."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass
class Faults:
    wrong: set[str] = field(default_factory=set)  # texts answered with another label, or a field changed
    garbage: set[str] = field(default_factory=set)  # texts answered with prose: no letter, no JSON
    throttle: set[str] = field(default_factory=set)  # texts whose first request gets 429 with Retry-After: 1
    slow: set[str] = field(default_factory=set)  # texts answered after 1.5 s
    broken: set[str] = field(default_factory=set)  # texts that always get 500
    malformed: dict[str, str] = field(default_factory=dict)  # text -> how its 200 answer is broken (MALFORMED)
    trickle: set[str] = field(default_factory=set)  # texts answered one byte every trickle_every seconds
    trickle_models: bool = False  # GET /models answered one byte every trickle_every seconds
    trickle_every: float = 0.2
    trickle_headers: bool = True  # False: status line and headers at once, then the body a byte at a time
    html_models: bool = False  # GET /models answered 200 with a proxy's HTML page
    echo: bool = False  # every answer repeats the request's Authorization header


# Answers with status 200 that are not a chat completion, by name: the body sent instead of the completion.
MALFORMED = (
    "truncated",
    "not json",
    "html",
    "not an object",
    "no choices",
    "choices not a list",
    "no message",
    "no content",
    "content not a string",
    "bad logprobs",
)
HTML = b"<html><head><title>Sign in</title></head><body>Please sign in to continue.</body></html>"


class OpenAIServer:
    """``with OpenAIServer(gold, labels) as server:`` serves on ``server.base_url`` until the block ends.
    ``gold`` maps an example's text to its label (classification) or fields (extraction)."""

    def __init__(
        self,
        gold: dict[str, Any],
        labels: list[str] | None = None,
        *,
        model: str = "test-model",
        key: str | None = None,
        faults: Faults | None = None,
    ):
        self.gold, self.labels, self.model, self.key = gold, labels or [], model, key
        self.faults = faults or Faults()
        self.log: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._seen: set[str] = set()
        self.closed = False  # set when the block ends: a trickling answer stops
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> OpenAIServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.closed = True
        self.httpd.shutdown()
        self.httpd.server_close()

    def requests_for(self, text: str) -> list[dict[str, Any]]:
        return [entry for entry in self.log if entry["text"] == text]

    def _example(self, messages: list[dict[str, str]]) -> str | None:
        user = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
        found = [text for text in self.gold if text in user]
        return max(found, key=len) if found else None

    def _answer(self, text: str, body: dict[str, Any], echo: str = "") -> tuple[str, list[dict[str, Any]] | None]:
        gold = self.gold[text]
        if isinstance(gold, dict):  # extraction: the record as JSON
            if text in self.faults.garbage:
                return "Sorry, I cannot find a recipient in this line.", None
            record = dict(gold)
            if text in self.faults.wrong:
                record["name"] = (record.get("name") or "") + "X"
            if echo:
                record["echo"] = echo
            return json.dumps(record, ensure_ascii=False), None
        letters = LETTERS[: len(self.labels)]
        letter = letters[self.labels.index(gold)]
        if text in self.faults.wrong:
            letter = letters[(letters.index(letter) + 1) % len(letters)]
        if text in self.faults.garbage:
            content, top = "I am not sure.", [("I", -0.2), (" The", -2.0)]
        else:
            content = letter
            top = [(letter, -0.05)] + [(other, -4.0 - i) for i, other in enumerate(x for x in letters if x != letter)]
        if echo:
            content, top = f"{content} (you sent {echo})", top + [(echo, -9.0)]
        logprobs = None
        if body.get("logprobs"):
            first = content.split()[0] if " " in content else content
            alternatives = [
                {"token": t, "logprob": lp, "bytes": None} for t, lp in top[: body.get("top_logprobs") or 1]
            ]
            logprobs = [{"token": first, "logprob": top[0][1], "bytes": None, "top_logprobs": alternatives}]
        return content, logprobs

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            # Keep-alive, as real servers (vLLM's uvicorn, hosted APIs) keep connections open: a client that
            # reuses its connections pays no TCP handshake per request. Every answer has a Content-Length.
            protocol_version = "HTTP/1.1"
            # Each answer in one write, sent at once: headers and body written apart on a kept-alive connection
            # would wait for the client's delayed ACK (Nagle), 40 ms a request that no real server adds.
            wbufsize = -1  # buffered; BaseHTTPRequestHandler flushes after each request
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send(
                self,
                status: int,
                payload: dict[str, Any] | bytes,
                headers: dict[str, str] | None = None,
                *,
                content_type: str = "application/json",
                trickle: bool = False,
            ) -> None:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                headers = {"Content-Type": content_type, "Content-Length": str(len(data)), **(headers or {})}
                if trickle:
                    self._trickle(status, headers, data)
                    return
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def _trickle(self, status: int, headers: dict[str, str], data: bytes) -> None:
                """Status line, headers and body one byte at a time, each sent at once: every read the client
                makes gets a byte long before any read time-out, and the answer ends only after
                ``len * trickle_every`` seconds (minutes), or when the client gives up."""
                head = f"HTTP/1.1 {status} {self.responses[status][0]}\r\n"
                head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
                self.close_connection = True
                if not server.faults.trickle_headers:
                    self.wfile.write(head.encode())
                    self.wfile.flush()
                    head = ""
                for byte in head.encode() + data:
                    if server.closed:
                        return
                    try:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                    except OSError:  # the client gave up
                        return
                    time.sleep(server.faults.trickle_every)

            def _echo(self) -> str:
                return f"Authorization: {self.headers.get('Authorization')}" if server.faults.echo else ""

            def _authorised(self) -> bool:
                if server.key is None or self.headers.get("Authorization") == f"Bearer {server.key}":
                    return True
                self._send(
                    401,
                    {
                        "error": {
                            "message": "Incorrect API key provided",
                            "type": "invalid_request_error",
                            "code": "invalid_api_key",
                        }
                    },
                )
                return False

            def do_GET(self) -> None:  # noqa: N802
                if not self._authorised():
                    return
                if self.path.rstrip("/") == "/v1/models" and server.faults.html_models:
                    self._send(200, HTML, content_type="text/html; charset=utf-8")
                elif self.path.rstrip("/") == "/v1/models":
                    self._send(
                        200,
                        {
                            "object": "list",
                            "data": [{"id": server.model, "object": "model", "created": 0, "owned_by": "test"}],
                        },
                        trickle=server.faults.trickle_models,
                    )
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:  # noqa: N802
                arrived = time.time()
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                if not self._authorised():
                    return
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                if body.get("model") != server.model:
                    self._send(404, {"error": {"message": f"The model `{body.get('model')}` does not exist."}})
                    return
                text = server._example(body.get("messages") or [])
                status = 200
                with server._lock:
                    first = text not in server._seen
                    server._seen.add(text or "")
                if text is None:
                    status = 400
                elif text in server.faults.broken:
                    status = 500
                elif text in server.faults.throttle and first:
                    status = 429
                with server._lock:
                    server.log.append(
                        {"path": self.path, "time": arrived, "text": text, "status": status, "body": body}
                    )
                if status == 400:
                    self._send(400, {"error": {"message": "no known example in the messages"}})
                elif status == 500:
                    self._send(500, {"error": {"message": f"internal error {self._echo()}".strip()}})
                elif status == 429:
                    self._send(
                        429, {"error": {"message": "Rate limit reached", "type": "requests"}}, {"Retry-After": "1"}
                    )
                else:
                    if text in server.faults.slow:
                        time.sleep(1.5)
                    content, logprobs = server._answer(text, body, self._echo())
                    prompt_tokens = sum(len(m.get("content", "").split()) for m in body["messages"])
                    completion = {
                        "id": f"chatcmpl-{len(server.log)}",
                        "object": "chat.completion",
                        "created": int(arrived),
                        "model": server.model,
                        "system_fingerprint": f"fp_test_1 {self._echo()}".strip(),
                        "choices": [
                            {
                                "index": 0,
                                "finish_reason": "stop",
                                "message": {"role": "assistant", "content": content},
                                "logprobs": {"content": logprobs} if logprobs else None,
                            }
                        ],
                        "usage": {
                            "prompt_tokens": prompt_tokens,
                            "completion_tokens": len(content.split()),
                            "total_tokens": prompt_tokens + len(content.split()),
                        },
                    }
                    if text in server.faults.malformed:
                        data, content_type = malformed(completion, server.faults.malformed[text])
                        self._send(200, data, content_type=content_type)
                    else:
                        self._send(200, completion, trickle=text in server.faults.trickle)

        return Handler


def malformed(completion: dict[str, Any], how: str) -> tuple[bytes, str]:
    """A 200 answer's body and content type, broken as ``how`` (one of :data:`MALFORMED`) says."""
    choice = completion["choices"][0]
    body: Any = completion
    if how == "truncated":
        data = json.dumps(completion).encode()
        return data[: len(data) // 2], "application/json"
    if how == "not json":
        return b"upstream connect error or disconnect/reset before headers", "application/json"
    if how == "html":
        return HTML, "text/html; charset=utf-8"
    if how == "not an object":
        body = [completion]
    elif how == "no choices":
        completion["choices"] = []
    elif how == "choices not a list":
        completion["choices"] = "A"
    elif how == "no message":
        del choice["message"]
    elif how == "no content":
        del choice["message"]["content"]
    elif how == "content not a string":
        choice["message"]["content"] = ["A"]
    elif how == "bad logprobs":
        choice["logprobs"] = {"content": [{"token": "A", "logprob": -0.1, "top_logprobs": "A"}]}
    else:
        raise ValueError(f"unknown malformation {how!r}; known: {', '.join(MALFORMED)}")
    return json.dumps(body).encode(), "application/json"
