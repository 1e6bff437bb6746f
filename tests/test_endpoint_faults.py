"""An endpoint that misbehaves, against a real HTTP server on 127.0.0.1 (tests/openai_server.py): an answer
trickled a byte at a time ends at its deadline, an answer that is not a completion is an answer counted wrong
(the good ones kept), a server that is not OpenAI-compatible stops the compare in one line, and a key the
server echoes back is in no file of the store."""

from __future__ import annotations

import json
import time

import pytest

from conftest import AG_NEWS, first_lines
from harness.endpoint import Endpoint
from harness.errors import UserError
from harness.redaction import SECRET
from openai_server import MALFORMED, Faults, OpenAIServer
from test_openai import (
    AG_LABELS,
    KEY,
    WAYBILL,
    data_files,
    endpoint_args,
    waybill_with_gold,
)

# The server's reply for each malformation (openai_server.MALFORMED), as an answer's error says it.
UNREADABLE = {
    "truncated": 'not a completion: not JSON (application/json: \'{"id": "chatcmpl-',
    "not json": "not a completion: not JSON (application/json: 'upstream connect error or disconnect/res…')",
    "html": "not a completion: not JSON (text/html: '<html><head><title>Sign in</title></head…')",
    "not an object": "not a completion: the body is a list, not an object",
    "no choices": "not a completion: no choices",
    "choices not a list": "not a completion: choices is a string, not a list",
    "no message": "not a completion: no choices[0].message",
    "no content": "not a completion: no choices[0].message.content",
    "content not a string": "not a completion: choices[0].message.content is a list, not a string",
    "bad logprobs": "not a completion: choices[0].logprobs.content[0].top_logprobs is a string, not a list",
}


def error_lines(stderr: str) -> list[str]:
    """What the CLI said on stderr, less the test site's deliberately broken plugin's warning."""
    return [line for line in stderr.splitlines() if line.strip() and "broken-import" not in line]


def store_files(root) -> list:
    return [path for path in root.rglob("*") if path.is_file()]


@pytest.mark.parametrize("headers", ["trickled", "at once"])
def test_an_answer_trickled_a_byte_at_a_time_ends_at_its_deadline_and_counts_wrong(ag_test, headers):
    """Every read gets a byte within 0.2 s, long before the 1 s time-out, yet the answer would take a minute:
    each try ends at the 1 s deadline, the retry gets a deadline of its own, and the other answers are kept."""
    rows = ag_test[:8]
    texts = [row["text"] for row in rows]
    faults = Faults(trickle={texts[0]}, trickle_headers=headers == "trickled")
    with OpenAIServer({row["text"]: AG_LABELS[row["label"]] for row in rows}, AG_LABELS, faults=faults) as server:
        with Endpoint(server.base_url, "test-model", timeout=1.0, max_retries=1) as endpoint:
            start = time.monotonic()
            replies = endpoint.chat([[{"role": "user", "content": text}] for text in texts], max_tokens=16)
            took = time.monotonic() - start
        tries = server.requests_for(texts[0])
    assert replies[0].error == "no whole answer within the 1 s deadline"
    assert replies[0].text == "" and replies[0].seconds < took
    assert [reply.error for reply in replies[1:]] == [None] * 7
    assert [reply.text for reply in replies[1:]] == [
        "ABCD"[AG_LABELS.index(AG_LABELS[row["label"]])] for row in rows[1:]
    ]
    # Two tries of 1 s each and the client's backoff between them (0.5 s at most): far from the minute it asked for.
    assert len(tries) == 2
    assert 2.0 <= took < 5.0, took


def test_a_trickled_model_list_stops_the_check_at_its_deadline_in_one_line(ag_test):
    rows = ag_test[:2]
    with OpenAIServer(
        {row["text"]: AG_LABELS[row["label"]] for row in rows}, AG_LABELS, faults=Faults(trickle_models=True)
    ) as server:
        with Endpoint(server.base_url, "test-model", timeout=1.0) as endpoint:
            start = time.monotonic()
            with pytest.raises(UserError) as stopped:
                endpoint.check()
            took = time.monotonic() - start
    assert stopped.value.where == "base_url"
    assert str(stopped.value) == f"base_url: {server.base_url} did not answer GET /models within the 1 s deadline"
    assert took < 5.0, took  # two tries (the check retries once) of 1 s


