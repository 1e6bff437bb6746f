"""A reused run shows under the name and seed of the row that reuses it: two rows of one compare with the same
measurement identity (``naive-bayes`` and a spec row ``nb-copy: {approach: naive-bayes}``) are two rows, one seed
each, in the table, ``--json`` and the stored comparison reloaded; a run reused by a later compare or a grid's row
shows the current row's name; the stored run's record.json is never rewritten. The real CLI, the docs' naive-bayes
plugin, a real store."""

from __future__ import annotations

import json
import re

from conftest import ROOT
from harness.store import Store

FAST = ["--limit-train", "240", "--limit-test", "40", "--latency-samples", "3"]


def toys_spec(tmp_path):
    """specs/agnews.yaml as spec ``toys``, with a row ``nb-copy`` that runs naive-bayes as it is."""
    text = (ROOT / "specs" / "agnews.yaml").read_text(encoding="utf-8").replace("name: agnews", "name: toys", 1)
    path = tmp_path / "toys.yaml"
    path.write_text(text + "  nb-copy:\n    approach: naive-bayes\n", encoding="utf-8")
    return str(path)


def table_rows(stdout: str) -> list[tuple[str, str]]:
    """(approach, status) of each row of the printed table."""
    return re.findall(r"^│ (\S+) +│ ([^│]*?) *│", stdout, re.M)


def record_file(tmp_path, run_id):
    return tmp_path / ".harness" / "runs" / run_id / "record.json"


def test_two_rows_of_one_approach_are_two_rows_each_counted_once(cli, tmp_path, ag_news_data):
    spec = toys_spec(tmp_path)
    result = cli(
        "compare",
        "--spec",
        spec,
        "--plugins",
        "naive-bayes,nb-copy",
        "--data",
        ag_news_data,
        *FAST,
        "--json",
        "out.json",
    )
    assert result.returncode == 0, result.stderr
    out = json.loads((tmp_path / "out.json").read_text())
    (run_id,) = {r["run_id"] for r in out["runs"]}  # nb-copy measures nothing again: it reuses naive-bayes's run
    assert [(r["approach"], r["seed"], r["status"]) for r in out["runs"]] == [
        ("naive-bayes", 0, "ok"),
        ("nb-copy", 0, "reused"),
    ]
    assert "runs" not in out["runs"][0]["environment"] and out["runs"][1]["environment"]["runs"] == "naive-bayes"
    assert {name: (row["seeds"], row["runs"]) for name, row in out["summary"].items()} == {
        "naive-bayes": ([0], [run_id]),
        "nb-copy": ([0], [run_id]),
    }
    assert out["summary"]["nb-copy"]["metrics"]["accuracy"]["n"] == 1
    assert table_rows(result.stdout) == [("naive-bayes", "ok"), ("nb-copy", "reused")]
    assert f"nb-copy: reused run {run_id}" in result.stdout

    # The stored run keeps the name of the row that made it.
    stored = json.loads(record_file(tmp_path, run_id).read_text())
    assert (stored["approach"], stored["status"]) == ("naive-bayes", "ok") and "runs" not in stored["environment"]

    # Reloaded from the store, the comparison is the one the compare showed: two rows, one seed each.
    report = cli("report", out["comparison_id"], "--json", "report.json")
    assert report.returncode == 0, report.stderr
    assert json.loads((tmp_path / "report.json").read_text()) == out
    assert table_rows(report.stdout) == [("naive-bayes", "ok"), ("nb-copy", "reused")]
    reloaded = Store(tmp_path / ".harness").load_comparison(out["comparison_id"])
    assert [(r.approach, r.seed, r.status, r.run_id) for r in reloaded.runs] == [
        ("naive-bayes", 0, "ok", run_id),
        ("nb-copy", 0, "reused", run_id),
    ]


