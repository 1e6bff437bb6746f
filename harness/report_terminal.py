"""The rich terminal reporter: a plugin of the event hooks, as pytest's terminal reporter is of pytest's.

It prints each run as it starts and finishes, its evaluation log as it trains, and the comparison table with
the statistics in words; the plots are harness.report_plots', the HTML page harness.html's."""

from __future__ import annotations

from typing import Any, Callable

import pluggy

from harness.stats_intervals import RESAMPLES
from harness.stats_pairs import ALPHA, pair_lines
from harness.stats_seeds import MEASURED, Spread, by_approach, metric_of, spread
from harness.types import Comparison, RunRecord

hookimpl = pluggy.HookimplMarker("harness")

METRIC_TITLES = {
    "f1_weighted": "F1 (w)",
    "accuracy": "Acc",
    "f1_macro": "F1 (m)",
    "precision_weighted": "P (w)",
    "recall_weighted": "R (w)",
    "precision_macro": "P (m)",
    "recall_macro": "R (m)",
    "exact_match": "Exact rec",
    "valid_rate": "Valid",
    "field_f1": "Field F1",
    "field_precision": "Field P",
    "field_recall": "Field R",
}


class TerminalReporter:
    """Prints each run's header, its evaluation log as it trains, and the final comparison table."""

    def __init__(self, console: Any, metrics: list[str]):
        self.console = console
        self.metrics = metrics
        self._eval_header_printed: set[str] = set()

    @hookimpl
    def harness_run_started(self, run: RunRecord) -> None:
        self.console.rule(f"[bold]{run.approach}[/] on {run.spec}, seed {run.seed}")
        self.console.print(
            f"train {run.n_train} (sha256 {run.train_hash[:12]}), validation {run.n_validation} "
            f"({run.environment.get('validation_source', '')}), test {run.n_test} (sha256 {run.test_hash[:12]})"
            + ("  [yellow]random weights: quality is meaningless[/]" if run.random_weights else ""),
            highlight=False,
        )

    @hookimpl
    def harness_training_log(self, run: RunRecord, entry: dict[str, Any]) -> None:
        if not any(key.startswith("eval_") for key in entry):
            return
        columns = ["step", "epoch", "train_loss", "eval_loss", *(f"eval_{m}" for m in self.metrics)]
        if run.run_id not in self._eval_header_printed:
            self._eval_header_printed.add(run.run_id)
            titles = columns[:4] + self.metrics
            self.console.print("  ".join(f"{t:>12}" for t in titles), style="bold", highlight=False)
        cells = []
        for column in columns:
            value = entry.get(column)
            cells.append(f"{'-' if value is None else _number(value):>12}")
        self.console.print("  ".join(cells), highlight=False)

    @hookimpl
    def harness_run_finished(self, run: RunRecord) -> None:
        if run.status == "failed":
            from rich.markup import escape

            # An error may name an extra ("pip install 'harness-compare[onnx]'"): its brackets are text, not markup.
            self.console.print(f"[red]{run.approach} failed:[/] {escape(str(run.error))}", highlight=False)
        elif run.status == "reused":
            self.console.print(
                f"{run.approach}: reused run {run.run_id} (same training and measurement identity: "
                "approach, settings, data, model, code, libraries, machine; --rerun to run again)",
                highlight=False,
            )
        else:
            if run.training.get("trained_in") not in (None, run.run_id):
                self.console.print(
                    f"{run.approach}: measured the model trained in run {run.training['trained_in']} "
                    f"({run.training.get('reason', 're-measured')})",
                    highlight=False,
                )
            if run.training.get("resumed"):
                self.console.print(f"{run.approach}: {resumed_note(run.training['resumed'])}", highlight=False)
            quality = ", ".join(f"{METRIC_TITLES.get(m, m)} {_number(run.metrics.get(m))}" for m in self.metrics)
            self.console.print(f"{run.approach}: {quality}", highlight=False)

    @hookimpl
    def harness_compare_finished(self, comparison: Comparison) -> None:
        self.console.print(comparison_table(comparison))
        fields = per_field_table(comparison)
        if fields is not None:
            self.console.print(fields)