def test_every_reply_that_is_not_a_completion_is_an_answer_counted_wrong_with_its_reason(ag_test):
    """Each malformation of openai_server.MALFORMED once, among good answers: through Endpoint.chat and the
    openai approach's reading of a reply, each is an answer with its reason as error, no label, and the good
    answers are read as ever."""
    from harness.spec import load_spec
    from harness_plugins.openai_endpoint import answer

    rows = ag_test[: len(MALFORMED) + 4]
    texts = [row["text"] for row in rows]
    broken = dict(zip(texts, MALFORMED))
    task = load_spec("agnews").to_task("openai")
    with OpenAIServer(
        {row["text"]: AG_LABELS[row["label"]] for row in rows}, AG_LABELS, faults=Faults(malformed=broken)
    ) as server:
        with Endpoint(server.base_url, "test-model", timeout=10, max_retries=0) as endpoint:
            replies = endpoint.chat(
                [[{"role": "user", "content": text}] for text in texts], max_tokens=16, logprobs=True, top_logprobs=5
            )
    predictions = [answer(task, reply) for reply in replies]
    for _text, how, reply, prediction in zip(texts, MALFORMED, replies, predictions):
        assert reply.error is not None and reply.error.startswith(UNREADABLE[how]), (how, reply.error)
        assert "\n" not in reply.error and len(reply.error) < 200
        assert prediction.error == reply.error and prediction.label is None
    for row, prediction in zip(rows[len(MALFORMED) :], predictions[len(MALFORMED) :]):
        assert prediction.error is None and prediction.label == AG_LABELS[row["label"]]
        assert prediction.scores[prediction.label] > 0.9


def test_bad_answers_among_good_ones_are_counted_wrong_and_the_row_keeps_the_good_ones(cli, ag_test, tmp_path):
    """One compare, four bad answers among twelve (each fault once: a body cut short, no choices, an HTML page, an
    answer trickled past its deadline): the row is ok, the four count as wrong with their reasons, the eight
    good answers are kept."""
    rows = ag_test[:12]
    texts = [row["text"] for row in rows]
    bad = {texts[2]: "truncated", texts[5]: "no choices", texts[8]: "html", texts[10]: "trickle"}
    faults = Faults(malformed={text: how for text, how in bad.items() if how != "trickle"}, trickle={texts[10]})
    with OpenAIServer({row["text"]: AG_LABELS[row["label"]] for row in rows}, AG_LABELS, faults=faults) as server:
        start = time.monotonic()
        result = cli(
            "compare",
            "--plugins",
            "openai",
            "--spec",
            "agnews",
            "--data",
            data_files(tmp_path, AG_NEWS, 12),
            *endpoint_args(
                server, "--set", "openai.api_key_env=", "--set", "openai.timeout=1", "--set", "openai.max_retries=0"
            ),
            "--latency-samples",
            "1",
            "--json",
            "out.json",
        )
        took = time.monotonic() - start
    assert result.returncode == 0, result.stderr
    (run,) = json.loads((tmp_path / "out.json").read_text())["runs"]
    assert run["status"] == "ok", run["error"]
    assert run["metrics"]["accuracy"] == pytest.approx(8 / 12)
    note = next(note for note in run["serving"]["run_notes"] if "answers failed" in note)
    assert note.startswith("4 of 12 answers failed and count as wrong (first: "), note
    predictions = {
        p["text"]: p for p in map(json.loads, next(tmp_path.glob(".harness/runs/*/predictions.jsonl")).open())
    }
    for text, how in bad.items():
        reason = "no whole answer within the 1 s deadline" if how == "trickle" else UNREADABLE[how]
        assert predictions[text]["error"].startswith(reason) and predictions[text].get("label") is None, how
    good = [row for row in rows if row["text"] not in bad]
    assert all(predictions[row["text"]]["label"] == AG_LABELS[row["label"]] for row in good)
    assert took < 60, took


