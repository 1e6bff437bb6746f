"""Tracking in MLflow (``--track mlflow``): each comparison logged as a parent MLflow run, each of its rows as a child.

MLflow is the ``[mlflow]`` extra. The tracker is a plugin of the event hooks, as
:class:`harness.report_terminal.TerminalReporter` is; the runner knows nothing of it. Where it logs is MLflow's own
choice: ``MLFLOW_TRACKING_URI`` (else MLflow's default), in the experiment ``MLFLOW_EXPERIMENT_ID`` or
``MLFLOW_EXPERIMENT_NAME`` names (else MLflow's Default experiment).

- The parent run opens when the comparison starts (``harness_compare_started``). At its end it gets the data hashes
  as tags and, as artifacts, the comparison as JSON (``comparison.json``), its plots (``plots/``, drawn with
  :func:`harness.report_plots.write_plots` into the comparison's directory of the store, where ``harness compare``
  draws them too) and the page ``harness report --html`` would write (``report.html``).
- A row's child run opens when the run starts; each training log line is logged as it comes, as step metrics
  (``train/loss``, ``train/eval_f1_weighted``, ...). When the run finishes: its settings as params (secret settings
  never: they are left out, not even as ``<secret>``), its scalar metrics, ``speed/...``, ``memory/...`` and the
  plan's ``estimate/...`` (:mod:`harness.estimate`), tags
  with its harness run id, both identities (``harness.training_key``, ``harness.measurement_key``) and the data
  hashes, and its stored ``record.json``, ``predictions.jsonl``, ``train_log.jsonl`` (and ``error.txt``) as
  artifacts. When the comparison ends, each headline metric's 95% interval ends (``accuracy_ci_low``,
  ``accuracy_ci_high``).
- A row reused from the store is logged once: where the experiment already has a run tagged with its harness run
  id, the comparison gets a child with tags only (``harness.reused_run_id``, ``harness.reused_mlflow_run_id``)
  that points to it, and nothing of the run is logged again.
- MLflow failing (a server down, a refused request) costs one warning line, and tracking is off for the rest of the
  command; the comparison goes on unchanged. MLflow's HTTP retries are cut to seconds unless the environment sets
  them (:data:`HTTP_DEFAULTS`).
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pluggy

from harness.errors import UserError
from harness.redaction import SECRET
from harness.types import Comparison, RunRecord

hookimpl = pluggy.HookimplMarker("harness")

TRACKERS = ("mlflow",)  # what --track takes

# MLflow retries a request 7 times with a growing backoff (minutes against a server that is down) and waits 120 s
# for an answer; a tracker must not hold a comparison up that long. Set in the environment, the user's values win.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    # MLflow prints two lines to stdout each time a run ends, amid the table; the tracker prints one of its own.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
PARAM_LIMIT = 6000  # MLflow's longest param value
TAG_LIMIT = 8000  # and tag value
BATCH = 100  # params or tags per log_batch request (metrics: 1000)
RUN_TAG = "harness.run_id"  # on the one MLflow run that holds a harness run's figures


def check_tracker(name: str | None) -> None:
    """The tracker ``--track`` names can run here: MLflow missing is a :class:`UserError` naming the extra. Cheap
    and without the store, so a command can check it before it prints or creates anything."""
    if name is None:
        return
    if name not in TRACKERS:  # argparse's choices check it first; a caller of this function may not
        raise UserError(f"expected one of {', '.join(TRACKERS)}, got {name!r}", where="--track")
    try:
        import mlflow.tracking  # noqa: F401  (the client is made when a comparison starts)
    except ImportError:
        raise UserError("--track mlflow needs MLflow: pip install 'harness-compare[mlflow]'", where="--track") from None


def track(name: str | None, plugins: Any, store: Any) -> None:
    """Register the tracker ``--track`` names (None: none) as a listener of the event hooks, after
    :func:`check_tracker`."""
    check_tracker(name)
    if name is None:
        return
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    plugins.pm.register(MlflowTracker(store), name="mlflow-tracker")


class MlflowTracker:
    """Logs each comparison as a parent MLflow run and its rows as child runs, through an ``MlflowClient``."""

    def __init__(self, store: Any):
        self.client: Any = None  # made when the first comparison starts: MLflow's default local store is a file
        self.store = store
        self.on = True
        self._lock = threading.Lock()  # a grid on Ray reports its runs from several threads
        self._experiment: str | None = None
        self._parent: str | None = None  # the MLflow run of the comparison running now
        self._children: dict[str, str] = {}  # harness run id -> the MLflow run this comparison logged it in
        self._steps: dict[str, int] = {}  # harness run id -> training log lines logged

    @hookimpl
    def harness_compare_started(self, comparison: Comparison) -> None:
        self._safely(self._open_comparison, comparison)

    @hookimpl
    def harness_run_started(self, run: RunRecord) -> None:
        self._safely(self._open_run, run)

    @hookimpl
    def harness_training_log(self, run: RunRecord, entry: dict[str, Any]) -> None:
        self._safely(self._log_line, run, entry)

    @hookimpl
    def harness_run_finished(self, run: RunRecord) -> None:
        self._safely(self._close_run, run)

    @hookimpl(trylast=True)  # after the table is printed: the plots and the page are drawn, then logged
    def harness_compare_finished(self, comparison: Comparison) -> None:
        self._safely(self._close_comparison, comparison)

    def _safely(self, step: Callable[..., None], *args: Any) -> None:
        """Do ``step`` unless tracking is off; an MLflow error turns it off with one warning line."""
        with self._lock:
            if not self.on:
                return
            try:
                step(*args)
            except Exception as exc:
                self.on = False
                message = " ".join(str(exc).split()) or type(exc).__name__
                if len(message) > 300:  # a refused connection's reason comes last, after the request and the retries
                    message = f"{message[:140]} … {message[-140:]}"
                print(
                    f"harness: warning: mlflow: {message} (tracking is off for the rest of this command; "
                    "the comparison goes on)",
                    file=sys.stderr,
                )

    # The comparison: the parent run.

    def _open_comparison(self, comparison: Comparison) -> None:
        if self.client is None:
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient()
        if self._experiment is None:
            self._experiment = self._experiment_id()
        tags = {
            "harness.comparison_id": comparison.comparison_id,
            "harness.spec": comparison.spec,
            "harness.metrics": ",".join(comparison.metrics),
        }
        run = self.client.create_run(self._experiment, tags=tags, run_name=comparison.comparison_id)
        self._parent, self._children, self._steps = run.info.run_id, {}, {}

    def _close_comparison(self, comparison: Comparison) -> None:
        from harness.files import write_json
        from harness.html import write_html
        from harness.report_plots import PLOTS_FILE, write_plots
        from harness.store.records import comparison_to_dict

        parent = self._parent
        if parent is None:
            return
        intervals = comparison.statistics.get("intervals") or {}
        for run_id, child in self._children.items():
            ends = {
                f"{metric}_ci_{end}": interval[end]
                for metric, interval in (intervals.get(run_id) or {}).items()
                for end in ("low", "high")
            }
            self._log(child, metrics=ends)
        hashes = {
            "harness.train_hash": ",".join(dict.fromkeys(r.train_hash for r in comparison.runs if r.train_hash)),
            "harness.test_hash": ",".join(dict.fromkeys(r.test_hash for r in comparison.runs if r.test_hash)),
        }
        self._log(parent, tags={key: value for key, value in hashes.items() if value})
        folder = self.store.root / "comparisons" / comparison.comparison_id
        plots = write_plots(comparison, folder, self.store)
        for name in [*plots, PLOTS_FILE] if plots else []:
            self.client.log_artifact(parent, str(folder / name), "plots")
        with tempfile.TemporaryDirectory(prefix="harness-mlflow-") as scratch:
            page, record = Path(scratch) / "report.html", Path(scratch) / "comparison.json"
            write_html(page, comparison, self.store, plots)
            write_json(record, comparison_to_dict(comparison))  # as --json writes it
            self.client.log_artifact(parent, str(page))
            self.client.log_artifact(parent, str(record))
        self.client.set_terminated(parent, "FINISHED")  # a failed row is a FAILED child; the comparison finished
        self._parent = None
        print(f"mlflow: run {parent} of experiment {self._experiment} at {self.client.tracking_uri}", flush=True)

    def _experiment_id(self) -> str:
        """The experiment MLflow's own variables name, created if it is new; else MLflow's Default (id 0)."""
        if os.environ.get("MLFLOW_EXPERIMENT_ID"):
            return os.environ["MLFLOW_EXPERIMENT_ID"]
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME")
        if not name:
            return "0"
        experiment = self.client.get_experiment_by_name(name)
        return experiment.experiment_id if experiment is not None else self.client.create_experiment(name)

    # A row: a child run.

    def _child(self, run: RunRecord, name: str, tags: dict[str, str]) -> str:
        tags = {
            "mlflow.parentRunId": self._parent or "",
            "harness.approach": run.approach,
            "harness.spec": run.spec,
            "harness.seed": str(run.seed),
            **tags,
        }
        return self.client.create_run(
            self._experiment, tags={k: v for k, v in tags.items() if v}, run_name=name
        ).info.run_id

    def _open_run(self, run: RunRecord) -> None:
        if self._parent is None:
            return
        self._children[run.run_id] = self._child(run, _run_name(run), _run_tags(run))
        self._steps[run.run_id] = 0
        self._log_lines(run)  # a killed run that resumes brings its log up to the checkpoint

    def _log_line(self, run: RunRecord, entry: dict[str, Any]) -> None:
        if run.run_id in self._children:
            self._log_lines(run)

    def _log_lines(self, run: RunRecord) -> None:
        """The run's training log lines not logged yet, as step metrics."""
        done = self._steps.get(run.run_id, 0)
        stamp = _now()
        metrics = [
            (f"train/{key}", value, stamp, int(entry.get("step") or 0))
            for entry in run.train_log[done:]
            for key, value in entry.items()
            if key != "step" and _number(value)
        ]
        self._log(self._children[run.run_id], steps=metrics)
        self._steps[run.run_id] = len(run.train_log)

    def _close_run(self, run: RunRecord) -> None:
        if self._parent is None:
            return
        if run.status == "reused":
            logged = self._children.get(run.run_id) or self._logged_before(run.run_id)
            if logged is not None:
                self._link(run, logged)
                return
        if run.run_id not in self._children:  # reused but never logged here, or failed before it started
            self._children[run.run_id] = self._child(run, _run_name(run), _run_tags(run))
        child = self._children[run.run_id]
        self._log_lines(run)  # a re-measured run's log is its model's, taken whole
        params = {"seed": run.seed, "random_weights": run.random_weights, "n_train": run.n_train}
        params.update(n_validation=run.n_validation, n_test=run.n_test)
        params.update({key: value for key, value in run.settings.items() if value != SECRET})
        metrics = {key: value for key, value in run.metrics.items() if _number(value)}
        for group, figures in (("speed", run.speed), ("memory", run.memory), ("estimate", run.estimate)):
            for key, value in figures.items():
                if isinstance(value, dict):  # train_phases: load, prepare, train_loop, ...
                    metrics.update({f"{group}/{key}.{k}": v for k, v in value.items() if _number(v)})
                elif _number(value):
                    metrics[f"{group}/{key}"] = value
        tags = {**_run_tags(run), "harness.status": run.status, "harness.error": run.error or ""}
        self._log(child, params=params, metrics=metrics, tags={k: v for k, v in tags.items() if v})
        folder = self.store.run_dir(run.run_id)
        for name in ("record.json", "predictions.jsonl", "train_log.jsonl", "error.txt"):
            if (folder / name).is_file():
                self.client.log_artifact(child, str(folder / name))
        self.client.set_terminated(child, "FAILED" if run.status == "failed" else "FINISHED")

    def _logged_before(self, run_id: str) -> str | None:
        """The MLflow run of this experiment that holds the harness run ``run_id``, if one does."""
        found = self.client.search_runs(
            [self._experiment], filter_string=f"tags.`{RUN_TAG}` = '{run_id}'", max_results=1
        )
        return found[0].info.run_id if found else None

    def _link(self, run: RunRecord, logged: str) -> None:
        """A reused row: a child of this comparison with tags only, pointing to the MLflow run that holds it."""
        tags = {
            "harness.status": "reused",
            "harness.reused_run_id": run.run_id,
            "harness.reused_mlflow_run_id": logged,
            "mlflow.note.content": f"Reused harness run {run.run_id}: its settings, metrics and artifacts are "
            f"in MLflow run {logged}, logged once.",
        }
        child = self._child(run, f"{_run_name(run)} (reused)", tags)
        self.client.set_terminated(child, "FINISHED")

    def _log(
        self,
        run_id: str,
        params: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
        steps: list[tuple[str, Any, int, int]] | None = None,
    ) -> None:
        """Params, metrics (at step 0) and tags, and ``steps`` (key, value, timestamp, step), in as few
        ``log_batch`` requests as MLflow's limits allow."""
        from mlflow.entities import Metric, Param, RunTag

        stamp = _now()
        param_list = [Param(_key(k), _text(v, PARAM_LIMIT)) for k, v in (params or {}).items()]
        tag_list = [RunTag(k, _text(v, TAG_LIMIT)) for k, v in (tags or {}).items()]
        metric_list = [Metric(_key(k), float(v), stamp, 0) for k, v in (metrics or {}).items()]
        metric_list += [Metric(_key(k), float(v), t, s) for k, v, t, s in steps or []]
        for start in range(0, len(param_list), BATCH):
            self.client.log_batch(run_id, params=param_list[start : start + BATCH])
        for start in range(0, len(tag_list), BATCH):
            self.client.log_batch(run_id, tags=tag_list[start : start + BATCH])
        for start in range(0, len(metric_list), 10 * BATCH):
            self.client.log_batch(run_id, metrics=metric_list[start : start + 10 * BATCH])


def _run_name(run: RunRecord) -> str:
    return f"{run.approach} seed {run.seed}"


def _run_tags(run: RunRecord) -> dict[str, str]:
    """What a row's MLflow run is known by: its harness run id, both identities, the data it ran on."""
    return {
        RUN_TAG: run.run_id,
        "harness.training_key": str(run.training.get("key") or ""),
        "harness.measurement_key": str(run.measurement.get("key") or ""),
        "harness.trained_in": str(run.training.get("trained_in") or ""),
        "harness.train_hash": run.train_hash,
        "harness.test_hash": run.test_hash,
    }


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _key(key: str) -> str:
    """A name MLflow takes: letters, digits, ``_ - . / :`` and spaces."""
    return re.sub(r"[^\w./\- :]", "_", key)


def _text(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _now() -> int:
    return int(time.time() * 1000)
