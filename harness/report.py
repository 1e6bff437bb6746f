"""The rich terminal reporter: a plugin of the event hooks, as pytest's terminal reporter is of pytest's."""

from __future__ import annotations

from typing import Any, Callable

import pluggy

from harness import stats
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
        (METRIC_TITLES.get(m, m), lambda r, m=m: r.metrics.get(m), _number, -1 if m == "invalid" else +1)
        for m in metrics
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
    groups = stats.by_approach(comparison)
    several = any(len(runs) > 1 for runs in groups.values())
    table = Table(title=f"{comparison.spec} — comparison {comparison.comparison_id}", title_justify="left")
    table.add_column("Approach", style="bold")
    table.add_column("Status")
    for title, *_ in columns:
        table.add_column(title, justify="right")

    def figure(runs: list[RunRecord], get: Callable[[RunRecord], Any]) -> Any:
        if len(runs) == 1:
            return get(runs[0]) if runs[0].status in stats.MEASURED else None
        return stats.spread(runs, get)

    def value(cell: Any) -> Any:
        return cell.mean if isinstance(cell, stats.Spread) else cell

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
            if isinstance(cell, stats.Spread):
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
    ranked = [r for r in comparison.runs if r.status in stats.MEASURED]
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
    headline = statistics.get("headline")
    title = METRIC_TITLES.get(headline, headline)
    lines = [
        f"±: half the width of the 95% bootstrap interval over the test examples (percentile, "
        f"{stats.RESAMPLES} resamples); "
        f"bold {title}: significantly better than every other row (a paired bootstrap of the {title} "
        f"difference over the test examples, Holm-adjusted, p < {stats.ALPHA})"
    ]
    lines += [line for pair in statistics.get("pairs", []) for line in stats.pair_lines(pair, title)]
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

    groups = stats.by_approach(comparison)
    fields = next((list(r.metrics.get("per_field") or {}) for r in comparison.runs if r.metrics.get("per_field")), [])
    if not fields:
        return None
    table = Table(title="per field: accuracy / F1 (non-empty values)", title_justify="left")
    table.add_column("Approach", style="bold")
    for field in fields:
        table.add_column(field, justify="right")
    for approach, runs in groups.items():
        measured = [r for r in runs if r.status in stats.MEASURED and r.metrics.get("per_field")]
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
    measured = sum(r.status in stats.MEASURED for r in runs)
    colour = "green" if measured == len(runs) else "yellow" if measured else "red"
    return f"[{colour}]{measured}/{len(runs)} seeds[/]"


# ---------------------------------------------------------------------------------------------
# Plots (matplotlib, the [plots] extra): PNG files in the comparison's directory of the store.
# ---------------------------------------------------------------------------------------------

PLOTS_FILE = "plots.json"  # beside the PNGs: each plot's file, what it shows and its series


