"""The openai approach against a real OpenAI-compatible HTTP server on 127.0.0.1 (tests/openai_server.py),
through the production client path: classification by the letters' log-probabilities, extraction by JSON,
wrong and non-answers counted, a 429's Retry-After honoured, a request that keeps failing counted and noted,
the key checked and never written anywhere, and an endpoint that cannot serve stopping the compare before
anything runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import AG_NEWS, SHARED, first_lines
from openai_server import Faults, OpenAIServer

WAYBILL = SHARED / "data" / "waybill"
AG_LABELS = ["World", "Sports", "Business", "Sci/Tech"]
KEY = "sk-test-5b1d0c2e9f"


def data_files(folder: Path, source: Path, n_test: int) -> str:
    """The first 8 train and ``n_test`` test lines of a ../shared dataset as files of their own: the server
    knows the answers of exactly these texts."""
    for split, n in (("train", 8), ("test", n_test)):
        lines = (source / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()[:n]
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return f"train={folder / 'train.jsonl'},test={folder / 'test.jsonl'}"


def endpoint_args(server: OpenAIServer, *extra: str) -> list[str]:
    return [
        "--set",
        f"openai.base_url={server.base_url}",
        "--set",
        "openai.model=test-model",
        "--set",
        "openai.api_key_env=HARNESS_TEST_KEY",
        "--set",
        "openai.max_retries=1",
        "--set",
        "openai.timeout=10",
        *extra,
    ]


def test_classification_through_an_endpoint_counts_what_the_server_got_right(cli, ag_test, tmp_path):
    texts = [row["text"] for row in ag_test]
    faults = Faults(wrong=set(texts[:3]), garbage={texts[3]}, throttle={texts[4]}, slow={texts[5]}, broken={texts[6]})
    gold = {row["text"]: AG_LABELS[row["label"]] for row in ag_test}
    with OpenAIServer(gold, AG_LABELS, key=KEY, faults=faults) as server:
        result = cli(
            "compare",
            "--plugins",
            "openai",
            "--spec",
            "agnews",
            "--data",
            data_files(tmp_path, AG_NEWS, 30),
            *endpoint_args(server),
            "--latency-samples",
            "2",
            "--json",
            "out.json",
            env={"HARNESS_TEST_KEY": KEY},
        )
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
        assert (
            texts[10] in asked["messages"][-1]["content"]
            and "D. Science/Technology" in asked["messages"][-1]["content"]
        )
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
        result = cli(
            "compare",
            "--plugins",
            "openai",
            "--spec",
            "waybill",
            "--data",
            data_files(tmp_path, WAYBILL, 12),
            *endpoint_args(server, "--set", "openai.api_key_env="),
            "--latency-samples",
            "1",
            "--json",
            "out.json",
        )
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
        result = cli(
            "compare",
            "--plugins",
            "openai",
            "--spec",
            "waybill",
            "--data",
            data_files(tmp_path, WAYBILL, 4),
            *args,
            env=env,
        )
        served = [e for e in server.log if e["path"].endswith("completions")]
    assert result.returncode == 2, result.stderr
    # One line (the test site's deliberately broken plugin adds its own warning line before it).
    lines = [line for line in result.stderr.splitlines() if line.strip() and "broken-import" not in line]
    assert len(lines) == 1, result.stderr
    expected = {
        "unreachable": f"openai.base_url: cannot reach {url}",
        "wrong key": "refused the API key in $HARNESS_TEST_KEY (401)",
        "unknown model": "model: ",
        "unset key": "HARNESS_TEST_KEY that should hold the API key is not set",
    }[case]
    assert expected in lines[0]
    if case == "unknown model":
        assert "'no-such-model'" in lines[0] and "test-model" in lines[0]
    assert "sk-wrong-1234" not in result.stderr and KEY not in result.stderr
    assert not served and not list(tmp_path.glob(".harness/runs/*"))
    assert not list(tmp_path.glob(".harness/comparisons/*"))


LORA = [
    "--set",
    "qwen-lora.num_train_epochs=0.3",  # one step of 8 (about 2 s on 2 cores): the student's data is what is tested
    "--set",
    "qwen-lora.per_device_train_batch_size=8",
    "--set",
    "qwen-lora.gradient_accumulation_steps=1",
    "--set",
    "qwen-lora.max_length=256",
    "--set",
    "qwen-lora.answer_reserve=96",
    "--set",
    "qwen-lora.max_new_tokens=24",
    "--set",
    "qwen-lora.eval_steps=0.5",
    "--set",
    "qwen-lora.learning_rate=1e-2",
    "--set",
    "qwen-lora.dtype=float32",
]


def waybill_with_gold(folder: Path, n_train: int, n_test: int) -> tuple[str, dict[str, dict], list[str]]:
    """Train, validation and test files from ../shared's waybill, every text's gold record (what the server
    answers from), and the train texts in order."""
    gold, texts = {}, []
    for split, source, n in (("train", "train", n_train), ("dev", "dev", 4), ("test", "test", n_test)):
        lines = (WAYBILL / f"{source}.jsonl").read_text(encoding="utf-8").splitlines()[:n]
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        for line in lines:
            row = json.loads(line)
            gold[row["text"]] = row["fields"]
            if split == "train":
                texts.append(row["text"])
    data = f"train={folder / 'train.jsonl'},validation={folder / 'dev.jsonl'},test={folder / 'test.jsonl'}"
    return data, gold, texts


def test_a_teacher_labels_the_students_training_data_once(cli, tmp_path, tiny_qwen):
    data, gold, texts = waybill_with_gold(tmp_path, 24, 6)
    faults = Faults(wrong=set(texts[:4]), garbage=set(texts[4:6]))
    with OpenAIServer(gold, faults=faults) as server:
        args = [
            "compare",
            "--plugins",
            "openai,qwen-lora",
            "--spec",
            "waybill",
            "--teacher",
            "openai",
            "--data",
            data,
            *endpoint_args(server, "--set", "openai.api_key_env="),
            "--set",
            f"qwen-lora.model={tiny_qwen}",
            *LORA,
            "--latency-samples",
            "1",
            "--launcher",
            "inline",
            "--json",
            "out.json",
        ]
        first = cli(*args)
        assert first.returncode == 0, first.stderr
        asked = [e["text"] for e in server.log if e["path"].endswith("completions")]
        assert set(texts) <= set(asked)  # every train text asked once (then test texts for the openai row)
        assert all(asked.count(t) == 1 for t in texts)
        runs = {r["approach"]: r for r in json.loads((tmp_path / "out.json").read_text())["runs"]}
        teacher = runs["qwen-lora"]["environment"]["teacher"]
        # 24 texts: 2 answered with prose (dropped), 4 with a wrong name: 18 of the 22 kept agree with gold.
        assert teacher["asked"] == 24 and teacher["dropped_invalid"] == 2 and teacher["kept"] == 22
        assert teacher["agreement_with_gold"] == pytest.approx(18 / 22)
        assert (
            "trained on the labels of teacher openai: 22 kept, 2 invalid answers dropped, 81.8% agreeing with gold"
            in first.stdout
        )
        assert runs["openai"]["status"] == "ok" and runs["qwen-lora"]["status"] == "ok"
        # The student trained on the teacher's 22 valid answers, not on the 24 gold lines.
        assert runs["qwen-lora"]["n_train"] == 22 and runs["qwen-lora"]["train_log"]

        before = len(server.log)
        second = cli(*args)
        assert second.returncode == 0, second.stderr
        # Nothing asked again: the teacher's answers are cached, the student's run and the openai row reused.
        assert [e for e in server.log[before:] if e["path"].endswith("completions")] == []
        assert {r["status"] for r in json.loads((tmp_path / "out.json").read_text())["runs"]} == {"reused"}


def test_a_teacher_killed_while_labelling_resumes_from_what_it_cached(plugin_site, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    data, gold, texts = waybill_with_gold(tmp_path, 40, 4)
    # The second chunk of 32 (texts 32 to 39) answers slowly: the run is killed while it is being asked.
    with OpenAIServer(gold, faults=Faults(slow=set(texts[32:]))) as server:
        args = [
            sys.executable,
            "-m",
            "harness",
            "compare",
            "--plugins",
            "openai",
            "--spec",
            "waybill",
            "--teacher",
            "openai",
            "--data",
            data,
            *endpoint_args(server, "--set", "openai.api_key_env="),
            "--latency-samples",
            "1",
        ]
        env = {**os.environ, "PYTHONPATH": str(plugin_site)}
        process = subprocess.Popen(
            args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        cache = tmp_path / ".harness" / "teacher"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            files = list(cache.glob("*.jsonl"))
            if files and len(files[0].read_text().splitlines()) >= 32:
                break
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        assert len(files[0].read_text().splitlines()) == 32
        before = len(server.log)
        rerun = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr
        asked_again = {e["text"] for e in server.log[before:] if e["text"] in texts}
        assert asked_again == set(texts[32:])  # only what the kill lost
        assert "asking 8 of 40 training texts (32 answered before)" in rerun.stdout


def test_batch1_latency_through_harness_is_that_of_one_persistent_client(ag_test, tmp_path, capsys):
    """Batch-1 latency timed as compare times it (harness.measure, through the approach's predict hook) is the
    server's, not a new client, event loop and connection per request: within 1.5x of a bare loop over one
    persistent client, the two taking turns request by request in one process, after a warm-up, medians."""
    import asyncio

    import openai

    from harness import measure
    from harness.decoder import chat_messages
    from harness.load_cache import load_for_serving
    from harness.planning import plan_settings
    from harness.plugins import load_plugins
    from harness.settings import parse_overrides
    from harness.spec import load_spec
    from harness.types import Example
    from harness.units import SILENT_PROGRESS, without_answers

    gold = {row["text"]: AG_LABELS[row["label"]] for row in ag_test}
    examples = without_answers([Example(str(i), row["text"]) for i, row in enumerate(ag_test)]) * 4
    with OpenAIServer(gold, AG_LABELS) as server:
        plugins = load_plugins()
        spec = load_spec("agnews")
        overrides = parse_overrides([f"openai.base_url={server.base_url}", "openai.model=test-model"])
        plan = plan_settings(plugins, spec, ["openai"], overrides)["openai"]
        task = spec.to_task("openai")
        artifact = plugins.configured("openai", plan.train_settings, workdir=tmp_path, progress=SILENT_PROGRESS).train(
            task, [], []
        )
        _, settings = load_for_serving(plugins, "openai", task, artifact, plan.settings)

        def harness_one(example: Example) -> object:  # what measure_unit's predict([ex]) calls
            return plugins.configured("openai", settings, progress=SILENT_PROGRESS).predict(task, artifact, [example])

        loop = asyncio.new_event_loop()
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="EMPTY", max_retries=0)

        def client_one(example: Example) -> object:
            return loop.run_until_complete(
                client.chat.completions.create(
                    model="test-model",
                    messages=chat_messages(task, example.text),
                    temperature=0,
                    seed=settings["seed"],
                    max_tokens=16,
                    logprobs=True,
                    top_logprobs=20,
                )
            )

        try:
            ours, bare = measure.interleaved_batch1_latency([harness_one, client_one], examples, warmup=5)
        finally:
            loop.run_until_complete(client.close())
            loop.close()
            artifact.state["endpoint"].close()
    ours_p50, bare_p50 = ours.summary()["latency_p50_ms"], bare.summary()["latency_p50_ms"]
    with capsys.disabled():
        print(
            f"\nbatch-1 p50 over {len(examples)} requests on tests/openai_server.py: harness (openai approach) "
            f"{ours_p50:.2f} ms, one persistent AsyncOpenAI client {bare_p50:.2f} ms ({ours_p50 / bare_p50:.2f}x)"
        )
    assert all(len(latency.samples_ms) == len(examples) for latency in (ours, bare))
    assert ours_p50 <= 1.5 * bare_p50, (ours_p50, bare_p50)


def test_a_row_most_of_whose_requests_fail_is_a_failed_row_and_is_asked_again(cli, ag_test, tmp_path):
    """Every request failing, then 5 of 8: a failed row each time, in one line with the first error, judged on the
    timed pass alone (its warm-up and latency requests answer the same texts); the server back: the failed row is
    not reused, it is asked again."""
    texts = [row["text"] for row in ag_test[:8]]
    gold = {row["text"]: AG_LABELS[row["label"]] for row in ag_test[:8]}
    with OpenAIServer(gold, AG_LABELS, faults=Faults(broken=set(texts))) as server:
        args = [
            "compare",
            "--plugins",
            "openai",
            "--spec",
            "agnews",
            "--data",
            data_files(tmp_path, AG_NEWS, 8),
            *endpoint_args(server, "--set", "openai.api_key_env="),
            "--latency-samples",
            "1",
            "--json",
            "out.json",
        ]
        for broken in (8, 5):
            server.faults.broken = set(texts[:broken])
            failed = cli(*args)
            assert failed.returncode == 1, failed.stderr
            (run,) = json.loads((tmp_path / "out.json").read_text())["runs"]
            assert run["status"] == "failed"
            assert run["error"] == f"AnswersFailed: {broken} of 8 answers failed (first: HTTP 500: internal error)"
        server.faults.broken.clear()
        before = len(server.log)
        second = cli(*args)
        assert second.returncode == 0, second.stderr
        (run,) = json.loads((tmp_path / "out.json").read_text())["runs"]
        assert run["status"] == "ok" and run["metrics"]["accuracy"] == 1.0
        assert set(texts) <= {e["text"] for e in server.log[before:]}


def test_a_teacher_caches_only_answers_and_a_rerun_asks_the_failed_ones_again(cli, tmp_path, shared):
    data, gold, texts = waybill_with_gold(tmp_path, 12, 4)
    with OpenAIServer(gold, faults=Faults(broken=set(texts[:3]))) as server:
        args = [
            "compare",
            "--plugins",
            "openai",
            "--spec",
            "waybill",
            "--teacher",
            "openai",
            "--data",
            data,
            *endpoint_args(server, "--set", "openai.api_key_env="),
            "--latency-samples",
            "1",
            "--json",
            "out.json",
        ]
        first = cli(*args)
        assert first.returncode == 0, first.stderr
        assert "3 requests failed (left out; asked again next run)" in first.stdout
        teacher = json.loads((tmp_path / "out.json").read_text())["runs"][0]["environment"]["teacher"]
        assert teacher["failed"] == 3 and teacher["kept"] == 9 and teacher["dropped_invalid"] == 0
        (cache,) = (tmp_path / ".harness" / "teacher").glob("*.jsonl")
        rows = [json.loads(line) for line in cache.read_text().splitlines()]
        assert len(rows) == 9 and not any(row.get("error") for row in rows)
        assert {row["system_fingerprint"] for row in rows} == {"fp_test_1"}

        # The server answers again; how the teacher asks changes, what it answers does not: the same cache,
        # and only the 3 failed texts are asked.
        server.faults.broken.clear()
        before = len(server.log)
        second = cli(
            *args, "--set", "openai.concurrency=2", "--set", "openai.timeout=20", "--set", "openai.max_retries=0"
        )
        assert second.returncode == 0, second.stderr
        assert "asking 3 of 12 training texts (9 answered before)" in second.stdout
        assert sorted(e["text"] for e in server.log[before:] if e["text"] in texts) == sorted(texts[:3])
        assert list((tmp_path / ".harness" / "teacher").glob("*.jsonl")) == [cache]
        assert len(cache.read_text().splitlines()) == 12
        teacher = json.loads((tmp_path / "out.json").read_text())["runs"][0]["environment"]["teacher"]
        assert teacher["failed"] == 0 and teacher["kept"] == 12


def test_a_teacher_that_fails_every_request_stops_in_one_line_and_caches_nothing(cli, tmp_path, shared):
    data, gold, texts = waybill_with_gold(tmp_path, 12, 4)
    with OpenAIServer(gold, faults=Faults(broken=set(texts))) as server:
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
            *endpoint_args(server, "--set", "openai.api_key_env="),
            "--latency-samples",
            "1",
        )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and "broken-import" not in line]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("harness: error: --teacher: the teacher 'openai' failed: 12 of 12 requests")
    assert lines[0].endswith("(first: HTTP 500: internal error)")
    assert not list(tmp_path.glob(".harness/teacher/*.jsonl"))
    assert not list(tmp_path.glob(".harness/runs/*"))
