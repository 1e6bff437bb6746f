"""``harness store check|gc|ls``: looks after the results store."""

from __future__ import annotations

import argparse

from harness.commands.output import print_listing
from harness.errors import UserError


def cmd_store(args: argparse.Namespace) -> int:
    import math

    from harness.store import Store
    from harness.store.cleanup import removed_lines, skipped_lines
    from harness.store.layout import size_text

    store = Store(args.store)
    if not (store.root / "runs.db").exists() and not (store.root / "runs").is_dir():
        raise UserError("no results store here (no runs.db, no runs/)", where=str(store.root))
    if args.store_command == "ls":
        print_listing(
            store.runs(),
            args.json,
            ("Run", "Approach", "Spec", "Status", "Model", "Size", "Artifacts"),
            lambda row: (
                row["run_id"],
                row["approach"],
                row["spec"],
                row["status"],
                row["model"],
                "-" if row["bytes"] is None else size_text(row["bytes"]),
                row["storage"] or "store",
            ),
            title=str(store.root),
            title_justify="left",
        )
        return 0
    if args.store_command == "gc":
        days = args.older_than
        if days is not None and (not math.isfinite(days) or days < 0):
            raise UserError(f"expected a number of days, 0 or more, got {days}", where="--older-than")
        if not args.dry_run:
            store.check_writable(open_index=False)
        cleaned = store.cleanup(days, dry_run=args.dry_run)
        found = cleaned.removed
        for path, size, what in found:
            print(f"{'would remove' if args.dry_run else 'removed'} {path} ({what}, {size_text(size)})")
        for line in skipped_lines(cleaned):  # what a running compare holds is never removed
            print(line)
        total = size_text(sum(size for _, size, _ in found))
        print(
            f"{store.root}: {len(found)} to remove, {total} to free (dry run: nothing removed)"
            if args.dry_run
            else f"{store.root}: {len(found)} removed, {total} freed"
        )
        return 0
    store.check_writable(open_index=False)  # check is what repairs a corrupt index
    fixed = store.check()
    skipped: list[str] = []
    if args.remove_partials:  # killed runs only; a running compare's runs are skipped, with a line saying so
        cleaned = store.cleanup(killed_runs_only=True)
        fixed += removed_lines(cleaned)
        skipped = skipped_lines(cleaned)
    for line in fixed + skipped:
        print(line)
    runs, comparisons = (
        store.db.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in ("runs", "comparisons")
    )
    kept = list(store.stale_partials())  # killed runs, without sizing every run in the store
    print(
        f"{store.root}: {runs} runs and {comparisons} comparisons indexed; "
        + (f"{len(fixed)} fixed" if fixed else "nothing to fix")
        + (f"; {len(kept)} killed runs kept to resume (`harness store gc` removes them)" if kept else "")
    )
    return 0