def write_plots(comparison: Comparison, folder: Any, store: Any, console: Any = None) -> dict[str, dict[str, Any]]:
    """Each approach's training curves (loss, and every evaluation metric, against step) and confusion matrix,
    and quality against predict throughput and against batch-1 latency for all approaches with the Pareto
    front marked. Returns ``{file name: {"title", "series"}}`` (also written to ``plots.json``); without
    matplotlib one line says which extra to install, and nothing is drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        if console is not None:
            # markup=False: rich would take "[plots]" for a tag and print "pip install 'harness-compare'".
            console.print(
                "plots: not drawn (pip install 'harness-compare[plots]' for matplotlib)", markup=False, highlight=False
            )
        return {}
    from pathlib import Path

    from harness.files import write_json

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:  # a read-only store still reports: the plots are what it cannot keep
        if console is not None:
            console.print(f"plots: not drawn ({folder} cannot be written: {exc.strerror})", highlight=False)
        return {}
    plots: dict[str, dict[str, Any]] = {}
    groups = {
        name: [r for r in runs if r.status in stats.MEASURED] for name, runs in stats.by_approach(comparison).items()
    }
    groups = {name: runs for name, runs in groups.items() if runs}
    headline = next((m for m in comparison.metrics if m not in stats.COUNTS), None)

    def save(fig: Any, name: str, title: str, series: list[str]) -> None:
        fig.tight_layout()
        fig.savefig(folder / name, dpi=110)
        plt.close(fig)
        plots[name] = {"title": title, "series": series}

    for approach, runs in groups.items():
        run = runs[0]
        losses = [(e["step"], e["loss"]) for e in run.train_log if "loss" in e and "step" in e]
        evaluations = sorted(
            {
                k
                for e in run.train_log
                for k in e
                if k.startswith("eval_")
                and k not in ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second")
            }
        )
        if losses or evaluations:
            fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
            series = []
            if losses:
                left.plot(*zip(*losses), label="training loss")
                series.append("training loss")
            if any("eval_loss" in e for e in run.train_log):
                left.plot(
                    *zip(*[(e["step"], e["eval_loss"]) for e in run.train_log if "eval_loss" in e]),
                    marker="o",
                    label="evaluation loss",
                )
                series.append("evaluation loss")
            left.set(xlabel="step", ylabel="loss", title=f"{approach}: loss")
            left.legend()
            for key in evaluations:
                if key == "eval_loss":
                    continue
                points = [(e["step"], e[key]) for e in run.train_log if isinstance(e.get(key), (int, float))]
                right.plot(*zip(*points), marker="o", label=key.removeprefix("eval_"))
                series.append(key)
            right.set(xlabel="step", ylabel="validation metric", title=f"{approach}: evaluation")
            if len(series) > (len(losses) > 0) + any("eval_loss" in e for e in run.train_log):
                right.legend()
            save(
                fig,
                f"training-{approach}.png",
                f"{approach}: training loss and evaluation metrics against step",
                series,
            )
        matrix = run.metrics.get("confusion_matrix")
        if matrix:
            fig, ax = plt.subplots(figsize=(1.2 + 0.8 * len(matrix["labels"]), 1 + 0.8 * len(matrix["matrix"])))
            image = ax.imshow(matrix["matrix"], cmap="Blues")
            ax.set_xticks(range(len(matrix["labels"])), matrix["labels"], rotation=45, ha="right")
            ax.set_yticks(range(len(matrix["matrix"])), matrix["labels"][: len(matrix["matrix"])])
            for i, row in enumerate(matrix["matrix"]):
                for j, count in enumerate(row):
                    ax.text(j, i, str(count), ha="center", va="center", fontsize=8)
            ax.set(xlabel="predicted", ylabel="gold", title=f"{approach}: confusion matrix")
            fig.colorbar(image, ax=ax)
            save(
                fig,
                f"confusion-{approach}.png",
                f"{approach}: confusion matrix (rows gold, columns predicted)",
                [approach],
            )

    if headline is not None and len(groups) > 0:
        title = METRIC_TITLES.get(headline, headline)
        for name, key, label, higher in (
            ("quality-throughput.png", "predict_samples_per_s", "predict throughput (examples/s)", True),
            ("quality-latency.png", "latency_p50_ms", "batch-1 latency p50 (ms)", False),
        ):
            points = []
            for approach, runs in groups.items():
                x = stats.spread(runs, lambda r, key=key: r.speed.get(key))
                y = stats.spread(runs, lambda r: r.metrics.get(headline))
                if x is not None and y is not None:
                    points.append((approach, x.mean, y.mean))
            if not points:
                continue
            front = pareto_front([(x, y) for _, x, y in points], higher_x=higher)
            fig, ax = plt.subplots(figsize=(6, 4))
            for i, (approach, x, y) in enumerate(points):
                ax.scatter([x], [y], s=60, marker="*" if i in front else "o", label=approach)
                ax.annotate(approach, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
            ordered = sorted((points[i][1], points[i][2]) for i in front)
            ax.plot(*zip(*ordered), linestyle="--", color="grey", label="Pareto front")
            ax.set_xscale("log")  # approaches differ by orders of magnitude in speed
            ax.set(xlabel=label, ylabel=title, title=f"{title} against {label.split(' (')[0]}")
            ax.legend(fontsize=8)
            save(
                fig,
                name,
                f"{title} against {label}; stars and the dashed line: the Pareto front",
                [approach for approach, _, _ in points] + ["Pareto front"],
            )
    write_json(folder / PLOTS_FILE, plots)
    if console is not None and plots:
        console.print(f"plots: {len(plots)} PNG files in {folder}", highlight=False)
    return plots


def pareto_front(points: list[tuple[float, float]], higher_x: bool = True) -> list[int]:
    """The indices of the points no other point beats on both axes (y higher is better; x higher or lower)."""

    def beats(a: tuple[float, float], b: tuple[float, float]) -> bool:
        x_better = a[0] >= b[0] if higher_x else a[0] <= b[0]
        x_strict = a[0] > b[0] if higher_x else a[0] < b[0]
        return x_better and a[1] >= b[1] and (x_strict or a[1] > b[1])

    return [i for i, p in enumerate(points) if not any(beats(q, p) for j, q in enumerate(points) if j != i)]
