"""A hint that names an extra ("pip install 'harness-compare[plots]'") reaches the terminal whole: rich prints it
as text, never taking ``[plots]`` for a markup tag. The real report functions and a real rich console; matplotlib
made unimportable the way a missing package is."""

from __future__ import annotations

import sys
from io import StringIO

from rich.console import Console

from harness.report_plots import write_plots
from harness.report_terminal import TerminalReporter, comparison_table
from harness.types import Comparison, RunRecord

ONNX_HINT = "bert-onnx needs ONNX Runtime: pip install 'harness-compare[onnx]'"


def printed(*renderables) -> str:
    console = Console(file=StringIO(), width=200)
    for renderable in renderables:
        console.print(renderable)
    return console.file.getvalue()


def test_the_plots_hint_names_the_extra_when_matplotlib_is_missing(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError, as when absent
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    console = Console(file=StringIO(), width=200)
    comparison = Comparison("c1", "agnews", "2024-01-01T00:00:00", [RunRecord("r1", "toy", "agnews", "classification")])
    assert write_plots(comparison, tmp_path / "plots", None, console) == {}
    line = console.file.getvalue().strip()
    assert line == "plots: not drawn (pip install 'harness-compare[plots]' for matplotlib)"
    assert not (tmp_path / "plots").exists()


def test_a_failed_rows_error_keeps_the_extra_it_names():
    failed = RunRecord("r1", "bert-onnx", "agnews", "classification", status="failed", error=ONNX_HINT)
    console = Console(file=StringIO(), width=200)
    TerminalReporter(console, ["accuracy"]).harness_run_finished(failed)
    assert console.file.getvalue().strip() == f"bert-onnx failed: {ONNX_HINT}"
    table = comparison_table(Comparison("c1", "agnews", "2024-01-01T00:00:00", [failed], metrics=["accuracy"]))
    assert f"bert-onnx: {ONNX_HINT}" in printed(table)


def test_harness_try_shows_answers_and_errors_as_written():
    from harness.tryout import Answer, terminal_table

    table = terminal_table(
        [Answer("bert-onnx", "", "", 0.0, error=ONNX_HINT), Answer("qwen", "[B] Sports", "B 0.9", 12.0)],
        "a text with [brackets]",
    )
    shown = printed(table)
    assert ONNX_HINT in shown and "[B] Sports" in shown and "harness try: a text with [brackets]" in shown
