"""A grid on a Ray cluster of two nodes that share no disk, on this machine (.ci/run's second step).

A real S3-compatible server (moto's, on 127.0.0.1) is the storage; a Ray head (no CPUs: nothing runs on it) and
a second node started with ``ray start --address``, its own ``--temp-dir``, working directory, ``HOME`` and
``HARNESS_HOME``, and a custom resource that every unit asks for (``--resource harness_worker=1``), so every unit
runs there. The grid lands every run; the driver's store holds no model file; ``report`` and ``bench --run`` work
from the driver; the worker node's raylet, SIGKILLed while a model trains (once a checkpoint of it is in the
bucket) and started again, costs nothing trained twice past that checkpoint; a second grid trains nothing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import bert_args

pytestmark = pytest.mark.ray

RAY = [sys.executable, "-m", "ray.scripts.scripts"]  # the `ray` command of this Python, wherever pip put its script
BUCKET = "harness-grid"
WORKER = "harness_worker"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def s3(tmp_path):
    """moto's S3 server on 127.0.0.1 with one bucket, and the environment that points boto at it."""
    pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    client = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    client.create_bucket(Bucket=BUCKET)
    try:
        yield env, client
    finally:
        server.stop()


def short_dir(name: str) -> Path:
    """A Ray temp dir under /tmp: Ray's socket paths inside it may not pass 107 bytes (a pytest tmp_path does)."""
    return Path("/tmp") / f"hr-{os.getpid()}-{name}"


