"""``--track mlflow``: a two-row comparison logged to a real MLflow server (started here, SQLite backend, artifacts
served by it) and read back through MLflow's own client; a reused row logged once; a server that is not there is one
warning line; MLflow missing is one error line naming the extra. The real CLI, a tiny BERT, the docs' naive-bayes
plugin with a secret setting added."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import bert_args, cli_env

FAST = ["--limit-train", "64", "--limit-test", "40", "--latency-samples", "3"]
SECRET_VALUE = "sk-mlflow-test-0f9e8d7c6b5a"  # a key keyed-bayes is given: it must reach MLflow nowhere

KEYED_BAYES = '''
"""keyed-bayes: the docs' naive-bayes with a secret setting, as an approach that takes an API key would have."""

from harness import hookimpl, setting
from harness_naive_bayes import BayesSettings, NaiveBayes


class KeyedSettings(BayesSettings):
    api_key: str = setting("", secret=True, help="a key: accepted, never recorded")


class KeyedBayes(NaiveBayes):
    name = "keyed-bayes"
    settings = KeyedSettings


@hookimpl
def harness_register_approaches(register):
    register(KeyedBayes())
'''


def stderr_lines(result: subprocess.CompletedProcess) -> list[str]:
    """What the command said on stderr, but the test plugins' own line about the plugin that cannot be imported."""
    return [line for line in result.stderr.splitlines() if "broken-import" not in line]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def keyed_cli(plugin_site: Path, tmp_path: Path):
    """The real CLI with keyed-bayes installed (a distribution of its own, beside the test plugins)."""
    site = tmp_path / "keyed-site"
    site.mkdir()
    (site / "harness_keyed_bayes.py").write_text(KEYED_BAYES, encoding="utf-8")
    dist = site / "harness_keyed_bayes-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: harness-keyed-bayes\nVersion: 0.1\n", encoding="utf-8")
    (dist / "entry_points.txt").write_text("[harness]\nkeyed-bayes = harness_keyed_bayes\n", encoding="utf-8")
    base = cli_env(plugin_site)
    work = tmp_path / "work"
    work.mkdir()

    def run(*args: str, env: dict[str, str] | None = None, first: Path | None = None) -> subprocess.CompletedProcess:
        """``first``: a directory put before every other on PYTHONPATH."""
        path = [str(first)] if first else []
        full = {**base, "PYTHONPATH": os.pathsep.join([*path, str(site), base["PYTHONPATH"]]), **(env or {})}
        return subprocess.run(
            [sys.executable, "-m", "harness", *args], cwd=work, env=full, capture_output=True, text=True, timeout=600
        )

    return run, work


@pytest.fixture
def mlflow_server(tmp_path: Path):
    """A real ``mlflow server`` on 127.0.0.1, its runs in SQLite and its artifacts in a directory it serves."""
    pytest.importorskip("mlflow")
    port = free_port()
    root = tmp_path / "mlflow"
    root.mkdir()
    log = (root / "server.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'runs.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=root,
        stdout=log,
        stderr=subprocess.STDOUT,
        # MLflow's job runner (a pool of consumer processes) is for its GenAI features: not needed to log runs.
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        start_new_session=True,  # the server's workers are a process group of their own, stopped together
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (root / "server.log").read_text()
            assert time.monotonic() < deadline, "mlflow server did not answer in 120 s"
            time.sleep(0.3)
        yield url, root
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def compare_args(tiny_bert: Path, ag_news_data: str, json_file: str) -> list[str]:
    return [
        "compare",
        "--plugins",
        "bert,keyed-bayes",
        "--spec",
        "agnews",
        "--data",
        ag_news_data,
        *FAST,
        *bert_args(tiny_bert, "per_device_train_batch_size=16"),
        "--set",
        f"keyed-bayes.api_key={SECRET_VALUE}",
        "--track",
        "mlflow",
        "--json",
        json_file,
    ]


@pytest.mark.mlflow
def test_a_comparison_is_a_parent_run_with_a_child_per_row_and_a_reused_row_is_logged_once(
    mlflow_server, keyed_cli, tiny_bert, ag_news_data
):
    from mlflow.tracking import MlflowClient

    url, server_root = mlflow_server
    run, work = keyed_cli
    env = {"MLFLOW_TRACKING_URI": url, "MLFLOW_EXPERIMENT_NAME": "harness-tests"}
    result = run(*compare_args(tiny_bert, ag_news_data, "first.json"), env=env)
    assert result.returncode == 0, result.stderr
    assert "mlflow" not in result.stderr  # no warning: every request answered
    first = json.loads((work / "first.json").read_text())
    rows = {r["approach"]: r for r in first["runs"]}
    assert [r["status"] for r in first["runs"]] == ["ok", "ok"]

    client = MlflowClient(url)
    experiment = client.get_experiment_by_name("harness-tests")
    assert experiment is not None
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`harness.comparison_id` != ''")
    assert parent.data.tags["harness.comparison_id"] == first["comparison_id"]
    assert parent.info.status == "FINISHED" and parent.info.run_name == first["comparison_id"]
    assert f"mlflow: run {parent.info.run_id} of experiment {experiment.experiment_id} at {url}" in result.stdout
    assert parent.data.tags["harness.test_hash"] == rows["bert"]["test_hash"] == rows["keyed-bayes"]["test_hash"]
    assert parent.data.tags["harness.train_hash"] == rows["bert"]["train_hash"]
    parent_files = {f.path for f in client.list_artifacts(parent.info.run_id)}
    assert {"comparison.json", "report.html", "plots"} <= parent_files
    downloaded = Path(client.download_artifacts(parent.info.run_id, "comparison.json", str(work / "parent")))
    assert json.loads(downloaded.read_text()) == first  # what --json wrote
    page = Path(client.download_artifacts(parent.info.run_id, "report.html", str(work / "parent"))).read_text()
    assert page.startswith("<!DOCTYPE html>") and first["comparison_id"] in page and "data:image/png" in page
    plots = {f.path for f in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/training-bert.png", "plots/confusion-keyed-bayes.png", "plots/plots.json"} <= plots

    children = client.search_runs(
        [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'", order_by=["start_time"]
    )
    assert [c.data.tags["harness.approach"] for c in children] == ["bert", "keyed-bayes"]
    intervals = first["statistics"]["intervals"]
    for child in children:
        record = rows[child.data.tags["harness.approach"]]
        tags, metrics, params = child.data.tags, child.data.metrics, child.data.params
        assert child.info.status == "FINISHED"
        assert tags["harness.run_id"] == record["run_id"]
        assert tags["harness.training_key"] == record["training"]["key"]
        assert tags["harness.measurement_key"] == record["measurement"]["key"]
        assert (tags["harness.train_hash"], tags["harness.test_hash"]) == (record["train_hash"], record["test_hash"])
        assert metrics["f1_weighted"] == pytest.approx(record["metrics"]["f1_weighted"])
        ends = intervals[record["run_id"]]["f1_weighted"]
        assert (metrics["f1_weighted_ci_low"], metrics["f1_weighted_ci_high"]) == pytest.approx(
            (ends["low"], ends["high"])
        )
        assert metrics["speed/predict_samples_per_s"] == pytest.approx(record["speed"]["predict_samples_per_s"])
        assert metrics["speed/latency_p95_ms"] == pytest.approx(record["speed"]["latency_p95_ms"])
        assert metrics["memory/predict_rss_peak_mb"] == pytest.approx(record["memory"]["predict_rss_peak_mb"])
        if tags["harness.approach"] == "bert":  # the plan's estimate, beside what was measured
            assert metrics["estimate/steps"] == record["estimate"]["steps"] > 0
        assert params["seed"] == "0" and params["n_test"] == "40"
        files = {f.path for f in client.list_artifacts(child.info.run_id)}
        assert {"record.json", "predictions.jsonl", "train_log.jsonl"} <= files
        stored = json.loads(Path(client.download_artifacts(child.info.run_id, "record.json", str(work))).read_text())
        assert stored["run_id"] == record["run_id"]
    bert, keyed = children
    assert bert.data.params["learning_rate"] == "0.001" and keyed.data.params["smoothing"] == "1.0"
    assert "api_key" not in keyed.data.params  # a secret setting is no param, not even as <secret>
    curve = client.get_metric_history(bert.info.run_id, "train/loss")
    assert len({point.step for point in curve}) > 1  # the training curve, one point per logging step
    assert [p.value for p in curve] == pytest.approx([e["loss"] for e in rows["bert"]["train_log"] if "loss" in e])

    # The same compare again: both rows are reused from the store, and MLflow gets a second parent whose children
    # point to the runs logged the first time. Nothing of the two runs is logged again.
    again = run(*compare_args(tiny_bert, ag_news_data, "again.json"), env=env)
    assert again.returncode == 0, again.stderr
    second = json.loads((work / "again.json").read_text())
    assert [r["status"] for r in second["runs"]] == ["reused", "reused"]
    (new_parent,) = client.search_runs(
        [experiment.experiment_id], f"tags.`harness.comparison_id` = '{second['comparison_id']}'"
    )
    links = client.search_runs(
        [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{new_parent.info.run_id}'", order_by=["start_time"]
    )
    assert [link.data.tags["harness.reused_mlflow_run_id"] for link in links] == [c.info.run_id for c in children]
    assert [link.data.tags["harness.reused_run_id"] for link in links] == [
        c.data.tags["harness.run_id"] for c in children
    ]
    assert all(not link.data.metrics and not link.data.params for link in links)
    for child in children:
        logged = client.search_runs(
            [experiment.experiment_id], f"tags.`harness.run_id` = '{child.data.tags['harness.run_id']}'"
        )
        assert [r.info.run_id for r in logged] == [child.info.run_id]
    assert len(client.get_metric_history(bert.info.run_id, "train/loss")) == len(curve)
    assert len(client.get_metric_history(bert.info.run_id, "f1_weighted")) == 1

    # harness grid logs each of its comparisons the same way.
    grid = run(
        "grid", "--spec", "agnews", "--plugins", "naive-bayes", "--data", ag_news_data, *FAST, "--track", "mlflow",
        "--json", "grid.json", env=env,
    )  # fmt: skip
    assert grid.returncode == 0, grid.stderr
    (comparison,) = json.loads((work / "grid.json").read_text())["comparisons"]
    (grid_parent,) = client.search_runs(
        [experiment.experiment_id], f"tags.`harness.comparison_id` = '{comparison['comparison_id']}'"
    )
    (grid_row,) = client.search_runs(
        [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{grid_parent.info.run_id}'"
    )
    assert grid_row.data.tags["harness.run_id"] == comparison["runs"][0]["run_id"]
    assert grid_row.data.metrics["accuracy"] == pytest.approx(comparison["runs"][0]["metrics"]["accuracy"])

    # The key reached MLflow nowhere: not its database, not an artifact it stores.
    stored = [server_root / "runs.db", *(p for p in (server_root / "artifacts").rglob("*") if p.is_file())]
    assert len(stored) > 10
    assert not [p for p in stored if SECRET_VALUE.encode() in p.read_bytes()]


def test_an_unreachable_tracking_server_is_one_warning_line_and_the_comparison_finishes(keyed_cli, ag_news_data):
    pytest.importorskip("mlflow")
    run, work = keyed_cli
    closed = free_port()  # nothing listens there
    start = time.monotonic()
    result = run(
        "compare",
        "--plugins",
        "naive-bayes",
        "--spec",
        "agnews",
        "--data",
        ag_news_data,
        *FAST,
        "--track",
        "mlflow",
        "--json",
        "out.json",
        env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{closed}"},
    )
    assert result.returncode == 0, result.stderr
    # MLflow's own retries would hold the compare up about four minutes; cut, they cost seconds (the compare itself
    # takes about half a minute on two busy cores).
    assert time.monotonic() - start < 120
    (line,) = stderr_lines(result)
    assert line.startswith(f"harness: warning: mlflow: API request to http://127.0.0.1:{closed}/"), line
    assert line.endswith("(tracking is off for the rest of this command; the comparison goes on)")
    assert "Connection refused" in line
    (row,) = json.loads((work / "out.json").read_text())["runs"]
    assert row["status"] == "ok" and row["metrics"]["accuracy"] > 0.3
    assert "naive-bayes" in result.stdout and "plots: " in result.stdout
    assert "mlflow: run" not in result.stdout


def test_track_without_mlflow_installed_is_one_line_naming_the_extra(keyed_cli, ag_news_data, tmp_path):
    run, work = keyed_cli
    missing = tmp_path / "no-mlflow"  # first on the path: `import mlflow` fails as it does where it is not installed
    (missing / "mlflow").mkdir(parents=True)
    (missing / "mlflow" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'mlflow'\", name='mlflow')\n", encoding="utf-8"
    )
    result = run(
        "compare",
        "--plugins",
        "naive-bayes",
        "--spec",
        "agnews",
        "--data",
        ag_news_data,
        *FAST,
        "--track",
        "mlflow",
        first=missing,
    )
    assert result.returncode == 2
    assert stderr_lines(result) == [
        "harness: error: --track: --track mlflow needs MLflow: pip install 'harness-compare[mlflow]'"
    ]
    assert result.stdout == "" and not (work / ".harness").exists()


def test_the_environment_chooses_mlflows_retries_where_it_sets_them(monkeypatch, tmp_path):
    """Unset, MLflow's HTTP retries and timeout are cut (its own would retry a server that is down for minutes);
    set, they are the user's."""
    pytest.importorskip("mlflow")
    from harness.plugins import load_plugins
    from harness.store import Store
    from harness.tracking import HTTP_DEFAULTS, track

    for name in HTTP_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "5")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # MLflow's default: a local store, made on first use
    monkeypatch.chdir(tmp_path)
    plugins = load_plugins(entry_points=False)
    track("mlflow", plugins, Store(tmp_path / "store"))
    assert plugins.pm.get_plugin("mlflow-tracker") is not None
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "5"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == HTTP_DEFAULTS["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "20"
    assert list(tmp_path.iterdir()) == []  # nothing written yet: no store, no MLflow database
