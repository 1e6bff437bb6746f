"""The honest report: intervals and pairwise lines in the table and --json, `report --compare` across
comparisons, plots as real PNGs, and the HTML page opened in a real headless browser with no network."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import bert_args

COMMON = ["--spec", "agnews", "--limit-train", "400", "--limit-test", "300", "--latency-samples", "5"]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def compared(workspace, tiny_bert, ag_news_data):
    """naive-bayes against a tiny BERT (one epoch: near chance) and the naive-bayes engine, on 300 texts."""
    tmp_path, cli = workspace
    result = cli(
        "compare",
        "--plugins",
        "naive-bayes,bert,naive-bayes-tables",
        "--data",
        ag_news_data,
        *COMMON,
        *bert_args(tiny_bert),
        "--json",
        "out.json",
    )
    assert result.returncode == 0, result.stderr
    return result, json.loads((tmp_path / "out.json").read_text())


def test_compare_prints_intervals_and_one_line_per_pair_and_json_holds_them(compared):
    result, out = compared
    statistics = out["statistics"]
    assert statistics["headline"] == "f1_weighted" and "bootstrap" in statistics["method"]
    for run in out["runs"]:
        ci = statistics["intervals"][run["run_id"]]["f1_weighted"]
        assert ci["low"] <= run["metrics"]["f1_weighted"] == ci["estimate"] <= ci["high"]
        assert 0 < ci["high"] - ci["low"] < 0.3
    pairs = {(p["a"], p["b"]): p for p in statistics["pairs"]}
    assert set(pairs) == {
        ("naive-bayes", "bert"),
        ("naive-bayes", "naive-bayes-tables"),
        ("bert", "naive-bayes-tables"),
    }
    # The engine serves the very model naive-bayes trained: the same answers, no difference at all.
    same = pairs[("naive-bayes", "naive-bayes-tables")]
    assert same["difference"] == same["low"] == same["high"] == 0 and same["p_holm"] == 1.0
    assert same["mcnemar"]["a_only_right"] == same["mcnemar"]["b_only_right"] == 0 and not same["significant"]
    # Trained naive Bayes against a barely trained tiny BERT on 300 texts: a real, significant gap.
    gap = pairs[("naive-bayes", "bert")]
    assert gap["difference"] > 0.1 and gap["significant"] and gap["p_holm"] >= gap["p"] and gap["low"] > 0
    assert gap["test"] == "paired bootstrap" and gap["resamples"] == 10_000 and gap["seeds"] == [1, 1]
    assert (
        "naive-bayes vs bert: +" in result.stdout
        and "(paired bootstrap, Holm) — naive-bayes is significantly better" in result.stdout
    )
    assert "  McNemar's exact test on accuracy: naive-bayes alone right" in result.stdout
    assert (
        "naive-bayes vs naive-bayes-tables: +0.000" in result.stdout and "not a significant difference" in result.stdout
    )
    # No single row is significantly better than every other (naive-bayes ties its engine): nothing in bold.
    assert statistics["best"] is None


def test_plots_are_pngs_with_the_expected_series(compared, workspace):
    tmp_path, _ = workspace
    _, out = compared
    folder = tmp_path / ".harness" / "comparisons" / out["comparison_id"]
    plots = json.loads((folder / "plots.json").read_text())
    assert set(plots) >= {
        "training-bert.png",
        "confusion-bert.png",
        "confusion-naive-bayes.png",
        "quality-throughput.png",
        "quality-latency.png",
    }
    for name in plots:
        data = (folder / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 2000, name
    # Every approach is a point, and the front is drawn.
    assert plots["quality-throughput.png"]["series"] == ["naive-bayes", "bert", "naive-bayes-tables", "Pareto front"]
    assert plots["training-bert.png"]["series"][0] == "training loss"
    assert any(s.startswith("eval_f1") for s in plots["training-bert.png"]["series"])


def test_report_compare_builds_one_table_from_two_comparisons_and_refuses_other_test_sets(
    compared, workspace, ag_news_data
):
    tmp_path, cli = workspace
    _, out = compared
    again = cli(
        "compare", "--plugins", "naive-bayes", "--data", ag_news_data, *COMMON, "--seeds", "1", "--json", "seed1.json"
    )
    assert again.returncode == 0, again.stderr
    seed1 = json.loads((tmp_path / "seed1.json").read_text())
    bert_run = next(r["run_id"] for r in out["runs"] if r["approach"] == "bert")
    combined = cli("report", "--compare", seed1["comparison_id"], bert_run, "--json", "combined.json")
    assert combined.returncode == 0, combined.stderr
    table = json.loads((tmp_path / "combined.json").read_text())
    assert [r["approach"] for r in table["runs"]] == ["naive-bayes", "bert"]
    assert [(p["a"], p["b"]) for p in table["statistics"]["pairs"]] == [("naive-bayes", "bert")]
    assert "naive-bayes vs bert" in combined.stdout
    # Another test set: one line, exit 2.
    other = cli(
        "compare",
        "--plugins",
        "naive-bayes",
        "--data",
        ag_news_data,
        "--spec",
        "agnews",
        "--limit-train",
        "400",
        "--limit-test",
        "120",
        "--latency-samples",
        "3",
        "--json",
        "small.json",
    )
    assert other.returncode == 0, other.stderr
    small = json.loads((tmp_path / "small.json").read_text())["runs"][0]["run_id"]
    refused = cli("report", "--compare", small, bert_run)
    assert refused.returncode == 2
    assert refused.stderr.startswith("harness: error: --compare: runs scored on different test sets"), refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    nothing = cli("report", "--compare", "no-such-thing")
    assert (
        nothing.returncode == 2 and "'no-such-thing' is neither a stored run nor a stored comparison" in nothing.stderr
    )


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.browser
def test_the_html_report_renders_offline_in_a_real_browser(compared, workspace):
    tmp_path, cli = workspace
    _, out = compared
    result = cli("report", out["comparison_id"], "--html", "report.html")
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page and "<script" not in page  # nothing fetched, nothing run
    if chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run installs Debian's chromium for this test")
        pytest.skip("no chromium on this machine (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        context = browser.new_context(offline=True, viewport={"width": 1280, "height": 900})
        requests: list[str] = []
        tab = context.new_page()
        tab.on("request", lambda request: requests.append(request.url))
        tab.goto((tmp_path / "report.html").as_uri())
        assert tab.locator("#results tbody tr").count() == 3  # one row per approach
        images = tab.locator("img")
        assert images.count() >= 5
        for i in range(images.count()):  # every plot decoded: a broken image has no natural width
            assert images.nth(i).evaluate("img => img.complete && img.naturalWidth > 100"), i
        assert tab.locator("table.mistakes").count() == 3 and tab.locator("table.per-class").count() == 3
        assert "naive-bayes vs bert" in tab.inner_text("body")
        shot = Path(os.environ.get("HARNESS_SCREENSHOT", tmp_path / "report.png"))
        tab.screenshot(path=str(shot), full_page=False)
        browser.close()
    assert shot.read_bytes().startswith(PNG)
    assert all(url.startswith(("file://", "data:")) for url in requests), requests


def test_the_pages_statistics_nest_each_pairs_second_lines_under_it():
    from harness.html import _statistics_list

    page = _statistics_list(
        [
            "a vs b: +0.1 F1 (w) [...] — a is significantly better",
            "  McNemar's exact test on accuracy: a alone right 3, b alone right 1, p = 0.62 (Holm)",
            "a: F1 (w) sd across seeds 0.010 <x>",
        ]
    )
    assert page == (
        "<ul><li>a vs b: +0.1 F1 (w) [...] — a is significantly better<ul><li>McNemar&#x27;s exact test on "
        "accuracy: a alone right 3, b alone right 1, p = 0.62 (Holm)</li></ul></li>"
        "<li>a: F1 (w) sd across seeds 0.010 &lt;x&gt;</li></ul>"
    )