def ray_start(args: list[str], cwd: Path, env: dict[str, str]) -> None:
    done = subprocess.run(
        [*RAY, "start", *args, "--node-ip-address", "127.0.0.1", "--disable-usage-stats"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def raylet_of(temp_dir: Path) -> int | None:
    """The pid of the raylet whose session lies under ``temp_dir``."""
    import psutil

    for process in psutil.process_iter(["name", "cmdline"]):
        if process.info["name"] == "raylet" and str(temp_dir) in " ".join(process.info["cmdline"] or []):
            return int(process.pid)
    return None


@pytest.fixture
def cluster(tmp_path, s3, plugin_site):
    """A Ray head on this machine and a worker node with its own temp dir, home and store; their environments."""
    pytest.importorskip("ray")
    s3_env, _ = s3
    port = free_port()
    base = {
        **os.environ,
        **s3_env,
        "PYTHONPATH": str(plugin_site),
        # Ray's token authentication off: a node with a HOME of its own does not see the head's ~/.ray/auth_token
        # (the head turns it on where that file exists), and this cluster listens on 127.0.0.1 only.
        "RAY_AUTH_MODE": "disabled",
        "RAY_health_check_period_ms": "1000",
        "RAY_health_check_failure_threshold": "3",
        "RAY_health_check_initial_delay_ms": "1000",
    }
    head = tmp_path / "head"
    head.mkdir()
    ray_start(
        [
            "--head",
            "--port",
            str(port),
            "--num-cpus",
            "0",
            "--temp-dir",
            str(short_dir("head")),
            "--include-dashboard",
            "false",
        ],
        head,
        base,
    )
    node = tmp_path / "node"  # the worker's own disk: nothing the driver's store sees
    for folder in ("home", "cache", "harness-home", "cwd"):
        (node / folder).mkdir(parents=True)
    worker_env = {
        **base,
        "HOME": str(node / "home"),
        "XDG_CACHE_HOME": str(node / "cache"),
        "HARNESS_HOME": str(node / "harness-home"),
    }

    def start_worker(temp: str) -> Path:
        temp_dir = short_dir(f"node-{temp}")
        ray_start(
            [
                "--address",
                f"127.0.0.1:{port}",
                "--num-cpus",
                "2",
                "--resources",
                json.dumps({WORKER: 2}),
                "--temp-dir",
                str(temp_dir),
            ],
            node / "cwd",
            worker_env,
        )
        return temp_dir

    try:
        yield {"address": f"127.0.0.1:{port}", "env": base, "node": node, "start_worker": start_worker}
    finally:
        subprocess.run([*RAY, "stop", "--force"], capture_output=True, timeout=120)
        for temp in Path("/tmp").glob(f"hr-{os.getpid()}-*"):
            shutil.rmtree(temp, ignore_errors=True)


def grid(cluster, tiny_bert, ag_news_data, *extra):
    return [
        sys.executable,
        "-m",
        "harness",
        "grid",
        "--spec",
        "agnews",
        "--plugins",
        "naive-bayes,bert",
        "--seeds",
        "0,1",
        "--data",
        ag_news_data,
        "--limit-train",
        "120",
        "--limit-test",
        "24",
        "--latency-samples",
        "2",
        *bert_args(tiny_bert, "num_train_epochs=3"),
        "--executor",
        "ray",
        "--address",
        cluster["address"],
        "--resource",
        f"{WORKER}=1",
        "--storage",
        f"s3://{BUCKET}/grid",
        "--store",
        "store",
        *extra,
    ]


def test_a_grid_on_two_nodes_with_s3_storage_survives_the_worker_node_restarting(
    cluster, s3, tmp_path, tiny_bert, ag_news_data
):
    _, client = s3
    worker_temp = cluster["start_worker"]("a")
    killed: list[str] = []

    def keys(prefix: str = "grid/runs/") -> list[str]:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def restart_node_after_a_checkpoint() -> None:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            states = [k for k in keys() if "-bert-" in k and k.endswith("/trainer_state.json")]
            if states:
                pid = raylet_of(worker_temp)
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                killed.append(states[0].split("/")[2])  # the run id
                time.sleep(5)  # the head sees the node gone
                cluster["start_worker"]("b")
                return
            time.sleep(0.2)

    restarter = threading.Thread(target=restart_node_after_a_checkpoint, daemon=True)
    restarter.start()
    start = time.monotonic()
    done = subprocess.run(
        grid(cluster, tiny_bert, ag_news_data, "--json", "grid.json"),
        cwd=tmp_path,
        env=cluster["env"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    seconds = time.monotonic() - start
    restarter.join(timeout=60)
    assert killed, "no checkpoint of a bert run reached the bucket"
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    comparison = json.loads((tmp_path / "grid.json").read_text())["comparisons"][0]
    rows = {(r["approach"], r["seed"]): r for r in comparison["runs"]}
    assert sorted((a, s, r["status"]) for (a, s), r in rows.items()) == [
        ("bert", 0, "ok"),
        ("bert", 1, "ok"),
        ("naive-bayes", 0, "ok"),
        ("naive-bayes", 1, "ok"),
    ]

    # Every run's artifacts are in the bucket; the driver's store holds records, logs and predictions only.
    stored = keys()
    for row in rows.values():
        assert f"grid/runs/{row['run_id']}/artifact/train_result.json" in stored
        assert f"grid/runs/{row['run_id']}/predictions.jsonl" in stored
        assert f"grid/runs/{row['run_id']}/train_log.jsonl" in stored
        assert row["environment"]["storage"] == f"s3://{BUCKET}/grid"
    store = tmp_path / "store"
    assert not [p for p in store.rglob("*") if p.suffix in (".safetensors", ".bin", ".pt") or p.name == "artifact"]
    assert not any(k.split("/")[-2].startswith("checkpoint-") for k in stored)  # removed once each model was done
    # The units ran on the worker node: its cache holds their local copies, its HARNESS_HOME is not the store.
    assert list((cluster["node"] / "cache" / "harness" / "storage").glob("*/runs/*/artifact/artifact.json"))

    # The run whose node was killed went on from its last checkpoint in the bucket, on the restarted node.
    (resumed,) = [r for r in rows.values() if r["run_id"] == killed[0]]
    assert resumed["model"].get("resumed_from_checkpoint", "").startswith("checkpoint-")
    assert resumed["training"]["resumed"]["seconds_before_kill"] > 0
    steps = [entry["step"] for entry in resumed["train_log"] if "loss" in entry]
    assert steps == sorted(set(steps)), "a step was trained (and logged) twice"
    print(f"\ntwo-node grid with a node restart: {seconds:.1f} s")

    env = cluster["env"]
    report = subprocess.run(
        [sys.executable, "-m", "harness", "report", "--store", "store"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert report.returncode == 0 and "2/2 seeds" in report.stdout, report.stderr
    assert f"run {killed[0]} was killed while training and resumed from its checkpoint-" in report.stdout
    bench = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness",
            "bench",
            "--plugin",
            "bert",
            "--spec",
            "agnews",
            "--run",
            rows[("bert", 0)]["run_id"],
            "--store",
            "store",
            "--data",
            ag_news_data,
            "--limit-test",
            "24",
            "--batch-sizes",
            "8",
            "--rounds",
            "1",
            "--latency-samples",
            "4",
            "--requests",
            "16",
        ],
        cwd=tmp_path,
        env={**env, "XDG_CACHE_HOME": str(tmp_path / "driver-cache")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bench.returncode == 0, bench.stderr[-2000:]
    assert list((tmp_path / "driver-cache" / "harness" / "storage").glob("*/runs/*/artifact/artifact.json"))

    again = subprocess.run(
        grid(cluster, tiny_bert, ag_news_data, "--json", "again.json"),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    statuses = {
        r["status"] for c in json.loads((tmp_path / "again.json").read_text())["comparisons"] for r in c["runs"]
    }
    assert statuses == {"reused"}
