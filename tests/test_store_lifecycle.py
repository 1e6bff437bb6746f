"""Never lose a run: a finishing run cannot be taken by another process's cleanup, killed work is kept until
the user removes it (`store gc`), `store check` repairs without deleting, a deleted run directory is one
warning and the run is made again, and a read-only store still reports. Real processes, real files."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import sqlite3
from pathlib import Path

import pytest

from conftest import make_cli
from harness.runner import new_id
from harness.store import Store
from harness.types import RunRecord
from test_store_recovery import FAST, only_run, partials, read_only


def _finish_many(root: str, prefix: str, count: int, done: multiprocessing.Queue) -> None:
    store = Store(Path(root))
    for _ in range(count):
        run_id = new_id(prefix)
        store.start_run(run_id, {"train_key": prefix, "measure_key": prefix})
        # Nothing resumable inside: exactly what every cleanup is allowed to remove, were it not held.
        store.finish_run(RunRecord(run_id=run_id, approach=prefix, spec="s", task_type="classification", status="ok"))
        done.put(run_id)


def _clean_until(root: str, stop: multiprocessing.Event) -> None:
    store = Store(Path(root))
    while not stop.is_set():
        store.remove_empty_partials()
        store.gc()
        store.check(remove_partials=True)


def test_a_finishing_run_is_never_taken_by_another_processs_cleanup(tmp_path):
    """Four processes finish 60 runs each while two others remove every .partial nobody holds, as fast as
    they can. Before the lock was held through the rename, cleanups took 44 of 320 such runs."""
    context = multiprocessing.get_context("spawn")
    done, stop = context.Queue(), context.Event()
    Store(tmp_path).check_writable()
    _ = Store(tmp_path).db
    cleaners = [context.Process(target=_clean_until, args=(str(tmp_path), stop)) for _ in range(2)]
    writers = [context.Process(target=_finish_many, args=(str(tmp_path), f"w{i}", 60, done)) for i in range(4)]
    for process in cleaners + writers:
        process.start()
    finished = [done.get(timeout=120) for _ in range(240)]
    for process in writers:
        process.join(timeout=60)
    stop.set()
    for process in cleaners:
        process.join(timeout=60)
    assert [p.exitcode for p in writers + cleaners] == [0] * 6

    store = Store(tmp_path)
    indexed = {row[0] for row in store.db.execute("SELECT run_id FROM runs")}
    assert indexed == set(finished)
    lost = [run_id for run_id in finished if not (tmp_path / "runs" / run_id / "record.json").is_file()]
    assert lost == []
    assert partials(tmp_path) == [] and not list((tmp_path / "runs").glob("*/lock"))


@pytest.fixture
def store_with_killed_runs(tmp_path, plugin_site, ag_news_data):
    """A store with one finished naive-bayes run, a killed run holding a checkpoint, one that finished
    training, and one killed before it had anything."""
    cli = make_cli(plugin_site, tmp_path)
    args = ["compare", "--plugins", "naive-bayes", "--data", ag_news_data, *FAST]
    assert cli(*args, "--json", "first.json").returncode == 0
    store = tmp_path / ".harness"
    runs = store / "runs"
    checkpoint = runs / "20260101-000000-bert-aaaaaa.partial" / "artifact" / "checkpoints" / "checkpoint-16"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text("{}")
    (checkpoint / "model.safetensors").write_bytes(b"\0" * 50_000)
    finished = runs / "20260101-000000-qwen-bbbbbb.partial" / "artifact"
    finished.mkdir(parents=True)
    (finished / "train_result.json").write_text("{}")
    (runs / "20260101-000000-bert-cccccc.partial").mkdir()
    return store, cli, args


def test_compare_keeps_killed_work_and_removes_only_what_holds_nothing(store_with_killed_runs):
    store, cli, args = store_with_killed_runs
    result = cli(*args, "--json", "again.json")  # a compare of another approach on the same store
    assert result.returncode == 0, result.stderr
    assert [p.name for p in partials(store)] == [
        "20260101-000000-bert-aaaaaa.partial",
        "20260101-000000-qwen-bbbbbb.partial",
    ]


def test_store_check_repairs_without_deleting_killed_work(store_with_killed_runs):
    store, cli, _ = store_with_killed_runs
    checked = cli("store", "check")
    assert checked.returncode == 0, checked.stderr
    assert len(partials(store)) == 3
    assert "3 killed runs kept to resume (`harness store gc` removes them)" in checked.stdout
    removed = cli("store", "check", "--remove-partials")
    assert removed.returncode == 0 and partials(store) == []
    assert (
        "removed 20260101-000000-bert-aaaaaa.partial, left by a killed run (killed run, checkpoint-16" in removed.stdout
    )


def test_store_gc_lists_what_it_frees_then_frees_it(store_with_killed_runs):
    store, cli, _ = store_with_killed_runs
    listed = cli("store", "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {row["run_id"]: row for row in json.loads(listed.stdout)}
    assert rows["20260101-000000-bert-aaaaaa"]["status"] == "killed: checkpoint-16"
    assert rows["20260101-000000-qwen-bbbbbb"]["status"] == "killed: finished training"
    assert rows["20260101-000000-bert-aaaaaa"]["bytes"] >= 50_000
    assert sum(row["status"] == "ok" for row in rows.values()) == 1
    assert "killed: checkpoint-16" in cli("store", "ls").stdout

    assert cli("store", "gc", "--older-than", "1", "--dry-run").stdout.startswith(f"{Path('.harness')}: 0 to remove")
    dry = cli("store", "gc", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert (
        "would remove .harness/runs/20260101-000000-bert-aaaaaa.partial (killed run, checkpoint-16, 48.8 KB)"
        in dry.stdout
    )
    assert "data cache" in dry.stdout and "(dry run: nothing removed)" in dry.stdout
    assert len(partials(store)) == 3 and list((store / "data").glob("*.json"))

    gone = cli("store", "gc")
    assert gone.returncode == 0 and "4 removed" in gone.stdout
    assert partials(store) == [] and not list((store / "data").glob("*.json"))
    assert json.loads(cli("store", "ls", "--json").stdout)[0]["status"] == "ok"  # finished runs are never gc'd


@pytest.mark.parametrize("value", ["-1", "soon", "nan"])
def test_store_gc_refuses_a_bad_age_and_changes_nothing(store_with_killed_runs, value):
    store, cli, _ = store_with_killed_runs
    result = cli("store", "gc", f"--older-than={value}")
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "broken-import" not in line]
    assert line.startswith("harness: error:") and "--older-than" in line
    assert len(partials(store)) == 3


def test_store_commands_on_a_folder_that_is_no_store_change_nothing(tmp_path, plugin_site):
    cli = make_cli(plugin_site, tmp_path)
    (tmp_path / "notes").mkdir()
    for command in (["check"], ["gc"], ["ls"]):
        result = cli("store", *command, "--store", "notes")
        assert result.returncode == 2 and "notes: no results store here" in result.stderr
    assert list((tmp_path / "notes").iterdir()) == []


def test_a_run_deleted_by_hand_is_one_warning_and_made_again(tmp_path, plugin_site, ag_news_data):
    cli = make_cli(plugin_site, tmp_path)
    args = ["compare", "--plugins", "naive-bayes", "--data", ag_news_data, *FAST]
    assert cli(*args, "--json", "first.json").returncode == 0
    first = only_run(tmp_path / "first.json")
    shutil.rmtree(tmp_path / ".harness" / "runs" / first["run_id"])
    again = cli(*args, "--json", "again.json")
    assert again.returncode == 0, again.stderr
    warnings = [line for line in again.stderr.splitlines() if first["run_id"] in line]
    assert len(warnings) == 1 and "not reused" in warnings[0]
    run = only_run(tmp_path / "again.json")
    assert run["status"] == "ok" and run["run_id"] != first["run_id"] and run["training"]["trained_in"] == run["run_id"]
    # The comparison that listed it still reports, the lost row said to be missing.
    report = cli("report", json.loads((tmp_path / "first.json").read_text())["comparison_id"])
    assert report.returncode == 0, report.stderr
    assert "missing" in report.stdout and "no stored run" in report.stdout


def test_store_check_reports_an_unreadable_record_it_indexes(tmp_path, plugin_site, ag_news_data):
    cli = make_cli(plugin_site, tmp_path)
    args = ["compare", "--plugins", "naive-bayes", "--data", ag_news_data, *FAST]
    assert cli(*args, "--json", "first.json").returncode == 0
    run_id = only_run(tmp_path / "first.json")["run_id"]
    (tmp_path / ".harness" / "runs" / run_id / "record.json").write_text("{not json")
    checked = cli("store", "check")
    assert checked.returncode == 0, checked.stderr
    assert f"not a readable run record; dropped run {run_id} from the index" in checked.stdout
    assert "1 fixed" in checked.stdout
    with sqlite3.connect(tmp_path / ".harness" / "runs.db") as db:
        assert db.execute("SELECT count(*) FROM runs").fetchone() == (0,)
    assert (tmp_path / ".harness" / "runs" / run_id).is_dir()  # the directory is the user's to repair


def test_a_read_only_store_still_reports_and_lists(tmp_path, plugin_site, ag_news_data):
    cli = make_cli(plugin_site, tmp_path)
    assert cli("compare", "--plugins", "naive-bayes", "--data", ag_news_data, *FAST).returncode == 0
    with read_only(tmp_path / ".harness"):
        report = cli("report")
        listed = cli("store", "ls", "--json")
    assert report.returncode == 0, report.stderr
    assert "naive-bayes" in report.stdout and "not a usable" not in report.stderr
    assert listed.returncode == 0 and json.loads(listed.stdout)[0]["approach"] == "naive-bayes"


def test_a_read_only_data_folder_is_refused_before_anything_runs(tmp_path, plugin_site, ag_news_data):
    cli = make_cli(plugin_site, tmp_path)
    args = ["compare", "--plugins", "naive-bayes", "--data", ag_news_data, *FAST]
    assert cli(*args).returncode == 0
    runs = sorted(p.name for p in (tmp_path / ".harness" / "runs").iterdir())
    with read_only(tmp_path / ".harness" / "data"):
        result = cli(*args, "--rerun")
    assert result.returncode == 2, result.stderr
    assert f"{Path('.harness') / 'data'}: cannot be written" in result.stderr
    assert sorted(p.name for p in (tmp_path / ".harness" / "runs").iterdir()) == runs
