"""The openai approach against a real OpenAI-compatible HTTP server on 127.0.0.1 (tests/openai_server.py),
through the production client path: classification by the letters' log-probabilities, extraction by JSON,
wrong and non-answers counted, a 429's Retry-After honoured, a request that keeps failing counted and noted,
the key checked and never written anywhere, and an endpoint that cannot serve stopping the compare before
anything runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import AG_NEWS, SHARED
from openai_server import Faults, OpenAIServer

WAYBILL = SHARED / "data" / "waybill"
AG_LABELS = ["World", "Sports", "Business", "Sci/Tech"]
KEY = "sk-test-5b1d0c2e9f"


def first_lines(path: Path, n: int) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:n]]


def data_files(folder: Path, source: Path, n_test: int) -> str:
    """The first 8 train and ``n_test`` test lines of a ../shared dataset as files of their own: the server
    knows the answers of exactly these texts."""
    for split, n in (("train", 8), ("test", n_test)):
        lines = (source / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()[:n]
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return f"train={folder / 'train.jsonl'},test={folder / 'test.jsonl'}"


def endpoint_args(server: OpenAIServer, *extra: str) -> list[str]:
    return ["--set", f"openai.base_url={server.base_url}", "--set", "openai.model=test-model",
            "--set", "openai.api_key_env=HARNESS_TEST_KEY", "--set", "openai.max_retries=1",
            "--set", "openai.timeout=10", *extra]


@pytest.fixture(scope="module")
def ag_test(shared) -> list[dict]:
    return first_lines(AG_NEWS / "test.jsonl", 30)


def test_classification_through_an_endpoint_counts_what_the_server_got_right(cli, ag_test, tmp_path):
    texts = [row["text"] for row in ag_test]
    faults = Faults(wrong=set(texts[:3]), garbage={texts[3]}, throttle={texts[4]}, slow={texts[5]}, broken={texts[6]})
    gold = {row["text"]: AG_LABELS[row["label"]] for row in ag_test}
    with OpenAIServer(gold, AG_LABELS, key=KEY, faults=faults) as server:
        result = cli("compare", "--plugins", "openai", "--spec", "agnews",
                     "--data", data_files(tmp_path, AG_NEWS, 30), *endpoint_args(server), "--latency-samples", "2", "--json", "out.json",
                     env={"HARNESS_TEST_KEY": KEY})
        assert result.returncode == 0, result.stderr
        run = json.loads((tmp_path / "out.json").read_text())["runs"][0]
        assert run["status"] == "ok", run["error"]
        # 30 texts: 3 answered wrong, 1 with prose, 1 failing every time: 25 right, 2 without a label.
        assert run["metrics"]["accuracy"] == pytest.approx(25 / 30)
        assert run["metrics"]["invalid"] == 2
        notes = " ".join(run["serving"]["run_notes"])
        assert "1 of 30 answers failed and count as wrong (first: HTTP 500: internal error)" in notes
        assert "system_fingerprint fp_test_1" in notes
        # The 429's Retry-After (1 s) was waited before the retry, which got the answer.
        throttled = [e for e in server.requests_for(texts[4]) if e["status"] in (429, 200)]
        assert [e["status"] for e in throttled[:2]] == [429, 200]
        assert throttled[1]["time"] - throttled[0]["time"] >= 1.0
        # The letters' log-probabilities, not the text, gave the scores.
        predictions = [json.loads(line) for line in next(tmp_path.glob(".harness/runs/*/predictions.jsonl")).open()]
        right = next(p for p in predictions if p["text"] == texts[10])
        assert right["scores"][right["gold"]["label"]] > 0.9
        asked = server.requests_for(texts[10])[0]["body"]
        assert asked["logprobs"] is True and asked["temperature"] == 0
        assert texts[10] in asked["messages"][-1]["content"] and "D. Science/Technology" in asked["messages"][-1]["content"]
    assert run["speed"]["prompt_tokens"] > 0 and run["speed"]["generated_tokens"] > 0
    # The key went to the server and nowhere else: not the store, not the output.
    assert KEY not in result.stdout + result.stderr
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_extraction_through_an_endpoint_asks_for_json_and_scores_records(cli, tmp_path, shared):
    rows = first_lines(WAYBILL / "test.jsonl", 12)
    texts = [row["text"] for row in rows]
    faults = Faults(wrong={texts[0]}, garbage={texts[1]})
    with OpenAIServer({row["text"]: row["fields"] for row in rows}, faults=faults) as server:
        result = cli("compare", "--plugins", "openai", "--spec", "waybill",
                     "--data", data_files(tmp_path, WAYBILL, 12), *endpoint_args(server, "--set", "openai.api_key_env="),
                     "--latency-samples", "1", "--json", "out.json")
        assert result.returncode == 0, result.stderr
        run = json.loads((tmp_path / "out.json").read_text())["runs"][0]
        assert run["status"] == "ok", run["error"]
        assert run["metrics"]["exact_match"] == pytest.approx(10 / 12)
        assert run["metrics"]["valid_rate"] == pytest.approx(11 / 12)
        body = server.requests_for(texts[2])[0]["body"]
        assert body["response_format"] == {"type": "json_object"}
        assert body["messages"][0]["role"] == "system" and body["messages"][1]["content"] == texts[2]


@pytest.mark.parametrize("case", ["unreachable", "wrong key", "unknown model", "unset key"])
def test_an_endpoint_that_cannot_serve_stops_the_compare_in_one_line_before_anything_runs(cli, tmp_path, case, shared):
    rows = first_lines(WAYBILL / "test.jsonl", 4)
    with OpenAIServer({row["text"]: row["fields"] for row in rows}, key=KEY) as server:
        url = server.base_url
        args = endpoint_args(server)
        env = {"HARNESS_TEST_KEY": "sk-wrong-1234" if case == "wrong key" else KEY}
        if case == "unreachable":
            server.httpd.shutdown()
            server.httpd.server_close()
        elif case == "unknown model":
            args += ["--set", "openai.model=no-such-model"]
        elif case == "unset key":
            env = {"HARNESS_TEST_KEY": ""}
        result = cli("compare", "--plugins", "openai", "--spec", "waybill",
                     "--data", data_files(tmp_path, WAYBILL, 4), *args, env=env)
        served = [e for e in server.log if e["path"].endswith("completions")]
    assert result.returncode == 2, result.stderr
    # One line (the test site's deliberately broken plugin adds its own warning line before it).
    lines = [line for line in result.stderr.splitlines() if line.strip() and "broken-import" not in line]
    assert len(lines) == 1, result.stderr
    expected = {"unreachable": f"base_url: cannot reach {url}", "wrong key": "refused the API key in $HARNESS_TEST_KEY (401)",
                "unknown model": "model: ", "unset key": "HARNESS_TEST_KEY that should hold the API key is not set"}[case]
    assert expected in lines[0]
    if case == "unknown model":
        assert "'no-such-model'" in lines[0] and "test-model" in lines[0]
    assert "sk-wrong-1234" not in result.stderr and KEY not in result.stderr
    assert not served and not list(tmp_path.glob(".harness/runs/*"))
    assert not list(tmp_path.glob(".harness/comparisons/*"))
