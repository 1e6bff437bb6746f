"""Loading a spec's data once, checking every row, and hashing exactly what each run sees."""

from __future__ import annotations

import bisect
import csv
import hashlib
import json
import math
import random
import re
import unicodedata
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable

from harness.errors import UserError, not_utf8
from harness.spec import Spec
from harness.types import Example, Task


@dataclass(frozen=True)
class Datasets:
    """The examples every approach in a comparison sees, with their content hashes (computed once: every
    run of every approach and seed reads them several times)."""

    train: list[Example]
    validation: list[Example]
    test: list[Example]
    # "train" (held out of train), "file" or "split" (given, used as is), "test" (as the seeds did) or "none"
    validation_source: str

    @cached_property
    def train_hash(self) -> str:
        return dataset_hash(self.train)

    @cached_property
    def validation_hash(self) -> str:
        return dataset_hash(self.validation)

    @cached_property
    def test_hash(self) -> str:
        return dataset_hash(self.test)


def dataset_hash(examples: Iterable[Example]) -> str:
    """sha256 of the examples' text and gold answer, in order: equal hashes mean identical data."""
    digest = hashlib.sha256()
    for ex in examples:
        gold = ex.label if ex.fields is None else ex.fields
        digest.update(json.dumps([ex.text, gold], ensure_ascii=False, sort_keys=True).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def load_datasets(
    spec: Spec,
    *,
    data: dict[str, str] | None = None,
    limit_train: int | None = None,
    limit_test: int | None = None,
) -> Datasets:
    """Load train, test and any validation set as the spec (or ``--data``, from :func:`parse_data_option`)
    says, then limit and split.

    ``--data`` replaces the spec's whole dataset, its validation file or split included. A validation set
    that is given is used as is: nothing is held out of train and the spec's ``validation`` fraction is
    ignored. Otherwise ``validation`` holds a stratified fraction out of train. Limits take a stratified
    sample of train and test with the spec's seed, so ``--limit-train 500`` keeps the class balance; they
    never cut a given validation set, which selects checkpoints whatever the sample trained on.
    """
    task = spec.to_task()
    ds = spec.dataset

    def read(path: Path) -> list[Example]:
        return read_examples(path, task, ds.text_field, ds.label_field, ds.fields_field)

    def read_hub(split: str) -> list[Example]:
        return _read_hub(ds.hub, ds.config, split, task, ds.text_field, ds.label_field, ds.fields_field)

    validation: list[Example] | None = None
    source = "train"
    if data:
        if data.get("validation") and spec.validation in ("test", "none"):
            raise UserError(
                f"validation= and {spec.where}'s 'validation: {spec.validation}' both say how "
                "checkpoints are selected; remove one",
                where="--data",
            )
        train, test = read(Path(data["train"])), read(Path(data["test"]))
        if data.get("validation"):
            validation, source = read(Path(data["validation"])), "file"
    elif ds.train and ds.test:
        base = spec.path.parent if spec.path else Path(".")
        train, test = read(base / ds.train), read(base / ds.test)
        if ds.validation:
            validation, source = read(base / ds.validation), "file"
    elif ds.hub:
        train, test = read_hub(ds.train_split), read_hub(ds.test_split)
        if ds.validation_split:
            validation, source = read_hub(ds.validation_split), "split"
    else:
        raise UserError(
            "the spec names no hub dataset or files: give --data train=PATH,test=PATH (validation=PATH optional)",
            where=f"{spec.where}: dataset",
        )

    train = _sample(train, limit_train, spec.seed, "--limit-train")
    test = _sample(test, limit_test, spec.seed, "--limit-test")
    if validation is not None:
        return Datasets(train, validation, test, source)
    if spec.validation == "test":
        return Datasets(train, test, test, "test")
    if spec.validation == "none":
        return Datasets(train, [], test, "none")
    train, held_out = _hold_out(train, spec.validation, spec.seed)
    if not train:
        raise UserError(f"holding out validation: {spec.validation} leaves no training examples", where=spec.where)
    return Datasets(train, held_out, test, "train")


DATA_PARTS = ("train", "validation", "test")


def parse_data_option(text: str) -> dict[str, str]:
    """``train=a.jsonl,validation=v.jsonl,test=b.jsonl`` -> ``{"train": "a.jsonl", ...}``; validation is optional."""
    expected = "expected train=PATH,test=PATH with an optional validation=PATH"
    parts: dict[str, str] = {}
    for item in text.split(","):
        if not item:
            continue
        key, sep, path = item.partition("=")
        if not sep or not path or key not in DATA_PARTS:
            raise UserError(f"{expected}, got {item!r}", where="--data")
        if key in parts:
            raise UserError(f"{key}= given twice", where="--data")
        parts[key] = path
    missing = [key for key in ("train", "test") if key not in parts]
    if missing:
        raise UserError(f"{expected}; {missing[0]}= is missing in {text!r}", where="--data")
    return parts


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
        _to_example(where, row, task, text_field, label_field, fields_field, i) for i, (where, row) in enumerate(rows)
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


def _read_hub(
    hub: str, config: str | None, split: str, task: Task, text_field: str, label_field: str, fields_field: str
) -> list[Example]:
    try:
        import datasets
    except ImportError:
        raise UserError(
            "hub datasets need the 'datasets' package: pip install 'harness-compare[hub]'", where=hub
        ) from None
    try:
        table = datasets.load_dataset(hub, config, split=split)
    except Exception as exc:  # the hub client raises many types; the user needs the message
        raise UserError(
            f"could not load split {split!r}: {type(exc).__name__}: {exc}".splitlines()[0], where=hub
        ) from None
    if len(table) == 0:
        raise UserError(f"split {split!r} has no examples", where=hub)
    return [
        _to_example(f"{hub}[{split}] row {i}", row, task, text_field, label_field, fields_field, i)
        for i, row in enumerate(table)
    ]


def _to_example(
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


def _sample(examples: list[Example], limit: int | None, seed: int, flag: str) -> list[Example]:
    if limit is None or limit >= len(examples):
        return examples
    if limit <= 0:
        raise UserError(f"must be positive, got {limit}", where=flag)
    return _split(examples, size=limit, seed=seed)[0]


def _hold_out(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    size = max(1, round(len(examples) * fraction))
    held, kept = _split(examples, size=size, seed=seed)
    return kept, held


def _split(examples: list[Example], *, size: int, seed: int) -> tuple[list[Example], list[Example]]:
    """Stratified (by label) seeded split: ``size`` examples, then the rest, each in file order."""
    from sklearn.model_selection import train_test_split

    indices = list(range(len(examples)))
    labels = [ex.label for ex in examples]
    stratify = labels if labels[0] is not None and _can_stratify(labels, size) else None
    if stratify is None:
        rng = random.Random(seed)
        chosen = set(rng.sample(indices, size))
    else:
        chosen_list, _ = train_test_split(indices, train_size=size, random_state=seed, stratify=stratify)
        chosen = set(chosen_list)
    return [examples[i] for i in indices if i in chosen], [examples[i] for i in indices if i not in chosen]


def _can_stratify(labels: list[Any], size: int) -> bool:
    counts: dict[Any, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return min(counts.values()) >= 2 and len(counts) <= size <= len(labels) - len(counts)


def data_checks(data: Datasets, task: Task) -> dict[str, int]:
    """Counts of what is legal but almost always a mistake: test texts also in train or validation
    (leakage), texts repeated within a split, and labels with no training example. Texts are compared as
    written, after trimming white space."""

    def texts(examples: list[Example]) -> list[str]:
        return [ex.text.strip() for ex in examples]

    train, test = texts(data.train), texts(data.test)
    seen = set(train) | (set(texts(data.validation)) if data.validation_source != "test" else set())
    counts = {
        "test_texts_in_train": sum(text in seen for text in test),
        "duplicate_train_texts": len(train) - len(set(train)),
        "duplicate_test_texts": len(test) - len(set(test)),
    }
    if task.type == "classification":
        present = {ex.label for ex in data.train}
        counts["labels_without_training_examples"] = sum(label not in present for label in task.labels)
    return counts


DATA_WARNINGS = {
    "test_texts_in_train": "{n} test texts also appear in train or validation: leakage inflates the test figures",
    "duplicate_train_texts": "{n} training texts are duplicates of others",
    "duplicate_test_texts": "{n} test texts are duplicates of others: they count twice",
    "labels_without_training_examples": "{n} labels have no training example",
}


def data_warnings(counts: dict[str, int]) -> list[str]:
    """One line per non-zero count of :func:`data_checks`."""
    return [DATA_WARNINGS[key].format(n=n) for key, n in counts.items() if n]
