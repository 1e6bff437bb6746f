"""``store check``: make the index agree with the run directories, rebuilding a corrupt one from them."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from harness.errors import UserError
from harness.store.index import Index
from harness.store.layout import RUN_ID
from harness.store.records import load_run


def repair(root: Path, index: Index) -> list[str]:
    """Make the index agree with the run directories and say what was fixed: a corrupt index is moved
    aside and rebuilt, finished runs missing from it are indexed, rows whose run is gone or whose
    ``record.json`` cannot be read are dropped, comparisons missing from it are indexed."""
    fixed = []
    path = root / "runs.db"
    try:
        verdict = index.connection.execute("PRAGMA quick_check").fetchall()
        if verdict != [("ok",)]:
            raise sqlite3.DatabaseError(f"integrity check: {verdict[0][0]}")
    except (UserError, sqlite3.DatabaseError) as exc:
        index.close()
        aside = path.with_name(f"runs.db.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        for suffix in ("", "-wal", "-shm"):
            if path.with_name(path.name + suffix).exists():
                path.with_name(path.name + suffix).rename(aside.with_name(aside.name + suffix))
        fixed.append(f"{path}: {str(exc).split(';')[0]}; moved to {aside.name} and rebuilt")
    db = index.connection
    indexed = {row[0] for row in db.execute("SELECT run_id FROM runs")}
    for run_id in sorted(indexed):
        if (root / "runs" / run_id / "record.json").is_file():
            try:
                load_run(root, run_id)
            except UserError as exc:
                with db:
                    db.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))
                indexed.discard(run_id)
                fixed.append(
                    f"{exc.where}: not a readable run record; dropped run {run_id} from the index "
                    "(its directory is kept: repair the file and run check again to index it)"
                )
    on_disk = set()
    for record_file in sorted((root / "runs").glob("*/record.json")):
        run_id = record_file.parent.name
        if not RUN_ID.fullmatch(run_id):
            continue
        on_disk.add(run_id)
        if run_id in indexed:
            continue
        try:
            record = load_run(root, run_id)
        except UserError:
            continue  # said above when it was indexed; an unindexed unreadable record stays out silently
        with db:
            index.add_run(record)
        fixed.append(f"indexed run {run_id} ({record.approach}, {record.status}), which the index had lost")
    for run_id in sorted(indexed - on_disk):
        with db:
            db.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))
        fixed.append(f"dropped run {run_id} from the index: its directory is gone")
    known = {row[0] for row in db.execute("SELECT comparison_id FROM comparisons")}
    for comparison_file in sorted((root / "comparisons").glob("*.json")):
        if comparison_file.stem in known:
            continue
        try:
            row = json.loads(comparison_file.read_text(encoding="utf-8"))
            with db:
                index.add_comparison(row)
        except (ValueError, KeyError, TypeError):
            fixed.append(f"{comparison_file}: not a readable comparison; left out of the index")
            continue
        fixed.append(f"indexed comparison {comparison_file.stem}")
    return fixed