def test_a_server_that_answers_its_model_list_with_html_stops_the_compare_in_one_line(cli, tmp_path, shared):
    rows = first_lines(WAYBILL / "test.jsonl", 4)
    with OpenAIServer({row["text"]: row["fields"] for row in rows}, faults=Faults(html_models=True)) as server:
        result = cli(
            "compare",
            "--plugins",
            "openai",
            "--spec",
            "waybill",
            "--data",
            data_files(tmp_path, WAYBILL, 4),
            *endpoint_args(server, "--set", "openai.api_key_env="),
        )
        asked = [entry for entry in server.log if entry["path"].endswith("completions")]
    assert result.returncode == 2, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert lines[0] == (
        f"harness: error: openai.base_url: {server.base_url} answered GET /models with something that is not "
        "an OpenAI-compatible model list (text/html: '<html><head><title>Sign in</title></head…'): "
        "is base_url right?"
    )
    assert (
        not asked and not list(tmp_path.glob(".harness/runs/*")) and not list(tmp_path.glob(".harness/comparisons/*"))
    )


def test_a_key_the_server_echoes_is_hidden_in_every_part_of_a_reply(ag_test, monkeypatch):
    rows = ag_test[:3]
    texts = [row["text"] for row in rows]
    monkeypatch.setenv("HARNESS_TEST_KEY", KEY)
    with OpenAIServer(
        {row["text"]: AG_LABELS[row["label"]] for row in rows},
        AG_LABELS,
        key=KEY,
        faults=Faults(echo=True, broken={texts[2]}),
    ) as server:
        with Endpoint(server.base_url, "test-model", api_key_env="HARNESS_TEST_KEY", max_retries=0) as endpoint:
            replies = endpoint.chat(
                [[{"role": "user", "content": text}] for text in texts], max_tokens=16, logprobs=True, top_logprobs=10
            )
    assert KEY not in repr(replies)
    shown = f"Authorization: Bearer {SECRET}"
    assert replies[0].text.endswith(f"(you sent {shown})") and replies[0].fingerprint == f"fp_test_1 {shown}"
    assert shown in replies[0].top_logprobs[0]
    assert replies[2].error == f"HTTP 500: internal error {shown}"


def test_a_key_the_server_echoes_is_in_no_file_of_the_store(cli, tmp_path, shared):
    """The server puts the Authorization header into every answer (a JSON field of the record, which the
    teacher's cache and the predictions keep), its system_fingerprint (the row's notes, the teacher's cache)
    and a 500's message (an answer's error): the key is in no file of the store, nor in what harness printed."""
    data, gold, texts = waybill_with_gold(tmp_path, 12, 4)
    test_texts = [row["text"] for row in first_lines(tmp_path / "test.jsonl", 4)]
    store = tmp_path / "store"
    faults = Faults(echo=True, broken={texts[0], test_texts[0]})
    with OpenAIServer(gold, key=KEY, faults=faults) as server:
        result = cli(
            "compare",
            "--plugins",
            "openai",
            "--spec",
            "waybill",
            "--teacher",
            "openai",
            "--data",
            data,
            *endpoint_args(server),
            "--latency-samples",
            "1",
            "--json",
            "out.json",
            env={"HARNESS_TEST_KEY": KEY, "HARNESS_HOME": str(store)},
        )
    assert result.returncode == 0, result.stderr
    (run,) = json.loads((tmp_path / "out.json").read_text())["runs"]
    assert run["status"] == "ok", run["error"]
    files = store_files(store)
    assert any(path.name == "predictions.jsonl" for path in files) and list(store.glob("teacher/*.jsonl"))
    for path in [*files, tmp_path / "out.json"]:
        assert KEY.encode() not in path.read_bytes(), path
    assert KEY not in result.stdout + result.stderr
    # The echo did reach the store, hidden: the test would have caught the key.
    shown = f"Authorization: Bearer {SECRET}"
    (cache,) = store.glob("teacher/*.jsonl")
    cached = [json.loads(line) for line in cache.read_text().splitlines()]
    assert len(cached) == 11 and {row["fields"]["echo"] for row in cached} == {shown}
    assert {row["system_fingerprint"] for row in cached} == {f"fp_test_1 {shown}"}
    predictions = [json.loads(line) for line in next(store.glob("runs/*/predictions.jsonl")).open()]
    assert all(shown in p["raw"] for p in predictions if not p.get("error"))
    assert {p["error"] for p in predictions if p.get("error")} == {f"HTTP 500: internal error {shown}"}
    assert f"system_fingerprint fp_test_1 {shown}" in run["serving"]["run_notes"]
