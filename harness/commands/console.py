"""The console the commands print their tables to."""

from __future__ import annotations

import sys


def make_console():
    from rich.console import Console

    # Piped or captured output gets room for the whole table instead of rich's 80-column default.
    return Console(width=None if sys.stdout.isatty() else 180)
