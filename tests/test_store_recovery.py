"""A finished run is never lost: read-only stores refused before training, killed runs resumed, a corrupt
index rebuilt, two identical compares at once sharing one run. The real CLI in real processes, killed for real."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import bert_args, make_cli

FAST = ["--spec", "agnews", "--limit-train", "240", "--limit-test", "40", "--latency-samples", "3"]


def spawn(plugin_site: Path, cwd: Path, *args: str) -> subprocess.Popen:
    """``harness`` in a session of its own, so that killing the group kills its unit processes too."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_site), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-m", "harness", *args],
        cwd=cwd,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_when(process: subprocess.Popen, ready, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"finished before it could be killed: {process.communicate()}"
        assert time.monotonic() < deadline, "never got there"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one line a refused command prints (the test site's deliberately broken plugin adds a warning)."""
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if not line.startswith("harness: plugin 'broken-import'")]
    return line


def partials(store: Path) -> list[Path]:
    return sorted((store / "runs").glob("*.partial"))


def only_run(path: Path) -> dict:
    (run,) = json.loads(path.read_text())["runs"]
    return run


def test_killed_while_training_resumes_from_its_last_checkpoint(tmp_path, plugin_site, tiny_bert, ag_news_data):
    # 12 epochs of 2 steps, a checkpoint every 8: killed once the first one is on disk. The default
    # launcher: the whole process group (the compare and its train process) dies.
    args = [
        "compare",
        "--plugins",
        "bert",
        "--data",
        ag_news_data,
        *FAST,
        "--limit-train",
        "120",
        *bert_args(tiny_bert, "num_train_epochs=12", "eval_steps=8"),
    ]
    store = tmp_path / ".harness"
    process = spawn(plugin_site, tmp_path, *args)
    kill_when(process, lambda: any(store.glob("runs/*.partial/artifact/checkpoints/checkpoint-*/trainer_state.json")))
    (killed,) = partials(store)
    assert process.returncode == -signal.SIGKILL

    # Resumed inline: the launcher is not part of the training identity (and it saves two process starts).
    result = make_cli(plugin_site, tmp_path)(*args, "--launcher", "inline", "--json", "out.json")
    assert result.returncode == 0, result.stderr
    run = only_run(tmp_path / "out.json")
    assert run["status"] == "ok" and run["training"]["trained_in"] == run["run_id"]
    resumed = run["training"]["resumed"]
    assert resumed["run"] == run["run_id"] == killed.name.removesuffix(".partial")  # it goes on as itself
    step = int(resumed["from"].removeprefix("checkpoint-"))
    assert step >= 8 and step % 8 == 0
    logged = [entry["step"] for entry in run["train_log"]]
    # One log: the killed part's lines up to its checkpoint, then the resumed part's, no step twice.
    losses = [e["step"] for e in run["train_log"] if "loss" in e]
    assert losses == sorted(set(losses)) and min(logged) <= step < max(logged) == 24
    assert "resumed" in result.stdout and resumed["from"] in result.stdout
    assert partials(store) == [] and not (store / "runs" / run["run_id"] / "artifact" / "checkpoints").exists()


def test_killed_after_training_measures_the_finished_model_without_training_again(
    tmp_path, plugin_site, tiny_bert, ag_news_data
):
    # Killed as soon as training has finished: the measure process is still starting (importing torch).
    args = ["compare", "--plugins", "bert", "--data", ag_news_data, *FAST, *bert_args(tiny_bert)]
    store = tmp_path / ".harness"
    process = spawn(plugin_site, tmp_path, *args)
    kill_when(process, lambda: any(store.glob("runs/*.partial/artifact/train_result.json")))
    (killed,) = partials(store)
    trained = json.loads((killed / "artifact" / "train_result.json").read_text())

    result = make_cli(plugin_site, tmp_path)(*args, "--launcher", "inline", "--json", "out.json")
    assert result.returncode == 0, result.stderr
    run = only_run(tmp_path / "out.json")
    assert run["status"] == "ok" and run["training"]["resumed"] == {
        "run": killed.name.removesuffix(".partial"),
        "from": "finished training",
    }
    assert run["speed"]["train_seconds"] == trained["seconds"]  # the killed run's training figures, kept
    assert run["speed"]["train_phases"] == trained["phases"] and "finished training" in result.stdout
    assert (store / "runs" / run["run_id"] / "artifact" / "artifact.json").is_file() and partials(store) == []


def test_two_identical_compares_at_once_train_once(tmp_path, plugin_site, tiny_bert, ag_news_data):
    args = [
        "compare",
        "--plugins",
        "bert",
        "--data",
        ag_news_data,
        *FAST,
        *bert_args(tiny_bert),
        "--launcher",
        "inline",
    ]
    processes = [spawn(plugin_site, tmp_path, *args, "--json", f"{i}.json") for i in (1, 2)]
    outputs = [p.communicate(timeout=300) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    runs = [only_run(tmp_path / f"{i}.json") for i in (1, 2)]
    assert sorted(run["status"] for run in runs) == ["ok", "reused"]
    assert runs[0]["run_id"] == runs[1]["run_id"]
    assert any("waiting for it to finish" in stderr for _, stderr in outputs)
    assert len(list((tmp_path / ".harness" / "runs").iterdir())) == 1


@pytest.fixture(scope="module")
def naive_made(tmp_path_factory, plugin_site, ag_news_data):
    """One naive-bayes comparison made by the CLI, once for the module: its folder, command and output."""
    folder = tmp_path_factory.mktemp("naive")
    args = ["compare", "--plugins", "naive-bayes", "--data", ag_news_data, *FAST]
    result = make_cli(plugin_site, folder)(*args, "--json", "first.json")
    assert result.returncode == 0, result.stderr
    return folder, args, json.loads((folder / "first.json").read_text())


@pytest.fixture
def naive_store(naive_made, tmp_path, plugin_site):
    """A store holding one naive-bayes comparison (a copy of the module's, each test damaging its own), and the
    command that made it."""
    folder, args, first = naive_made
    shutil.copytree(folder / ".harness", tmp_path / ".harness")
    return tmp_path / ".harness", make_cli(plugin_site, tmp_path), args, first


def test_a_corrupt_index_is_one_line_and_store_check_rebuilds_it(naive_store):
    store, cli, args, first = naive_store
    (store / "runs.db").write_bytes(b"this is not a database" * 100)
    for wal in ("runs.db-wal", "runs.db-shm"):
        (store / wal).unlink(missing_ok=True)
    line = error_line(cli(*args))  # tests/test_bad_input.py: one line for compare and report alike
    assert line.startswith(f"harness: error: {Path('.harness') / 'runs.db'}: not a usable results index")
    assert "`harness store check`" in line

    checked = cli("store", "check")
    assert checked.returncode == 0, checked.stderr
    (run,) = first["runs"]
    assert f"indexed run {run['run_id']}" in checked.stdout and "moved to runs.db.corrupt-" in checked.stdout
    assert f"indexed comparison {first['comparison_id']}" in checked.stdout
    assert list(store.glob("runs.db.corrupt-*"))
    report = cli("report", "--json", "report.json")
    assert report.returncode == 0, report.stderr
    assert json.loads((store.parent / "report.json").read_text())["runs"][0]["run_id"] == run["run_id"]
    assert cli(*args, "--json", "again.json").returncode == 0
    assert only_run(store.parent / "again.json")["status"] == "reused"  # the rebuilt index finds it
    assert cli("store", "check").stdout.endswith("nothing to fix\n")


def test_a_lost_index_row_is_found_again_by_store_check(naive_store):
    store, cli, args, first = naive_store
    (run,) = first["runs"]
    import sqlite3

    with sqlite3.connect(store / "runs.db") as db:
        db.execute("DELETE FROM runs")
    checked = cli("store", "check")
    assert checked.returncode == 0 and f"indexed run {run['run_id']} (naive-bayes, ok)" in checked.stdout
    shutil.rmtree(store / "runs" / run["run_id"])
    assert f"dropped run {run['run_id']}" in cli("store", "check").stdout


@contextmanager
def read_only(path: Path):
    """``path`` cannot be written, even by root: a read-only bind mount as root, no write permission otherwise."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(mode & ~0o222)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(path), str(path)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"root, and no read-only bind mount here: {mounted.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", str(path)], check=True)


@pytest.mark.parametrize("target", ["store", "runs.db"])
def test_a_read_only_store_is_refused_before_anything_trains(naive_store, target, tiny_bert, ag_news_data):
    store, cli, _, _ = naive_store
    path = store if target == "store" else store / "runs.db"
    before = sorted(p.name for p in (store / "runs").iterdir())
    with read_only(path):
        result = cli("compare", "--plugins", "bert", "--data", ag_news_data, *FAST, *bert_args(tiny_bert))
    where = Path(".harness") if target == "store" else Path(".harness") / "runs.db"
    reason = "read-only file system" if os.geteuid() == 0 else "permissions"
    assert error_line(result) == f"harness: error: {where}: cannot be written ({reason}); nothing was trained"
    assert sorted(p.name for p in (store / "runs").iterdir()) == before


def test_a_run_killed_in_epoch_two_resumes_as_the_same_run(tmp_path, plugin_site, tiny_bert, ag_news_data):
    """Killed at a checkpoint in the middle of epoch 2, then resumed after another compare on the same store:
    the same predictions to the last digit of every probability and the same losses as the run left alone.
    108 training examples in batches of 16 are 7 steps an epoch, 28 in 4 epochs; a checkpoint every 9 steps
    falls inside an epoch, where the resumed run must skip the batches it saw in the same order it saw them."""
    args = [
        "compare",
        "--plugins",
        "bert",
        "--data",
        ag_news_data,
        *FAST,
        "--limit-train",
        "120",
        *bert_args(
            tiny_bert, "num_train_epochs=4", "eval_steps=9", "logging_steps=1", "per_device_train_batch_size=16"
        ),
    ]
    whole = make_cli(plugin_site, tmp_path)(*args, "--store", "whole", "--json", "whole.json", "--launcher", "inline")
    assert whole.returncode == 0, whole.stderr
    store = tmp_path / ".harness"
    process = spawn(plugin_site, tmp_path, *args)
    kill_when(process, lambda: any(store.glob("runs/*.partial/artifact/checkpoints/checkpoint-9/trainer_state.json")))
    (killed,) = partials(store)

    other = make_cli(plugin_site, tmp_path)("compare", "--plugins", "naive-bayes", "--data", ag_news_data, *FAST)
    assert other.returncode == 0 and partials(store) == [killed]  # another compare deletes nothing resumable

    result = make_cli(plugin_site, tmp_path)(*args, "--json", "out.json", "--launcher", "inline")
    assert result.returncode == 0, result.stderr
    run, alone = only_run(tmp_path / "out.json"), only_run(tmp_path / "whole.json")
    assert run["run_id"] == killed.name.removesuffix(".partial")
    step = int(run["training"]["resumed"]["from"].removeprefix("checkpoint-"))
    assert step % 9 == 0 and step % 7 != 0  # inside an epoch
    assert (store / "runs" / run["run_id"] / "predictions.jsonl").read_bytes() == (
        tmp_path / "whole" / "runs" / alone["run_id"] / "predictions.jsonl"
    ).read_bytes()
    losses = [(e["step"], e["loss"]) for e in run["train_log"] if "loss" in e]
    assert losses == [(e["step"], e["loss"]) for e in alone["train_log"] if "loss" in e]
    assert run["model"]["train_loss"] == pytest.approx(alone["model"]["train_loss"], rel=1e-9)
    assert run["model"]["best_checkpoint"] == alone["model"]["best_checkpoint"]
    # Seconds add up across the kill: the killed part's time up to its checkpoint is counted, once.
    assert run["training"]["resumed"]["seconds_before_kill"] > 0
    assert run["speed"]["train_seconds"] > run["training"]["resumed"]["seconds_before_kill"]
    assert run["speed"]["train_samples"] == alone["speed"]["train_samples"]


def test_a_resumed_log_takes_the_lines_a_kill_lost_from_the_checkpoints_history(tmp_path):
    """The parent writes a log line when it reads it from the unit: a kill can lose lines the unit had logged
    before saving a checkpoint. Resuming from that checkpoint, the lines come from the Trainer's history in
    it (``log_history``: the callback's fields and the step), in the callback's form; lines after the
    checkpoint's step are dropped (they are trained and logged again)."""
    from harness.runner import _log_until

    def train(step):
        return {"loss": round(2.0 - step / 10, 3), "grad_norm": 1.5, "learning_rate": 1e-3, "epoch": step / 4}

    history = [{**train(s), "step": s} for s in range(1, 7)]
    history.insert(4, {"eval_loss": 1.2, "eval_f1_weighted": 0.5, "epoch": 1.0, "step": 4})
    checkpoint = tmp_path / "run.partial" / "artifact" / "checkpoints" / "checkpoint-6"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 6, "log_history": history}))
    # What the callback wrote for every line: the step, the epoch, the Trainer's logs; an evaluation also
    # carries the last training loss.
    callback = [{"step": s, "epoch": s / 4, **train(s)} for s in range(1, 7)]
    callback.insert(
        4, {"step": 4, "epoch": 1.0, "eval_loss": 1.2, "eval_f1_weighted": 0.5, "train_loss": train(4)["loss"]}
    )
    # The file has the first two lines and one of step 8, after the checkpoint: steps 3 to 6 were lost.
    log = tmp_path / "run.partial" / "train_log.jsonl"
    log.write_text("".join(json.dumps(e) + "\n" for e in [*callback[:2], {"step": 8, "epoch": 2.0, **train(8)}]))
    assert _log_until(log, "checkpoint-6") == callback
    assert _log_until(log, "finished training")[-1]["step"] == 8  # a finished run keeps its whole log