def resumed_note(resumed: dict[str, Any]) -> str:
    """How a run's training went on after it was killed: it resumed as the same run."""
    kept = resumed.get("from")
    if kept == "finished training":
        return (
            f"run {resumed['run']} was killed after it finished training; its model and training figures "
            "are kept, measured now"
        )
    if kept:
        before = resumed.get("seconds_before_kill")
        counted = f" (Train adds its {_duration(before)} before the kill)" if before else ""
        return f"run {resumed['run']} was killed while training and resumed from its {kept}{counted}"
    return f"run {resumed['run']} was killed before its first checkpoint: trained from the start"


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


def _rate(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} MB"


def _params(value: int | None) -> str:
    if not value:
        return "-"
    return f"{value / 1e6:,.1f} M" if value >= 1e6 else f"{value / 1e3:,.1f} k"


# (title, value getter, formatter, which is better: +1 higher, -1 lower, 0 not ranked)
Column = tuple[str, Callable[[RunRecord], Any], Callable[[Any], str], int]


def _columns(metrics: list[str], generates: bool = False) -> list[Column]:
    quality: list[Column] = [
        (METRIC_TITLES.get(m, m), metric_of(m), _number, -1 if m == "invalid" else +1) for m in metrics
    ]
    generation: list[Column] = (
        [("Gen tok/s", lambda r: r.speed.get("generated_tokens_per_s"), _rate, +1)] if generates else []
    )
    return quality + [
        ("Train", lambda r: r.speed.get("train_seconds"), _duration, -1),
        ("Predict /s", lambda r: r.speed.get("predict_samples_per_s"), _rate, +1),
        *generation,
        ("p50 ms", lambda r: r.speed.get("latency_p50_ms"), lambda v: "-" if v is None else f"{v:.1f}", -1),
        ("p95 ms", lambda r: r.speed.get("latency_p95_ms"), lambda v: "-" if v is None else f"{v:.1f}", -1),
        ("Req/s", lambda r: r.speed.get("requests_per_s"), _rate, +1),
        ("Batch", lambda r: r.speed.get("predict_batch_size"), lambda v: "-" if v is None else str(v), 0),
        ("Serve RSS", lambda r: r.memory.get("predict_rss_peak_mb"), _mb, -1),
        ("Serve GPU", lambda r: r.memory.get("predict_gpu_peak_mb"), _mb, -1),
        ("Params", lambda r: r.model.get("parameters"), _params, 0),
        ("Dtype", lambda r: r.serving.get("dtype"), lambda v: v or "-", 0),
    ]


