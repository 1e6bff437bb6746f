"""Loading a spec's data once: from files, the hub or ``--data``, limited and split, hashed as each run sees it.

What is loaded is also counted for what is legal but almost always a mistake (:func:`data_checks`). Reading a
file is harness.data_files', checking each row harness.data_rows'."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable

from harness.data_files import read_examples
from harness.data_rows import to_example
from harness.errors import UserError
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

    def read_hub(hub: str, split: str) -> list[Example]:
        return _read_hub(hub, ds.config, split, task, ds.text_field, ds.label_field, ds.fields_field)

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
        train, test = read_hub(ds.hub, ds.train_split), read_hub(ds.hub, ds.test_split)
        if ds.validation_split:
            validation, source = read_hub(ds.hub, ds.validation_split), "split"
    else:
        raise UserError(
            "the spec names no hub dataset or files: give --data train=PATH,test=PATH (validation=PATH optional)",
            where=f"{spec.where}: dataset",
        )

    # The options replace the spec's own sample sizes (dataset.limit_train, dataset.limit_test).
    train = _sample(train, ds.limit_train if limit_train is None else limit_train, spec.seed, "--limit-train")
    test = _sample(test, ds.limit_test if limit_test is None else limit_test, spec.seed, "--limit-test")
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
        to_example(f"{hub}[{split}] row {i}", row, task, text_field, label_field, fields_field, i)
        for i, row in enumerate(table)
    ]


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
