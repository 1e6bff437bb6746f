"""harness try: the approaches of a stored comparison answering a typed text side by side, in the terminal
(--text) and on a local Gradio page driven in a real headless chromium (Playwright), nothing fetched from
outside this machine."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import bert_args

TEXT = "Stocks fell sharply on Wall Street as oil prices rose and investors sold technology shares."


@pytest.fixture(scope="module")
def compared(workspace, tiny_bert, ag_news_data):
    tmp_path, cli = workspace
    result = cli(
        "compare",
        "--plugins",
        "naive-bayes,bert",
        "--data",
        ag_news_data,
        "--spec",
        "agnews",
        "--limit-train",
        "60",
        "--limit-test",
        "16",
        "--latency-samples",
        "2",
        *bert_args(tiny_bert),
        "--json",
        "out.json",
    )
    assert result.returncode == 0, result.stderr
    return json.loads((tmp_path / "out.json").read_text())


def test_try_text_prints_each_approachs_answer_side_by_side(compared, workspace):
    _, cli = workspace
    result = cli("try", "--spec", "agnews", "--text", TEXT)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("│")]
    assert [row.split("│")[1].strip() for row in rows] == ["naive-bayes", "bert"]
    for row in rows:
        cells = [c.strip() for c in row.split("│")[1:-1]]
        assert cells[1] in ("World", "Sports", "Business", "Sci/Tech") and float(cells[3]) > 0


def test_try_without_a_comparison_of_the_spec_is_one_line(cli):
    result = cli("try", "--spec", "agnews", "--text", "x")
    assert result.returncode == 2
    assert "no comparison of spec 'agnews'" in result.stderr and "run harness compare first" in result.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.browser
def test_try_serves_a_page_that_answers_typed_text_in_a_real_browser(compared, workspace, plugin_site):
    from test_report import chromium

    tmp_path, _ = workspace
    if chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run installs Debian's chromium for this test")
        pytest.skip("no chromium on this machine (.ci/run installs it)")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(plugin_site)}
    server = subprocess.Popen(
        [sys.executable, "-m", "harness", "try", "--spec", "agnews", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                assert time.monotonic() < deadline, "the page did not come up in 120 s"
                time.sleep(0.5)
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
            tab = browser.new_page(viewport={"width": 1200, "height": 800})
            requests: list[str] = []
            tab.on("request", lambda request: requests.append(request.url))
            tab.goto(url)
            tab.locator("#try-text textarea").fill(TEXT)
            tab.locator("#try-run").click()
            answers = tab.locator("#try-answers")
            tab.wait_for_function(
                "() => ['naive-bayes', 'bert'].every(name => "
                "document.querySelector('#try-answers').innerText.includes(name))",
                timeout=60_000,
            )
            body = answers.inner_text()
            assert sum(label in body for label in ("World", "Sports", "Business", "Sci/Tech")) >= 1
            shot = Path(os.environ.get("HARNESS_TRY_SCREENSHOT", tmp_path / "try.png"))
            tab.screenshot(path=str(shot), full_page=True)
            browser.close()
        assert shot.read_bytes().startswith(b"\x89PNG")
        outside = [u for u in requests if not u.startswith((url, "data:", "blob:"))]
        assert not outside, outside  # nothing fetched from outside this machine
    finally:
        server.terminate()
        server.wait(timeout=30)
