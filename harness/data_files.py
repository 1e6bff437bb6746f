"""Reading a JSONL or CSV file of examples: any bad line or record is a UserError naming its file and line.

A CSV record whose quoted field spans lines is taken as written only where it reads as a spreadsheet's text
with line breaks, not as a quote left open."""

from __future__ import annotations

import bisect
import csv
import json
import re
from pathlib import Path
from typing import Any, Iterable

from harness.data_rows import to_example
from harness.errors import UserError, not_utf8
from harness.types import Example, Task


def read_examples(path: Path, task: Task, text_field: str, label_field: str, fields_field: str) -> list[Example]:
    """Read a JSONL or CSV file; any bad row is a :class:`UserError` naming ``file:line``."""
    try:
        rows = _read_rows(path)
    except FileNotFoundError:
        raise UserError("no such file", where=str(path)) from None
    except OSError as exc:  # a directory, no read permission, ...
        raise UserError(f"cannot be read ({exc.strerror})", where=str(path)) from None
    except UnicodeDecodeError:
        raise _not_utf8(path) from None
    if not rows:
        raise UserError("no examples", where=str(path))
    return [
        to_example(where, row, task, text_field, label_field, fields_field, i) for i, (where, row) in enumerate(rows)
    ]


def _read_rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    rows: list[tuple[str, dict[str, Any]]] = []
    # utf-8-sig: spreadsheet exports start with a byte-order mark that would otherwise rename the first column.
    if path.suffix.lower() == ".csv":
        return _read_csv_rows(path)
    with path.open(encoding="utf-8-sig") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"not valid JSON ({exc.msg})", where=where) from None
            if not isinstance(row, dict):
                raise UserError("each line must be a JSON object", where=where)
            rows.append((where, row))
    return rows


# The csv module's default field limit (131,072 characters) would make a long text an error; any limit is
# one for the whole process (_csv has no per-reader setting), so it is raised only while a file is read.
# 2**31 - 1 is the largest a C long holds on every platform.
CSV_FIELD_LIMIT = 2**31 - 1


class _Lines:
    """The lines a csv reader takes from ``handle``, kept since :meth:`take` last emptied them: the physical
    lines of the record just read."""

    def __init__(self, handle: Iterable[str]):
        self._handle = iter(handle)
        self.lines: list[str] = []

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = next(self._handle)
        self.lines.append(line)
        return line

    def take(self) -> list[str]:
        lines, self.lines = self.lines, []
        return lines


def _read_csv_rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """Rows of a CSV file, each with ``file:line`` of its first physical line (a quoted field may span lines)."""
    rows: list[tuple[str, dict[str, Any]]] = []
    header: list[str] = []
    last: tuple[int, list[str]] = (1, [])  # the first physical line and the lines of the last record read
    previous_limit = csv.field_size_limit(CSV_FIELD_LIMIT)
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            lines = _Lines(handle)
            reader = csv.reader(lines)
            start = 1
            try:
                for values in reader:
                    last = (start, lines.take())
                    if len(last[1]) > 1:  # a quoted field spans lines: check that a quote opened it, not a slip
                        _check_spanning_record(path, start, last[1], values, header)
                    if values and not header:
                        header = values
                    elif values:  # blank lines are skipped, as csv.DictReader does
                        rows.append((f"{path}:{start}", dict(zip(header, values))))
                    start = reader.line_num + 1
            except csv.Error as exc:
                raise UserError(f"not valid CSV ({exc})", where=f"{path}:{reader.line_num}") from None
    finally:
        csv.field_size_limit(previous_limit)
    problem = _quote_problem(*last)
    quote_line = problem[0] if problem is not None and problem[1] is None else None
    if quote_line is not None:
        # At the end of the file the reader keeps what an unclosed quote swallowed as one field, without a word.
        raise UserError(
            f"unterminated quote starting on line {quote_line}: its field runs to the end of the file",
            where=f"{path}:{quote_line}",
        )
    return rows


def _check_spanning_record(path: Path, start: int, lines: list[str], values: list[str], header: list[str]) -> None:
    """A record whose quoted field runs over several physical lines (``lines``, from line ``start``) is what a
    spreadsheet writes for a text with line breaks, or a quote left open that a quote on a later line happens
    to close, joining the records between into one field. It is taken as written only if it reads as the first:
    every quoted field that spans lines closes with a quote followed by a comma or the end of its line (the
    csv module would go on reading the text after such a quote into the field), and the record has the header's
    number of columns. Otherwise the error names the line where the quote opened."""
    problem = _quote_problem(start, lines)
    if problem is not None and problem[1] is None:
        return  # open to the end of the file: said once the file is read
    if problem is not None:
        opened, closed = problem
        raise UserError(
            f"unterminated quote starting on line {opened}: the quote that closes it on line {closed} "
            f"is followed by text, not a comma or the line's end, so lines {opened} to {closed} would "
            "be read as one field",
            where=f"{path}:{opened}",
        )
    if header and values and len(values) != len(header):
        end = start + len(lines) - 1
        raise UserError(
            f"a quoted field opens on line {start} and runs to line {end}, leaving {len(values)} "
            f"columns where the header has {len(header)}: a quote left open?",
            where=f"{path}:{start}",
        )


_FIELD_END = re.compile(r"[,\r\n]")


def _quote_problem(start: int, lines: list[str]) -> tuple[int, int | None] | None:
    """The first quoted field of ``lines`` (one record, from line ``start``) that a quote left open would
    explain, as ``(the line it opens on, None)`` when it never closes, or ``(the line it opens on, the line
    it closes on)`` when it spans lines and its closing quote is followed by text; None when there is none.
    The states are the csv module's for its default dialect, read leniently as it reads: a quote opens a
    field only at its start, ``""`` inside one is a quote, a closing quote followed by text goes on as
    unquoted text, and a quote elsewhere is text."""
    text = "".join(lines)
    line_starts = [0]
    for line in lines[:-1]:
        line_starts.append(line_starts[-1] + len(line))

    def line_of(offset: int) -> int:
        return start + bisect.bisect_right(line_starts, offset) - 1

    pos, size = 0, len(text)
    while pos < size:
        if text[pos] == '"':
            opened, pos = pos, pos + 1
            while True:
                quote = text.find('"', pos)
                if quote < 0:
                    return line_of(opened), None
                if not text.startswith('"', quote + 1):
                    break
                pos = quote + 2  # "" is a quote inside the field
            after = text[quote + 1 : quote + 2]
            if after and after not in ",\r\n" and line_of(quote) > line_of(opened):
                return line_of(opened), line_of(quote)
            pos = quote + 1
        end = _FIELD_END.search(text, pos)
        if end is None:
            break
        pos = end.end()
    return None


def _not_utf8(path: Path) -> UserError:
    """Name the line and file offset of the first byte that is not UTF-8 (a text decoder's own offset counts
    from the start of its last chunk)."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return not_utf8(path, data, exc)
    return UserError("not UTF-8 text", where=str(path))  # changed since it was read
