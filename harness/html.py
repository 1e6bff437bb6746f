"""``harness report --html PATH``: one self-contained HTML page of a comparison, for a pull request or a paper.

The page holds the table (each quality figure with its 95% bootstrap interval), the pairwise statistics,
per-class or per-field metrics, the plots inline (PNG as data: URIs), each run's settings, data hashes,
device and library versions, and each approach's 20 worst mistakes. Nothing on it is fetched when it is
viewed: no script, no font, no stylesheet from elsewhere.
"""

from __future__ import annotations

import base64
import json
from html import escape
from pathlib import Path
from typing import Any

from harness.report_terminal import METRIC_TITLES, _params, statistics_lines
from harness.stats_seeds import MEASURED, by_approach, metric_of, spread
from harness.types import Comparison, RunRecord

MISTAKES = 20

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; vertical-align: top; }
th:first-child, td:first-child, td.text { text-align: left; }
td.text { max-width: 520px; white-space: pre-wrap; word-break: break-word; }
.best { font-weight: bold; color: #176b1b; } .failed { color: #b00020; } .note { color: #555; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; } code { background: #f4f4f4; padding: 0 3px; }
details { margin: 0.4em 0; } summary { cursor: pointer; }
"""


def _statistics_list(lines: list[str]) -> str:
    """The statistics lines as a list; an indented line (a pair's McNemar or seeds line) nested under its pair."""
    items: list[list[str]] = []
    for line in lines:
        if line.startswith("  ") and items:
            items[-1].append(line.strip())
        else:
            items.append([line])
    return (
        "<ul>"
        + "".join(
            f"<li>{escape(first)}"
            + ("<ul>" + "".join(f"<li>{escape(sub)}</li>" for sub in rest) + "</ul>" if rest else "")
            + "</li>"
            for first, *rest in items
        )
        + "</ul>"
    )


def write_html(path: Path, comparison: Comparison, store: Any, plots: dict[str, dict[str, Any]]) -> None:
    """Write the page for ``comparison`` (its statistics already computed) to ``path``."""
    from harness.files import write_text
    from harness.store.records import read_scored

    folder = store.root / "comparisons" / comparison.comparison_id
    groups = by_approach(comparison)
    parts = [
        f"<h1>{escape(comparison.spec)}: comparison {escape(comparison.comparison_id)}</h1>",
        f"<p class='note'>created {escape(comparison.created)}; {len(comparison.runs)} runs</p>",
        "<h2>Results</h2>",
        _table(comparison, groups),
    ]
    lines = statistics_lines(comparison)[1:]  # the first says what ± means in the terminal; the page shows brackets
    if lines:
        parts.append(_statistics_list(lines))
    parts.append(_detail_tables(comparison, groups))
    if plots:
        parts.append("<h2>Plots</h2>")
        for name, plot in plots.items():
            data = base64.b64encode((folder / name).read_bytes()).decode("ascii")
            parts.append(
                f"<figure><img alt='{escape(plot['title'])}' src='data:image/png;base64,{data}'>"
                f"<figcaption class='note'>{escape(plot['title'])}</figcaption></figure>"
            )
    parts.append("<h2>Worst mistakes</h2>")
    for approach, runs in groups.items():
        run = next((r for r in runs if r.status in MEASURED), None)
        if run is None:
            continue
        scored = read_scored(store.run_dir(run.run_id) / "predictions.jsonl")
        if scored is not None:
            parts.append(_mistakes(approach, run, *scored))
    parts.append("<h2>Runs</h2>")
    parts += [_run_details(run) for run in comparison.runs]
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{escape(comparison.spec)} — harness report</title><style>{STYLE}</style></head><body>"
        + "\n".join(parts)
        + "</body></html>\n"
    )
    write_text(path, page)


def _figure(runs: list[RunRecord], get: Any) -> float | None:
    figure = spread(runs, get)
    return None if figure is None else figure.mean


def _table(comparison: Comparison, groups: dict[str, list[RunRecord]]) -> str:
    statistics = comparison.statistics or {}
    intervals = statistics.get("intervals", {})
    head = [
        "Approach",
        "Status",
        *(METRIC_TITLES.get(m, m) for m in comparison.metrics),
        "Train s",
        "Predict /s",
        "p50 ms",
        "Serve RSS MB",
        "Params",
        "Dtype",
    ]
    rows = []
    for approach, runs in groups.items():
        measured = [r for r in runs if r.status in MEASURED]
        status = ", ".join(sorted({r.status for r in runs}))
        cells = [escape(approach), f"<span class='{'failed' if not measured else ''}'>{escape(status)}</span>"]
        for index, metric in enumerate(comparison.metrics):
            figure = spread(runs, metric_of(metric))
            if figure is None:
                cells.append("-")
                continue
            text = f"{figure.mean:.4f}"
            if figure.sd is not None:
                text += f" ± {figure.sd:.4f} sd"
            elif metric in intervals.get(measured[0].run_id, {}):
                ci = intervals[measured[0].run_id][metric]
                text += f" [{ci['low']:.4f}, {ci['high']:.4f}]"
            best = index == 0 and statistics.get("best") == approach
            cells.append(f"<span class='best'>{text}</span>" if best else text)
        speed = [
            _figure(runs, lambda r: r.speed.get("train_seconds")),
            _figure(runs, lambda r: r.speed.get("predict_samples_per_s")),
            _figure(runs, lambda r: r.speed.get("latency_p50_ms")),
            _figure(runs, lambda r: r.memory.get("predict_rss_peak_mb")),
        ]
        cells += ["-" if v is None else f"{v:,.1f}" for v in speed]
        parameters = measured[0].model.get("parameters") if measured else None
        cells.append(_params(parameters))
        cells.append(escape(str(measured[0].serving.get("dtype") or "-")) if measured else "-")
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        for run in runs:
            if run.status in ("failed", "missing"):
                rows.append(
                    f"<tr><td colspan='{len(head)}' class='failed'>"
                    f"{escape(approach)}: {escape(run.error or '')}</td></tr>"
                )
    return (
        "<table id='results'><thead><tr>"
        + "".join(f"<th>{escape(h)}</th>" for h in head)
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
        + "<p class='note'>Quality in brackets: the 95% bootstrap interval over test examples; with several seeds, "
        "mean ± sd across them. Bold: significantly better than every other row.</p>"
    )


# The columns of the per-class and per-field tables: each figure's key in the run's metrics, and its title.
PER_CLASS = {"precision": "precision", "recall": "recall", "f1": "F1"}
PER_FIELD = {"accuracy": "accuracy", **PER_CLASS}


def _figures_table(approach: str, unit: str, first: str, figures: dict[str, Any], columns: dict[str, str]) -> str:
    """One approach's figures per class or per field (``unit``): a row each, its rates to three places and
    its support."""
    head = "".join(f"<th>{title}</th>" for title in (first, *columns.values(), "support"))
    rows = "".join(
        f"<tr><td>{escape(name)}</td>"
        + "".join(f"<td>{v[key]:.3f}</td>" for key in columns)
        + f"<td>{v['support']}</td></tr>"
        for name, v in figures.items()
    )
    return f"<h3>{escape(approach)}: per {unit}</h3><table class='per-{unit}'><tr>{head}</tr>{rows}</table>"


def _detail_tables(comparison: Comparison, groups: dict[str, list[RunRecord]]) -> str:
    parts = []
    for approach, runs in groups.items():
        run = next((r for r in runs if r.status in MEASURED), None)
        if run is None:
            continue
        if run.metrics.get("per_class"):
            parts.append(_figures_table(approach, "class", "label", run.metrics["per_class"], PER_CLASS))
        if run.metrics.get("per_field"):
            parts.append(_figures_table(approach, "field", "field", run.metrics["per_field"], PER_FIELD))
    return ("<h2>Per class and per field</h2>" + "".join(parts)) if parts else ""


def _mistakes(approach: str, run: RunRecord, examples: list[Any], predictions: list[Any]) -> str:
    """The approach's worst mistakes: wrong answers it was surest of (classification), or the records with
    the most fields wrong (extraction)."""
    from harness.metrics import record_outcome

    wrong = []
    for ex, p in zip(examples, predictions):
        if run.task_type == "extraction":
            outcome = record_outcome(
                list((ex.fields or {}).keys()), ex.fields, p.fields, bool(run.environment.get("normalize", True))
            )
            if not outcome["exact"]:
                misses = sum(1 - c["right"] for c in outcome["fields"].values())
                wrong.append(
                    (misses, ex.text, json.dumps(ex.fields, ensure_ascii=False), p.raw or "", f"{misses} fields wrong")
                )
        elif p.label != ex.label:
            confidence = (p.scores or {}).get(p.label, 0.0) if p.label else 0.0
            wrong.append((confidence, ex.text, ex.label, p.label or "(no valid label)", f"p = {confidence:.3f}"))
    wrong.sort(key=lambda item: -item[0])
    rows = "".join(
        f"<tr><td class='text'>{escape(text)}</td><td class='text'>{escape(str(gold))}</td>"
        f"<td class='text'>{escape(str(answer))}</td><td>{escape(score)}</td></tr>"
        for _, text, gold, answer, score in wrong[:MISTAKES]
    )
    return (
        f"<details open><summary>{escape(approach)}: {min(len(wrong), MISTAKES)} of {len(wrong)} mistakes</summary>"
        "<table class='mistakes'><tr><th>text</th><th>gold</th><th>answer</th><th>score</th></tr>"
        f"{rows}</table></details>"
    )


def _run_details(run: RunRecord) -> str:
    environment = {k: v for k, v in run.environment.items() if k != "data_checks"}
    facts = {
        "status": run.status,
        "seed": run.seed,
        "train data": f"{run.n_train} examples, sha256 {run.train_hash}",
        "validation": f"{run.n_validation} examples ({run.environment.get('validation_source', '')})",
        "test data": f"{run.n_test} examples, sha256 {run.test_hash}",
        "model": run.model.get("model"),
        "trained in": run.training.get("trained_in"),
        "serving": run.serving,
    }
    rows = "".join(
        f"<tr><td>{escape(k)}</td><td class='text'>{escape(json.dumps(v, ensure_ascii=False, default=str))}</td></tr>"
        for k, v in {**facts, "settings": run.settings, "environment": environment}.items()
    )
    return (
        f"<details><summary>{escape(run.approach)} · run {escape(run.run_id)}</summary>"
        f"<table class='run'>{rows}</table></details>"
    )
