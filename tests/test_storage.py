"""``--storage``: runs' artifacts apart from the store (harness.storage), through the real ``harness`` command.

With a storage directory the store keeps records, logs, the predictions' copy and ``storage.json``, no model;
a second compare reuses the rows, a re-measurement finds the model in storage, ``store ls`` says where each run's
artifacts are, and ``store gc`` removes a killed run's checkpoints there too. Bad storage is one line, exit 2,
before anything is written. S3 against a real server and a cluster of two Ray nodes: tests/test_cluster.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NB = ["--spec", "agnews", "--plugins", "naive-bayes", "--limit-train", "60", "--limit-test", "24"]


def errors(stderr: str) -> list[str]:
    """stderr without the line the test site's broken plugin costs every command."""
    return [line for line in stderr.splitlines() if not line.startswith("harness: plugin 'broken-import'")]


def runs(path: Path) -> list[dict]:
    return json.loads(path.read_text())["runs"]


def test_artifacts_go_to_storage_and_every_reader_finds_them_there(cli, tmp_path, ag_news_data):
    store, storage = tmp_path / "store", tmp_path / "bucket"
    first = cli(
        "compare",
        *NB,
        "--data",
        ag_news_data,
        "--store",
        "store",
        "--storage",
        "bucket",
        "--json",
        "a.json",
        env={"XDG_CACHE_HOME": str(tmp_path / "cache")},
    )
    assert first.returncode == 0, first.stderr
    (run,) = runs(tmp_path / "a.json")
    run_id = run["run_id"]
    assert run["status"] == "ok" and run["environment"]["storage"] == str(storage)
    # The model and the predictions are in storage under the run's id; the store has no artifact of its own.
    assert (storage / "runs" / run_id / "artifact" / "artifact.json").is_file()
    assert (storage / "runs" / run_id / "artifact" / "train_result.json").is_file()
    assert (storage / "runs" / run_id / "predictions.jsonl").is_file()
    assert (storage / "runs" / run_id / "train_log.jsonl").read_text() == (
        store / "runs" / run_id / "train_log.jsonl"
    ).read_text()
    assert not list(store.rglob("artifact"))
    # A storage directory on this machine is served from where it is: no second copy in the cache.
    assert not [p for p in (tmp_path / "cache" / "harness" / "storage").glob("*/runs/**/*") if p.is_file()]
    assert json.loads((store / "runs" / run_id / "storage.json").read_text()) == {"uri": str(storage)}
    # Scoring and reports read the driver's copy of the predictions: the same lines.
    assert (store / "runs" / run_id / "predictions.jsonl").read_text() == (
        storage / "runs" / run_id / "predictions.jsonl"
    ).read_text()

    # HARNESS_STORAGE instead of the option: the same row, reused whole.
    again = cli(
        "compare",
        *NB,
        "--data",
        ag_news_data,
        "--store",
        "store",
        "--json",
        "b.json",
        env={"HARNESS_STORAGE": "bucket"},
    )
    assert again.returncode == 0, again.stderr
    assert [r["status"] for r in runs(tmp_path / "b.json")] == ["reused"]

    # Measured again another way: the trained model is found in storage, not trained again.
    remeasured = cli(
        "compare", *NB, "--data", ag_news_data, "--store", "store", "--latency-samples", "3", "--json", "c.json"
    )
    assert remeasured.returncode == 0, remeasured.stderr
    (row,) = runs(tmp_path / "c.json")
    assert row["status"] == "ok" and row["training"]["trained_in"] == run_id
    assert row["training"]["reason"].startswith("re-measured")

    listing = cli("store", "ls", "--store", "store", "--json")
    assert listing.returncode == 0, listing.stderr
    where = {r["run_id"]: r["storage"] for r in json.loads(listing.stdout)}
    assert where[run_id] == str(storage) and where[row["run_id"]] is None


def test_store_gc_removes_a_killed_runs_checkpoints_in_storage(tmp_path):
    from harness.store import Store
    from harness.store.artifacts import mark

    store, storage = Store(tmp_path / "store"), tmp_path / "bucket"
    run_id = "20260101-000000-bert-a1b2c3"
    partial = store.start_run(run_id, {"train_key": "k" * 64})
    mark(partial, str(storage))
    checkpoint = storage / "runs" / run_id / "artifact" / "checkpoints" / "checkpoint-4"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.safetensors").write_bytes(b"\0" * 4096)
    (checkpoint / "trainer_state.json").write_text("{}")
    store._partials.release(run_id)  # as if its process had been killed

    (found,) = store.gc(dry_run=True)
    assert found[0] == partial and f"killed run, checkpoint-4 (in {storage})" == found[2] and found[1] >= 4096
    assert checkpoint.is_dir()
    store.gc()
    assert not partial.exists() and not (storage / "runs" / run_id).exists()


