"""Comparisons as stored: saved, found, loaded with each run shown as its row, combined for ``report --compare``."""

from __future__ import annotations

import json
from dataclasses import replace
from hashlib import sha256
from pathlib import Path

from harness.errors import UserError
from harness.files import write_json
from harness.store.index import Index
from harness.store.layout import RUN_ID, approach_of, run_dir
from harness.store.records import load_run
from harness.types import Comparison, RunRecord


def save_comparison(root: Path, index: Index, comparison: Comparison) -> None:
    # Each row as the comparison showed it: the run it shows, its status there, and the row's name and seed
    # (a reused run is stored under the name of the row that made it: see shown_as).
    row = {
        "comparison_id": comparison.comparison_id,
        "spec": comparison.spec,
        "created": comparison.created,
        "runs": [
            {"run_id": r.run_id, "status": r.status, "approach": r.approach, "seed": r.seed} for r in comparison.runs
        ],
        "metrics": comparison.metrics,
    }
    folder = root / "comparisons"
    folder.mkdir(exist_ok=True)
    write_json(folder / f"{comparison.comparison_id}.json", row)
    with index.connection:
        index.add_comparison(row)


def newest_comparison(root: Path, index: Index, spec: str) -> str | None:
    """The id of the newest stored comparison of ``spec``, if any."""
    if not (root / "runs.db").exists():
        return None
    row = index.connection.execute(
        "SELECT comparison_id FROM comparisons WHERE spec = ? ORDER BY created DESC, rowid DESC LIMIT 1", (spec,)
    ).fetchone()
    return row[0] if row else None


def load_comparison(root: Path, index: Index, comparison_id: str | None = None) -> Comparison | None:
    """A stored comparison by id, or the newest one."""
    if not (root / "runs.db").exists():
        return None
    if comparison_id:
        row = index.connection.execute("SELECT * FROM comparisons WHERE comparison_id = ?", (comparison_id,)).fetchone()
    else:
        row = index.connection.execute("SELECT * FROM comparisons ORDER BY created DESC, rowid DESC LIMIT 1").fetchone()
    if row is None:
        return None
    runs = []
    for entry in json.loads(row[3]):
        # [run_id, status] in a comparison stored before rows kept their names: the run's own name and seed.
        run_id, status, name, seed = (
            (entry["run_id"], entry["status"], entry.get("approach"), entry.get("seed"))
            if isinstance(entry, dict)
            else (*entry[:2], None, None)
        )
        try:
            record = load_run(root, run_id)
            # A reused run keeps the status, and shows the row name and seed, it had in this comparison.
            record = shown_as(record, name or record.approach, record.seed if seed is None else seed, status)
        except UserError as exc:  # its directory was deleted, or its record damaged: the rest still reports
            record = RunRecord(
                run_id=run_id,
                approach=name or approach_of(run_id),
                spec=row[1],
                task_type="",
                status="missing",
                error=str(exc),
                seed=seed or 0,
            )
        runs.append(record)
    return Comparison(comparison_id=row[0], spec=row[1], created=row[2], runs=runs, metrics=json.loads(row[4]))


def combine(root: Path, index: Index, items: list[str]) -> Comparison:
    """One comparison of the runs named by run ids and comparison ids, for ``report --compare``: they must
    be of one spec and one test set (a one-line error otherwise)."""
    runs: list[RunRecord] = []
    metrics: list[str] | None = None
    for item in items:
        comparison = load_comparison(root, index, item) if (root / "comparisons" / f"{item}.json").is_file() else None
        if comparison is not None:
            runs += comparison.runs
            metrics = metrics or comparison.metrics
        elif RUN_ID.fullmatch(item) and run_dir(root, item).is_dir():
            runs.append(load_run(root, item))
        else:
            raise UserError(f"{item!r} is neither a stored run nor a stored comparison", where="--compare")
    # A run given twice counts once; one run shown by two rows (toy and toy-copy) stays two rows.
    unique = list({(r.approach, r.run_id): r for r in runs}.values())
    specs = sorted({r.spec for r in unique})
    if len(specs) > 1:
        raise UserError(f"runs of different specs ({', '.join(specs)}) are not one comparison", where="--compare")
    tests = sorted({r.test_hash[:12] for r in unique if r.status != "missing"})
    if len(tests) > 1:
        raise UserError(
            f"runs scored on different test sets (sha256 {', '.join(tests)}) cannot be compared example by example",
            where="--compare",
        )
    if metrics is None:
        from harness.metrics import DEFAULT_METRICS

        metrics = list(DEFAULT_METRICS.get(unique[0].task_type, ("f1_weighted", "accuracy")))
    digest = sha256(" ".join(r.run_id for r in unique).encode()).hexdigest()[:6]
    return Comparison(
        comparison_id=f"{specs[0]}-combined-{digest}",
        spec=specs[0],
        created=unique[0].created,
        runs=unique,
        metrics=metrics,
    )


def shown_as(record: RunRecord, row: str, seed: int, status: str) -> RunRecord:
    """A stored run as one row of a comparison shows it: under that row's name and seed, with its status there.

    A run is stored once, under the name of the row that made it; a later row with the same measurement
    identity reuses it whole (status ``reused``) and shows it under its own name: ``toy-copy`` (a spec row with
    ``approach: toy``) beside ``toy`` in one compare is two rows, each counted once, and a grid's
    ``bert@learning_rate=1e-5`` reused by a compare's ``bert`` row shows as ``bert``. ``run_id`` stays the
    stored run's (its predictions and model are there). A copy: the stored record is never changed."""
    environment = record.environment
    if row != record.approach:  # what the row runs, when it runs another approach (spec rows, grid rows)
        environment = dict(environment)
        served = (record.measurement.get("identity") or {}).get("approach")
        if served and served != row:
            environment["runs"] = served
        else:
            environment.pop("runs", None)
    return replace(record, approach=row, seed=seed, status=status, environment=environment)
