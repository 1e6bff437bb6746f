"""How the commands print: a console sized for where the output goes, and listings as JSON or as a table."""

from __future__ import annotations

import json
import sys
from typing import Any, Callable, Sequence


def make_console():
    from rich.console import Console

    # Piped or captured output gets room for the whole table instead of rich's 80-column default.
    return Console(width=None if sys.stdout.isatty() else 180)


def print_listing(
    rows: list[dict[str, Any]],
    as_json: bool,
    columns: Sequence[str],
    cells: Callable[[dict[str, Any]], Sequence[str]],
    *,
    ensure_ascii: bool = True,
    **table_options: Any,
) -> None:
    """``rows`` as indented JSON (``--json``), or as a table of ``columns`` with the ``cells`` of each row."""
    if as_json:
        print(json.dumps(rows, indent=2, ensure_ascii=ensure_ascii))
        return
    from rich.table import Table

    table = Table(*columns, **table_options)
    for row in rows:
        table.add_row(*cells(row))
    make_console().print(table)