@pytest.mark.parametrize(
    ("storage", "env", "message"),
    [
        (
            "s3://bucket/prefix",
            {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1", "AWS_ACCESS_KEY_ID": "x"},
            "harness: error: --storage: cannot write to s3://bucket/prefix: EndpointConnectionError: "
            'Could not connect to the endpoint URL: "http://127.0.0.1:9/bucket"',
        ),
        ("gs://bucket/prefix", {}, "harness: error: --storage: gs://bucket/prefix: Please install gcsfs"),
        (
            "s3://key:hunter2hunter2@bucket/prefix",
            {},
            "harness: error: --storage: credentials do not go in the storage URL: give them in the environment "
            "(AWS_ACCESS_KEY_ID, GOOGLE_APPLICATION_CREDENTIALS, ...)",
        ),
    ],
    ids=["unreachable", "missing-package", "credentials-in-url"],
)
def test_bad_storage_is_one_line_before_anything_is_written(cli, tmp_path, ag_news_data, storage, env, message):
    result = cli(
        "compare",
        *NB,
        "--data",
        ag_news_data,
        "--store",
        "store",
        "--storage",
        storage,
        env={"AWS_SECRET_ACCESS_KEY": "y", **env},
    )
    assert result.returncode == 2
    (line,) = errors(result.stderr)
    assert line.startswith(message)
    assert "hunter2" not in result.stderr + result.stdout
    assert not (tmp_path / "store").exists()


def test_an_unwritable_storage_directory_is_one_line(cli, tmp_path, ag_news_data):
    (tmp_path / "file").write_text("not a directory")
    result = cli("compare", *NB, "--data", ag_news_data, "--store", "store", "--storage", "file/sub")
    assert result.returncode == 2
    (line,) = errors(result.stderr)
    assert line.startswith(f"harness: error: --storage: cannot write to {tmp_path / 'file' / 'sub'}: ")
    assert not (tmp_path / "store").exists()


def test_a_compare_killed_while_training_resumes_from_its_checkpoint_in_storage(
    tmp_path, plugin_site, tiny_bert, ag_news_data
):
    """The whole compare SIGKILLed once a checkpoint is in storage; the next compare (without --storage: the run's
    storage.json says where) resumes as the same run from that checkpoint, its log rebuilt by the unit from the
    checkpoint's history, no step twice, and the checkpoints leave storage with the finished model."""
    from conftest import bert_args, make_cli
    from test_store_recovery import kill_when, only_run, partials, spawn

    storage = tmp_path / "bucket"
    args = ["compare", "--plugins", "bert", "--data", ag_news_data, *NB[:2], "--limit-train", "120"]
    args += [
        "--limit-test",
        "24",
        "--latency-samples",
        "2",
        *bert_args(tiny_bert, "num_train_epochs=12", "eval_steps=8"),
    ]
    process = spawn(plugin_site, tmp_path, *args, "--storage", str(storage))
    kill_when(process, lambda: any(storage.glob("runs/*/artifact/checkpoints/checkpoint-*/trainer_state.json")))
    (killed,) = partials(tmp_path / ".harness")
    assert not (killed / "artifact").exists()  # the checkpoints are in storage only

    result = make_cli(plugin_site, tmp_path)(*args, "--launcher", "inline", "--json", "out.json")
    assert result.returncode == 0, result.stderr
    run = only_run(tmp_path / "out.json")
    assert run["status"] == "ok" and run["run_id"] == killed.name.removesuffix(".partial")
    step = int(run["training"]["resumed"]["from"].removeprefix("checkpoint-"))
    assert step >= 8 and run["model"]["resumed_from_checkpoint"] == f"checkpoint-{step}"
    losses = [e["step"] for e in run["train_log"] if "loss" in e]
    assert losses == sorted(set(losses)) and min(losses) <= step < max(losses) == 24
    assert (storage / "runs" / run["run_id"] / "artifact" / "train_result.json").is_file()
    assert not (storage / "runs" / run["run_id"] / "artifact" / "checkpoints").exists()
    stored_log = (storage / "runs" / run["run_id"] / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in stored_log] == [e["step"] for e in run["train_log"]]


def test_a_teacher_with_several_values_in_a_grid_is_one_line(cli, tmp_path, ag_news_data):
    spec = tmp_path / "taught.yaml"
    text = (Path(__file__).resolve().parent.parent / "specs" / "agnews.yaml").read_text(encoding="utf-8")
    spec.write_text(text + "teacher: openai\n", encoding="utf-8")
    result = cli(
        "grid",
        "--spec",
        str(spec),
        "--plugins",
        "naive-bayes",
        "--data",
        ag_news_data,
        "--set",
        "openai.model=a,b",
        "--store",
        "store",
    )
    assert result.returncode == 2
    assert errors(result.stderr) == [
        f"harness: error: --set: openai is {spec}'s teacher, which labels once per spec: "
        "give its settings one value each"
    ]
    assert not (tmp_path / "store").exists()
