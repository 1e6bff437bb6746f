from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from harness.data import dataset_hash, load_datasets, read_examples
from harness.spec import Spec
from harness.types import Example, Task


def make_spec(tmp_path: Path, **extra) -> Spec:
    body = {"name": "s", "task": {"type": "classification", "labels": ["neg", "pos"]},
            "dataset": {"train": "train.jsonl", "test": "test.jsonl"}, **extra}
    spec = Spec.model_validate(body)
    spec.path = tmp_path / "s.yaml"
    return spec


def write_rows(path: Path, n: int) -> None:
    with path.open("w") as handle:
        for i in range(n):
            handle.write(json.dumps({"text": f"review number {i}", "label": ["neg", "pos"][i % 4 == 0]}) + "\n")


def test_hash_depends_on_exact_text_labels_and_order():
    a = [Example("1", "good film", "pos"), Example("2", "bad film", "neg")]
    assert dataset_hash(a) == dataset_hash([Example("x", "good film", "pos"), Example("y", "bad film", "neg")])
    assert dataset_hash(a) != dataset_hash(a[::-1])
    assert dataset_hash(a) != dataset_hash([a[0], Example("2", "bad film", "pos")])


def test_limits_and_validation_are_stratified_seeded_and_disjoint(tmp_path):
    write_rows(tmp_path / "train.jsonl", 400)
    write_rows(tmp_path / "test.jsonl", 100)
    spec = make_spec(tmp_path, validation=0.25)
    data = load_datasets(spec, limit_train=200, limit_test=40)
    assert (len(data.train), len(data.validation), len(data.test)) == (150, 50, 40)
    assert Counter(ex.label for ex in data.validation) == {"neg": 37, "pos": 13} or Counter(
        ex.label for ex in data.validation) == {"neg": 38, "pos": 12}
    assert not {ex.text for ex in data.train} & {ex.text for ex in data.validation}
    again = load_datasets(spec, limit_train=200, limit_test=40)
    assert (again.train_hash, again.test_hash) == (data.train_hash, data.test_hash)
    assert load_datasets(make_spec(tmp_path, validation="test")).validation_source == "test"


def test_labels_may_be_ids_or_names(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": "neg"}\n')
    examples = read_examples(path, Task("classification", ("neg", "pos")), "text", "label", "fields")
    assert [ex.label for ex in examples] == ["pos", "neg"]


def test_hub_loader_reads_a_local_dataset_directory(tmp_path):
    """The hub code path (datasets.load_dataset) with a local directory instead of a hub id."""
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    write_rows(folder / "train.jsonl", 20)
    write_rows(folder / "test.jsonl", 8)
    spec = Spec.model_validate({"name": "h", "task": {"type": "classification", "labels": ["neg", "pos"]},
                                "dataset": {"hub": str(folder)}, "validation": "none"})
    data = load_datasets(spec)
    assert (len(data.train), len(data.test)) == (20, 8)
    assert data.test[0] == Example("0", "review number 0", "pos")
