"""The comparison's plots: training curves, confusion matrices and quality against speed, as PNG files.

Drawn with matplotlib (the [plots] extra) into the comparison's directory of the store, with ``plots.json``
beside them saying what each shows."""

from __future__ import annotations

from typing import Any

from harness.report_terminal import METRIC_TITLES
from harness.stats_intervals import COUNTS
from harness.stats_seeds import MEASURED, by_approach, metric_of, speed_of, spread
from harness.types import Comparison

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
    groups = {name: [r for r in runs if r.status in MEASURED] for name, runs in by_approach(comparison).items()}
    groups = {name: runs for name, runs in groups.items() if runs}
    headline = next((m for m in comparison.metrics if m not in COUNTS), None)

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
                curve = [(e["step"], e[key]) for e in run.train_log if isinstance(e.get(key), (int, float))]
                right.plot(*zip(*curve), marker="o", label=key.removeprefix("eval_"))
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
            points: list[tuple[str, float, float]] = []
            for approach, runs in groups.items():
                speed = spread(runs, speed_of(key))
                quality = spread(runs, metric_of(headline))
                if speed is not None and quality is not None:
                    points.append((approach, speed.mean, quality.mean))
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
