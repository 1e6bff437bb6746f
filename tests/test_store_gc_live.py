"""Cleanup never breaks a running compare (issue 34): `store gc` (also `--older-than 0`, `--dry-run`) and `store check
--remove-partials` skip what a live compare holds (its data cache, its run in progress, its load cache), say so, and
remove it once the compare has ended, or was killed with SIGKILL. The real CLI in real processes, on real files.

The approach under test waits at a gate (a file the test creates) in train and in its first predict, so each cleanup
runs at a known moment of the compare: while it trains, and in its measure unit after training."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import CLI, cli_env, install_site, make_cli
from test_store_recovery import FAST, only_run, partials, spawn

GATED = """
import json
import os
import time
from pathlib import Path

from harness import Approach, Artifact, Prediction, Serving, hookimpl


def wait_at(name):
    gate = Path(os.environ["HARNESS_TEST_GATE"])
    (gate / f"{name}.waiting").touch()
    deadline = time.monotonic() + 120
    while not (gate / f"{name}.go").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {name} never opened")
        time.sleep(0.02)


class Gated(Approach):
    name = "gated"

    def train(self, task, train, validation, settings, context):
        wait_at("train")
        path = context.workdir / "label.json"
        path.write_text(json.dumps(train[0].label))
        return Artifact(path=path, train_samples=len(train))

    def load(self, task, artifact, settings, context):
        # Derives a file to serve from: the load cache is built, as an export would be.
        (context.cache_dir / "served.json").write_text(artifact.path.read_text())
        return Serving(device="cpu")

    def predict(self, task, artifact, examples, settings, context):
        wait_at("predict")
        return [Prediction(label=json.loads(artifact.path.read_text())) for _ in examples]


@hookimpl
def harness_register_approaches(register):
    register(Gated())
"""


@pytest.fixture(scope="module")
def gated_site(tmp_path_factory):
    return install_site(tmp_path_factory.mktemp("gated-site"), {"gated_plugin": GATED}, {"gated": "gated_plugin"})


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"the compare ended first: {process.communicate()}"
        assert time.monotonic() < deadline, f"never got to {path.name}"
        time.sleep(0.02)


def start(site: Path, tmp_path: Path, ag_news_data: str) -> tuple[subprocess.Popen, Path]:
    gate = tmp_path / "gate"
    gate.mkdir()
    os.environ["HARNESS_TEST_GATE"] = str(gate)  # spawn() passes this process's environment on
    try:
        process = spawn(
            site, tmp_path, "compare", "--plugins", "gated", "--data", ag_news_data, *FAST, "--json", "out.json"
        )
    finally:
        del os.environ["HARNESS_TEST_GATE"]
    return process, gate


def held(store: Path) -> tuple[list[Path], list[Path]]:
    """The data caches and the built load caches in the store."""
    return sorted(store.glob("data/*.json")), sorted(p.parent for p in store.glob("cache/*/*/.built"))


def test_cleanup_during_a_compare_skips_what_it_holds_and_removes_it_after(tmp_path, gated_site, ag_news_data):
    store = tmp_path / ".harness"
    cli = make_cli(gated_site, tmp_path)
    process, gate = start(gated_site, tmp_path, ag_news_data)
    holder = f"a running compare holds (pid {process.pid})"
    try:
        wait_for(gate / "train.waiting", process)  # its data cache is written, its train unit has read it
        (data,), _ = held(store)
        (run,) = partials(store)
        old = store / "data" / "0123456789abcdef0123456789abcdef.json"  # an earlier compare's, abandoned
        old.write_text("{}")

        first = cli("store", "gc")
        assert first.returncode == 0, first.stderr
        assert f"removed {Path('.harness/data') / old.name} (data cache" in first.stdout and not old.exists()
        assert f"skipped 2 items {holder}: 1 data cache, 1 run in progress" in first.stdout
        assert str(data.relative_to(tmp_path)) not in first.stdout

        # The other cleanups at once, while it trains: none removes anything it holds, each says what it skipped.
        others = [
            ["store", "gc", "--older-than", "0"],
            ["store", "check", "--remove-partials"],
            ["store", "gc", "--dry-run"],
        ]
        running = [
            subprocess.Popen(
                [*CLI, *args],
                cwd=tmp_path,
                env=cli_env(gated_site),
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for args in others
        ]
        (aged, checked, dry) = [(p.communicate(timeout=120), p.returncode) for p in running]
        for (_out, err), code in (aged, checked, dry):
            assert code == 0, err
        for (out, _), _ in (aged, dry):
            assert f"skipped 2 items {holder}: 1 data cache, 1 run in progress" in out.splitlines(), out
        assert "0 removed" in aged[0][0] and "0 to remove" in dry[0][0]
        # check --remove-partials removes killed runs only: its run in progress is what it skipped.
        assert checked[0][0].splitlines() == [
            f"skipped 1 item {holder}: 1 run in progress",
            ".harness: 0 runs and 0 comparisons indexed; nothing to fix",
        ]
        assert data.is_file() and run.is_dir()

        (gate / "train.go").touch()
        wait_for(gate / "predict.waiting", process)  # its measure unit, after training: the load cache is built
        (data,), (cache,) = held(store)
        third = cli("store", "gc")
        assert third.returncode == 0, third.stderr
        assert f"skipped 3 items {holder}: 1 data cache, 1 load cache, 1 run in progress" in third.stdout
        assert "0 removed" in third.stdout and data.is_file() and (cache / "served.json").is_file()
        (gate / "predict.go").touch()
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, err
    result = only_run(tmp_path / "out.json")
    assert result["status"] == "ok", result["error"]

    # Ended: what it held is abandoned now (its load cache stays: its model is a stored run's).
    after = cli("store", "gc")
    assert after.returncode == 0, after.stderr
    assert "skipped" not in after.stdout and "1 removed" in after.stdout
    assert held(store) == ([], [cache]) and list((store / "live").iterdir()) == []


def test_a_compare_killed_with_sigkill_holds_nothing(tmp_path, gated_site, ag_news_data):
    store = tmp_path / ".harness"
    process, gate = start(gated_site, tmp_path, ag_news_data)
    (gate / "train.go").touch()
    try:
        wait_for(gate / "predict.waiting", process)  # killed in its measure unit: its load cache is built
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    (data,), (cache,) = held(store)
    (run,) = partials(store)
    assert list((store / "live").glob("*.json"))  # its file is left behind; its lock died with it

    gone = make_cli(gated_site, tmp_path)("store", "gc")
    assert gone.returncode == 0, gone.stderr
    assert "skipped" not in gone.stdout and "3 removed" in gone.stdout
    assert f"removed {run.relative_to(tmp_path)} (killed run, finished training" in gone.stdout
    # The killed run is removed in the same pass, so the load cache of its model is nobody's.
    assert f"removed {cache.parent.relative_to(tmp_path)} (load cache" in gone.stdout
    assert held(store) == ([], []) and partials(store) == [] and list((store / "live").iterdir()) == []
