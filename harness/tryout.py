"""``harness try``: every approach of a stored comparison answering the text you type, side by side, with
its scores and latency; in the terminal (``--text``) or on a local web page (Gradio, the ``[try]`` extra, as
seed 002's demo).

The approaches are the runs of a comparison of the spec (default: its newest), each served from the store as
``harness bench --run`` serves it (:func:`harness.serving.load_stored_run`), so what answers is what was
measured. The page binds to 127.0.0.1 unless ``--host`` says otherwise, and makes no public share link unless
``--share`` asks for one.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

from harness.errors import UserError


@dataclass
class Row:
    name: str
    run_id: str
    plan: Any
    task: Any
    artifact: Any
    settings: dict[str, Any]


@dataclass
class Answer:
    approach: str
    answer: str
    scores: str
    latency_ms: float
    error: str = ""


def load_rows(
    plugins: Any, spec: Any, store: Any, comparison_id: str | None, overrides: dict[str, Any]
) -> tuple[str, list[Row]]:
    """The comparison's id and its finished runs made ready to serve (a run that failed is left out)."""
    from harness.planning import plan_settings
    from harness.serving import load_stored_run

    comparison_id = comparison_id or store.newest_comparison(spec.name)
    comparison = store.load_comparison(comparison_id) if comparison_id else None
    if comparison is None or comparison.spec != spec.name:
        raise UserError(
            f"no comparison of spec {spec.name!r} in {store.root}: run harness compare first"
            if comparison_id is None or comparison is None
            else f"comparison {comparison_id} is of spec {comparison.spec!r}, not {spec.name!r}",
            where="--comparison",
        )
    runs = [run for run in comparison.runs if run.status in ("ok", "reused")]
    if not runs:
        raise UserError(f"comparison {comparison.comparison_id} has no finished run to serve", where="--comparison")
    names = list(dict.fromkeys(run.approach for run in runs))
    plans = plan_settings(plugins, spec, names, overrides)
    rows: list[Row] = []
    for run in runs:
        if any(row.name == run.approach for row in rows):
            continue  # several seeds of one approach: the first one answers
        plan = plans[run.approach]
        task = spec.to_task(plan.prompt_row or plan.trainer)
        artifact, settings = load_stored_run(plugins, store, run.run_id, plan, task, overrides.get(run.approach))
        rows.append(Row(run.approach, run.run_id, plan, task, artifact, settings))
    return comparison.comparison_id, rows


def answer_all(plugins: Any, rows: list[Row], text: str) -> list[Answer]:
    """Each row's answer to ``text``, timed alone (batch 1), in the order of the comparison."""
    from harness.progress import SILENT
    from harness.types import Example

    answers = []
    for row in rows:
        example = Example(id="try", text=text)
        start = time.perf_counter()
        try:
            served = plugins.configured(row.plan.approach, row.settings, progress=SILENT)
            start = time.perf_counter()  # the answer alone is timed, not its settings' validation
            (prediction,) = served.predict(row.task, row.artifact, [example])
        except Exception as exc:  # one approach failing leaves the others' answers
            answers.append(
                Answer(
                    row.name,
                    "",
                    "",
                    (time.perf_counter() - start) * 1000,
                    f"{type(exc).__name__}: {exc}".splitlines()[0],
                )
            )
            continue
        seconds = time.perf_counter() - start
        answers.append(
            Answer(
                row.name,
                _answer_text(row.task, prediction),
                _scores_text(prediction),
                seconds * 1000,
                prediction.error or "",
            )
        )
    return answers


def _answer_text(task: Any, prediction: Any) -> str:
    if task.type == "extraction":
        if prediction.fields is None:
            return f"(no record) {prediction.raw or ''}".strip()
        return json.dumps({f: prediction.fields.get(f) for f in task.fields}, ensure_ascii=False)
    return prediction.label if prediction.label is not None else f"(no label) {prediction.raw or ''}".strip()


def _scores_text(prediction: Any) -> str:
    if not prediction.scores:
        return ""
    top = sorted(prediction.scores.items(), key=lambda item: -item[1])[:3]
    return ", ".join(f"{label} {p:.2f}" for label, p in top)


def terminal_table(answers: list[Answer], text: str) -> Any:
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    # Answers, errors and the text are shown as written: "[B]" or "pip install 'harness-compare[onnx]'" are no markup.
    table = Table(title=escape(f"harness try: {text if len(text) <= 80 else text[:77] + '...'}"))
    for column, justify in (("Approach", "left"), ("Answer", "left"), ("Scores", "left"), ("ms", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for a in answers:
        table.add_row(
            Text(a.approach),
            Text(a.error, style="red") if a.error else Text(a.answer),
            Text(a.scores),
            f"{a.latency_ms:.1f}",
        )
    return table


def gradio_module() -> Any:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError:
        raise UserError(
            "harness try's page needs Gradio: pip install 'harness-compare[try]' (harness try --text works without it)",
            where="try",
        ) from None
    return gradio


def page(plugins: Any, rows: list[Row], spec: Any, comparison_id: str) -> Any:
    """The Gradio page: a text box, a button, one row per approach with its answer, scores and latency."""
    gr = gradio_module()
    # System fonts: nothing is fetched from the internet to show the page.
    theme = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )
    headers = ["Approach", "Answer", "Scores", "Latency (ms)"]

    def run(text: str) -> list[list[Any]]:
        if not text.strip():
            return []
        return [
            [a.approach, a.answer if not a.error else f"error: {a.error}", a.scores, round(a.latency_ms, 1)]
            for a in answer_all(plugins, rows, text)
        ]

    kind = "labels" if rows[0].task.type == "classification" else "fields"
    names = rows[0].task.labels if kind == "labels" else rows[0].task.fields
    with gr.Blocks(title=f"harness try: {spec.name}", theme=theme, analytics_enabled=False) as demo:
        gr.Markdown(
            f"## harness try: {spec.name}\n{spec.description}\n\nComparison `{comparison_id}`: "
            f"{', '.join(row.name for row in rows)}. {kind.capitalize()}: {', '.join(names)}."
        )
        text = gr.Textbox(label="Text", lines=3, elem_id="try-text")
        button = gr.Button("Compare", variant="primary", elem_id="try-run")
        table = gr.Dataframe(headers=headers, label="Answers", elem_id="try-answers", interactive=False)
        button.click(run, inputs=text, outputs=table)
        text.submit(run, inputs=text, outputs=table)
    return demo