def comparison_table(comparison: Comparison):
    """The comparison as a rich Table, one row per approach, the best value of each ranked column in bold
    green. An approach run with several seeds shows each metric as mean ± sd across its seeds and the other
    columns as their mean."""
    from rich.markup import escape
    from rich.table import Table

    metrics = comparison.metrics
    columns = _columns(metrics, generates=any(r.speed.get("generated_tokens_per_s") for r in comparison.runs))
    groups = by_approach(comparison)
    several = any(len(runs) > 1 for runs in groups.values())
    table = Table(title=f"{comparison.spec} — comparison {comparison.comparison_id}", title_justify="left")
    table.add_column("Approach", style="bold")
    table.add_column("Status")
    for title, *_ in columns:
        table.add_column(title, justify="right")

    def figure(runs: list[RunRecord], get: Callable[[RunRecord], Any]) -> Any:
        if len(runs) == 1:
            return get(runs[0]) if runs[0].status in MEASURED else None
        return spread(runs, get)

    def value(cell: Any) -> Any:
        return cell.mean if isinstance(cell, Spread) else cell

    statistics = comparison.statistics or {}
    intervals = statistics.get("intervals", {})
    best: dict[str, Any] = {}
    for index, (title, get, _, direction) in enumerate(columns):
        if index < len(metrics):
            continue  # quality: bold only what the statistics call significantly better (below)
        values = [value(figure(runs, get)) for runs in groups.values()]
        values = [v for v in values if isinstance(v, (int, float))]
        if direction and len(values) > 1:
            best[title] = max(values) if direction > 0 else min(values)
    winner = statistics.get("best")

    notes = []
    for approach, runs in groups.items():
        cells = []
        for index, (title, get, fmt, _) in enumerate(columns):
            cell = figure(runs, get)
            if isinstance(cell, Spread):
                if title in ("Batch", "Params"):  # the same for every seed: shown as is
                    text = fmt(int(cell.mean)) if cell.sd in (None, 0.0) else "varies"
                elif title == "Dtype":
                    text = fmt(runs[0].serving.get("dtype"))
                elif index < len(metrics):
                    text = fmt(cell.mean) + ("" if cell.sd is None else f" ± {fmt(cell.sd)} sd")
                else:
                    text = fmt(cell.mean)
            else:
                text = fmt(cell)
                ci = (
                    intervals.get(runs[0].run_id, {}).get(metrics[index])
                    if index < len(metrics) and cell is not None
                    else None
                )
                if ci is not None:
                    text += f" ±{(ci['high'] - ci['low']) / 2:.3f}"
            if index < len(metrics) and runs[0].random_weights and cell is not None:
                text = f"[dim]{text} †[/]"
            elif index == 0 and approach == winner:
                text = f"[bold green]{text}[/]"
            elif title in best and value(cell) == best[title]:
                text = f"[bold green]{text}[/]"
            cells.append(text)
        table.add_row(approach, _status(runs), *cells)
        for run in runs:
            if run.status in ("failed", "missing"):
                seed = f" (seed {run.seed})" if len(runs) > 1 else ""
                notes.append(f"[red]{approach}[/]{seed}: {escape(str(run.error))}")  # its brackets are text
    ranked = [r for r in comparison.runs if r.status in MEASURED]
    for run in ranked:
        trained_in = run.training.get("trained_in")
        if run.status == "reused":
            notes.append(f"{run.approach}: reused run {run.run_id} whole (same training and measurement identity)")
        elif trained_in and trained_in != run.run_id:
            notes.append(
                f"{run.approach}: training reused from run {trained_in}; {run.training.get('reason', 're-measured')}"
            )
        if run.training.get("resumed"):
            notes.append(f"{run.approach}: {resumed_note(run.training['resumed'])}")
        if run.environment.get("runs") or run.environment.get("prompt"):
            what = [f"runs {run.environment['runs']}"] if run.environment.get("runs") else []
            what += [f"asked with {run.environment['prompt']}"] if run.environment.get("prompt") else []
            notes.append(f"{run.approach}: {', '.join(what)}")
        for note in run.model.get("notes") or []:
            notes.append(f"{run.approach}: {note}")
        if run.model.get("truncated_predict"):
            notes.append(
                f"{run.approach}: inputs cut to fit the model in {run.model['truncated_predict']} of "
                f"{run.n_test} test examples"
            )
    if several:
        notes.append(
            "several seeds: each metric is mean ± sample standard deviation (sd) across the seeds that "
            "finished (Status counts them); the other columns are means"
        )
    notes.extend(statistics_lines(comparison))
    if any(r.random_weights for r in comparison.runs):
        notes.append("† random weights (--random-weights): quality is meaningless; speed and memory are real")
    sources = {r.environment.get("validation_source") for r in ranked}
    if "test" in sources:
        notes.append(
            "checkpoints were selected on the test set (validation: test), as in the seed articles: optimistic"
        )
    tests = {(r.n_test, r.test_hash[:12]) for r in ranked}
    if len(tests) == 1:
        n_test, digest = tests.pop()
        notes.append(f"every row scored on the same {n_test} test examples (sha256 {digest})")
    devices = sorted({r.environment.get("device", "") for r in ranked} - {""})
    if devices:
        notes.append("device: " + "; ".join(devices))
    if ranked:
        notes.append(
            "Train: wall time (--json splits it: load, prepare, loop, evaluation, save); "
            "Serve RSS/GPU: peak memory serving the test set; Dtype: the weights' dtype serving"
        )
    if any(r.task_type == "extraction" for r in ranked):
        notes.append(
            "Exact rec: answers that are a JSON object with every field right (after Unicode NFKC and "
            'trimming; null, missing and "" are one empty value); Valid: answers that are a JSON object '
            "with every field; Predict /s: records per second"
            + (
                "; Gen tok/s: generated tokens per second"
                if any(r.speed.get("generated_tokens_per_s") for r in ranked)
                else ""
            )
        )
    table.caption = "\n".join(dict.fromkeys(notes)) or None
    table.caption_justify = "left"
    return table


