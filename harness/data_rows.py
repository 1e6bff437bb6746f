"""Checking one row of data, a file's or a hub split's, and making it an Example: its text and gold answer.

A bad row is a UserError naming where it is (``file:line`` or the split's row)."""

from __future__ import annotations

import json
import math
import re
import unicodedata
from typing import Any

from harness.errors import UserError
from harness.types import Example, Task


def to_example(
    where: str, row: dict[str, Any], task: Task, text_field: str, label_field: str, fields_field: str, index: int
) -> Example:
    text = row.get(text_field)
    if not isinstance(text, str):
        raise UserError(f"missing text field {text_field!r}", where=where)
    if is_blank(text):
        raise UserError("empty text (nothing visible in it)" if text.strip() else "empty text", where=where)
    example_id = str(row.get("id", index))
    if task.type == "extraction":
        fields = row.get(fields_field)
        if not isinstance(fields, dict):
            raise UserError(f"missing fields object {fields_field!r}", where=where)
        unknown = [f for f in fields if f not in task.fields]
        if unknown:
            raise UserError(
                f"field {unknown[0]!r} is not one of the spec's fields ({', '.join(task.fields)})", where=where
            )
        missing = [f for f in task.fields if f not in fields]
        if missing:
            raise UserError(f'field {missing[0]!r} of the spec is missing (an empty value is "" or null)', where=where)
        for name, value in fields.items():
            problem = _gold_value_problem(value)
            if problem:
                raise UserError(f"field {name!r} is {problem}; a gold value is a string, a number or null", where=where)
        # null is the empty value, as in the scorer (harness.metrics.normalise); a number is its text.
        return Example(
            example_id,
            text,
            fields={
                k: "" if v is None else v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
                for k, v in fields.items()
            },
        )
    label = row.get(label_field)
    if label is None:
        raise UserError(f"missing label field {label_field!r}", where=where)
    if isinstance(label, (bool, float)) or not isinstance(label, (str, int)):
        # An id is an integer (CSV's text "2" included); 2.0, true or [2] would only ever match by accident.
        problem = _gold_value_problem(label) or f"the number {label!r}, not an integer"
        raise UserError(
            f"label field {label_field!r} is {problem}; a label is one of the spec's label names or an integer id",
            where=where,
        )
    if isinstance(label, str) and re.fullmatch(r"\s*-?[0-9]+\s*", label) and label not in task.labels:
        label = int(
            label
        )  # CSV cells are strings; an id written as text is still an id (ASCII digits only: "²" is not)
    if isinstance(label, int) and not isinstance(label, bool):
        if not 0 <= label < len(task.labels):
            raise UserError(f"label id {label} outside the spec's {len(task.labels)} labels", where=where)
        label = task.labels[label]
    if label not in task.labels:
        raise UserError(f"label {label!r} is not one of the spec's labels ({', '.join(task.labels)})", where=where)
    return Example(example_id, text, label=label)


def _gold_value_problem(value: Any) -> str | None:
    """What makes ``value`` (parsed JSON, or a hub dataset's value) no answer a model's text could equal, or
    None: a list, an object or a boolean (their JSON text would be compared), or a number that is not finite."""
    if isinstance(value, bool):
        return f"a boolean ({json.dumps(value)})"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, float) and not math.isfinite(value):
        return f"the number {value}"
    if value is not None and not isinstance(value, (str, int, float)):
        return f"a {type(value).__name__}"
    return None


def is_blank(text: str) -> bool:
    """Nothing a model could read: white space, control and format characters (zero-width spaces, byte-order
    marks, joiners) only."""
    return all(ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Zs", "Zl", "Zp") for ch in text)