def test_a_later_compare_shows_a_reused_run_under_its_own_rows_and_leaves_the_record_alone(cli, tmp_path, ag_news_data):
    spec = toys_spec(tmp_path)
    first = cli("compare", "--spec", spec, "--plugins", "nb-copy", "--data", ag_news_data, *FAST, "--json", "1.json")
    assert first.returncode == 0, first.stderr
    (made,) = json.loads((tmp_path / "1.json").read_text())["runs"]
    assert (made["approach"], made["status"]) == ("nb-copy", "ok")
    record = record_file(tmp_path, made["run_id"]).read_bytes()

    again = cli(
        "compare", "--spec", spec, "--plugins", "naive-bayes,nb-copy", "--data", ag_news_data, *FAST, "--json", "2.json"
    )
    assert again.returncode == 0, again.stderr
    out = json.loads((tmp_path / "2.json").read_text())
    assert [(r["approach"], r["run_id"], r["status"]) for r in out["runs"]] == [
        ("naive-bayes", made["run_id"], "reused"),
        ("nb-copy", made["run_id"], "reused"),
    ]
    # naive-bayes runs itself: the stored row's "runs naive-bayes" is not its note.
    assert "runs" not in out["runs"][0]["environment"] and out["runs"][1]["environment"]["runs"] == "naive-bayes"
    assert list(out["summary"]) == ["naive-bayes", "nb-copy"]
    assert table_rows(again.stdout) == [("naive-bayes", "reused"), ("nb-copy", "reused")]
    assert "naive-bayes: runs naive-bayes" not in again.stdout and "nb-copy: runs naive-bayes" in again.stdout
    assert record_file(tmp_path, made["run_id"]).read_bytes() == record  # byte for byte: never rewritten
    assert [p.name for p in (tmp_path / ".harness" / "runs").iterdir()] == [made["run_id"]]

    report = cli("report", "--json", "report.json")  # the newest comparison, from the store
    assert report.returncode == 0, report.stderr
    assert json.loads((tmp_path / "report.json").read_text()) == out


def test_a_grid_rows_run_reused_by_a_compare_shows_the_compares_row(cli, tmp_path, ag_news_data):
    grid = cli(
        "grid",
        "--spec",
        "agnews",
        "--plugins",
        "naive-bayes",
        "--set",
        "naive-bayes.smoothing=1.0,0.5",
        "--seeds",
        "0",
        "--data",
        ag_news_data,
        *FAST,
        "--json",
        "grid.json",
    )
    assert grid.returncode == 0, grid.stderr
    (gridded,) = json.loads((tmp_path / "grid.json").read_text())["comparisons"]
    made = {r["approach"]: r for r in gridded["runs"]}
    assert sorted(made) == ["naive-bayes@smoothing=0.5", "naive-bayes@smoothing=1.0"]
    half = made["naive-bayes@smoothing=0.5"]
    record = record_file(tmp_path, half["run_id"]).read_bytes()

    result = cli(
        "compare",
        "--spec",
        "agnews",
        "--plugins",
        "naive-bayes",
        "--set",
        "naive-bayes.smoothing=0.5",
        "--data",
        ag_news_data,
        *FAST,
        "--json",
        "out.json",
    )
    assert result.returncode == 0, result.stderr
    out = json.loads((tmp_path / "out.json").read_text())
    (run,) = out["runs"]
    assert (run["approach"], run["run_id"], run["status"]) == ("naive-bayes", half["run_id"], "reused")
    assert "runs" not in run["environment"] and list(out["summary"]) == ["naive-bayes"]
    assert table_rows(result.stdout) == [("naive-bayes", "reused")]
    assert record_file(tmp_path, half["run_id"]).read_bytes() == record

    # One table of both comparisons: the grid's two rows and the compare's own, under their own names.
    combined = cli("report", "--compare", gridded["comparison_id"], out["comparison_id"], "--json", "both.json")
    assert combined.returncode == 0, combined.stderr
    both = json.loads((tmp_path / "both.json").read_text())
    assert [(r["approach"], r["run_id"]) for r in both["runs"]] == [
        *((r["approach"], r["run_id"]) for r in gridded["runs"]),
        ("naive-bayes", half["run_id"]),
    ]


def test_a_comparison_stored_before_rows_kept_their_names_still_loads(cli, tmp_path, ag_news_data):
    result = cli(
        "compare", "--spec", "agnews", "--plugins", "naive-bayes", "--data", ag_news_data, *FAST, "--json", "out.json"
    )
    assert result.returncode == 0, result.stderr
    (run,) = json.loads((tmp_path / "out.json").read_text())["runs"]
    store = Store(tmp_path / ".harness")
    gone = "20260101-000000-qwen-lora-a1b2c3"
    old = {
        "comparison_id": "20260101-000000-agnews-0ld000",
        "spec": "agnews",
        "created": "2026-01-01T00:00:00Z",
        "runs": [[run["run_id"], "ok"], [run["run_id"], "reused"], [gone, "ok"]],
        "metrics": ["accuracy"],
    }
    (tmp_path / ".harness" / "comparisons" / f"{old['comparison_id']}.json").write_text(json.dumps(old))
    assert store.check() == [f"indexed comparison {old['comparison_id']}"]
    loaded = store.load_comparison(old["comparison_id"])
    # [run_id, status] entries: each run under its own stored name and seed, a lost one named from its id.
    assert [(r.approach, r.seed, r.status) for r in loaded.runs] == [
        ("naive-bayes", 0, "ok"),
        ("naive-bayes", 0, "reused"),
        ("qwen-lora", 0, "missing"),
    ]
    report = cli("report", old["comparison_id"])
    assert report.returncode == 0, report.stderr
    assert ("naive-bayes", "2/2 seeds") in table_rows(report.stdout)