def statistics_lines(comparison: Comparison) -> list[str]:
    """What the statistics say, in words: how the intervals were made, each pair, where seeds vary more
    than the test sample."""
    statistics = comparison.statistics or {}
    if not statistics.get("intervals"):
        return []
    headline: str | None = statistics.get("headline")
    title = None if headline is None else METRIC_TITLES.get(headline, headline)
    lines = [
        f"±: half the width of the 95% bootstrap interval over the test examples (percentile, "
        f"{RESAMPLES} resamples); "
        f"bold {title}: significantly better than every other row (a paired bootstrap of the {title} "
        f"difference over the test examples, Holm-adjusted, p < {ALPHA})"
    ]
    if title is not None:  # without a headline there are no pairs: they compare it
        lines += [line for pair in statistics.get("pairs", []) for line in pair_lines(pair, title)]
    for approach, metrics in statistics.get("seeds", {}).items():
        figure = metrics.get(headline)
        if figure and figure["sd"] is not None:
            larger = (
                "seeds move it more than the test sample does"
                if figure["larger"] == "seeds"
                else "the test sample moves it more than the seeds do"
            )
            lines.append(
                f"{approach}: {title} sd across seeds {figure['sd']:.3f}, test-sample 95% CI ±"
                f"{figure['ci_half_width']:.3f}: {larger}"
            )
    return lines


def per_field_table(comparison: Comparison):
    """Extraction: each field's accuracy and F1 per approach (mean over seeds), or None for classification."""
    from rich.table import Table

    groups = by_approach(comparison)
    fields = next((list(r.metrics.get("per_field") or {}) for r in comparison.runs if r.metrics.get("per_field")), [])
    if not fields:
        return None
    table = Table(title="per field: accuracy / F1 (non-empty values)", title_justify="left")
    table.add_column("Approach", style="bold")
    for field in fields:
        table.add_column(field, justify="right")
    for approach, runs in groups.items():
        measured = [r for r in runs if r.status in MEASURED and r.metrics.get("per_field")]
        if not measured:
            continue
        cells = []
        for field in fields:
            accuracy = sum(r.metrics["per_field"][field]["accuracy"] for r in measured) / len(measured)
            f1 = sum(r.metrics["per_field"][field]["f1"] for r in measured) / len(measured)
            cells.append(f"{accuracy:.3f} / {f1:.3f}")
        table.add_row(approach, *cells)
    return table


def _status(runs: list[RunRecord]) -> str:
    styles = {"ok": "[green]ok[/]", "reused": "[cyan]reused[/]"}
    if len(runs) == 1:
        return styles.get(runs[0].status, f"[red]{runs[0].status}[/]")
    measured = sum(r.status in MEASURED for r in runs)
    colour = "green" if measured == len(runs) else "yellow" if measured else "red"
    return f"[{colour}]{measured}/{len(runs)} seeds[/]"
