"""``harness report``: a stored comparison, or stored runs combined into one, rendered again."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from harness.commands.checks import check_output_target
from harness.commands.output import make_console
from harness.errors import UserError

if TYPE_CHECKING:
    from harness.types import Comparison


def cmd_report(args: argparse.Namespace) -> int:
    from harness.comparison import comparison_statistics
    from harness.files import write_json
    from harness.report_plots import write_plots
    from harness.report_terminal import comparison_table, per_field_table
    from harness.store import Store
    from harness.store.records import comparison_to_dict

    check_output_target(args.json)
    check_output_target(args.html, "--html")
    store = Store(args.store)
    comparison: Comparison | None  # combine's, or the one stored under the id (None where there is none)
    if args.compare:
        if args.comparison_id:
            raise UserError("give a comparison id or --compare, not both", where="--compare")
        comparison = store.combine(args.compare)
    else:
        comparison = store.load_comparison(args.comparison_id)
    if comparison is None:
        raise UserError(
            f"no comparison {args.comparison_id!r}" if args.comparison_id else "no comparison stored yet",
            where=str(store.root),
        )
    comparison.statistics = comparison_statistics(comparison, store)
    console = make_console()
    console.print(comparison_table(comparison))
    fields = per_field_table(comparison)
    if fields is not None:
        console.print(fields)
    plots = write_plots(comparison, store.root / "comparisons" / comparison.comparison_id, store, console)
    if args.html is not None:
        from harness.html import write_html

        write_html(args.html, comparison, store, plots)
        console.print(f"report: {args.html}", highlight=False)
    if args.json is not None:
        write_json(args.json, comparison_to_dict(comparison))
    return 0
