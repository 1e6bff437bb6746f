from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from harness.data_files import read_examples
from harness.data_load import dataset_hash, load_datasets, parse_data_option
from harness.errors import UserError
from harness.spec import Spec, load_spec
from harness.types import Example, Task


def make_spec(tmp_path: Path, **extra) -> Spec:
    body = {
        "name": "s",
        "task": {"type": "classification", "labels": ["neg", "pos"]},
        "dataset": {"train": "train.jsonl", "test": "test.jsonl"},
        **extra,
    }
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
        ex.label for ex in data.validation
    ) == {"neg": 38, "pos": 12}
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
    spec = Spec.model_validate(
        {
            "name": "h",
            "task": {"type": "classification", "labels": ["neg", "pos"]},
            "dataset": {"hub": str(folder)},
            "validation": "none",
        }
    )
    data = load_datasets(spec)
    assert (len(data.train), len(data.test)) == (20, 8)
    assert data.test[0] == Example("0", "review number 0", "pos")


def test_data_option_takes_an_optional_validation_file():
    assert parse_data_option("train=a.jsonl,test=b.jsonl") == {"train": "a.jsonl", "test": "b.jsonl"}
    assert parse_data_option("train=a.jsonl,validation=v.csv,test=b.jsonl") == {
        "train": "a.jsonl",
        "validation": "v.csv",
        "test": "b.jsonl",
    }


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "train=a,valid=v,test=b",
            "--data: expected train=PATH,test=PATH with an optional validation=PATH, got 'valid=v'",
        ),
        (
            "train=a,validation=v",
            "--data: expected train=PATH,test=PATH with an optional validation=PATH; test= is missing",
        ),
        ("train=a,test=b,test=c", "--data: test= given twice"),
        ("train=a,test=", "--data: expected train=PATH,test=PATH with an optional validation=PATH, got 'test='"),
    ],
)
def test_data_option_errors(text, message):
    with pytest.raises(UserError) as info:
        parse_data_option(text)
    assert message in str(info.value)


def test_a_validation_file_is_used_as_is_and_nothing_is_held_out(tmp_path):
    write_rows(tmp_path / "train.jsonl", 40)
    write_rows(tmp_path / "test.jsonl", 12)
    write_rows(tmp_path / "dev.jsonl", 9)
    spec = make_spec(tmp_path, validation=0.25)  # the fraction is ignored once a validation set is given
    data = {
        "train": str(tmp_path / "train.jsonl"),
        "validation": str(tmp_path / "dev.jsonl"),
        "test": str(tmp_path / "test.jsonl"),
    }
    given = load_datasets(spec, data=data, limit_train=20)
    assert (len(given.train), len(given.validation), len(given.test)) == (20, 9, 12)
    assert given.validation_source == "file"
    assert given.validation_hash == dataset_hash(
        read_examples(tmp_path / "dev.jsonl", spec.to_task(), "text", "label", "fields")
    )
    # Without validation= the same data holds a quarter of train out, as before.
    held = load_datasets(spec, data={"train": data["train"], "test": data["test"]})
    assert (len(held.train), len(held.validation), held.validation_source) == (30, 10, "train")
    # The spec's own dataset.validation, relative to the spec file, works the same way.
    in_spec = make_spec(tmp_path, dataset={"train": "train.jsonl", "validation": "dev.jsonl", "test": "test.jsonl"})
    from_spec = load_datasets(in_spec)
    assert (len(from_spec.train), len(from_spec.validation), from_spec.validation_source) == (40, 9, "file")
    assert from_spec.validation_hash == given.validation_hash


def test_a_validation_file_and_validation_test_are_ambiguous(tmp_path):
    write_rows(tmp_path / "train.jsonl", 10)
    data = {
        "train": str(tmp_path / "train.jsonl"),
        "validation": str(tmp_path / "train.jsonl"),
        "test": str(tmp_path / "train.jsonl"),
    }
    for choice in ("test", "none"):
        with pytest.raises(UserError, match=rf"--data: validation= and .*s.yaml's 'validation: {choice}' both say"):
            load_datasets(make_spec(tmp_path, validation=choice), data=data)


def test_hub_validation_split_of_a_local_dataset_directory(tmp_path):
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    write_rows(folder / "train.jsonl", 20)
    write_rows(folder / "validation.jsonl", 6)
    write_rows(folder / "test.jsonl", 8)
    spec = Spec.model_validate(
        {
            "name": "h",
            "task": {"type": "classification", "labels": ["neg", "pos"]},
            "dataset": {"hub": str(folder), "validation_split": "validation"},
        }
    )
    data = load_datasets(spec)
    assert (len(data.train), len(data.validation), len(data.test), data.validation_source) == (20, 6, 8, "split")


def test_a_spec_without_data_asks_for_data_option():
    with pytest.raises(UserError) as info:
        load_datasets(load_spec("waybill"))
    assert str(info.value).endswith(
        "waybill.yaml: dataset: the spec names no hub dataset or files: give --data "
        "train=PATH,test=PATH (validation=PATH optional)"
    )


def test_waybill_from_shared_with_its_dev_split(shared):
    folder = shared / "data" / "waybill"
    data = {
        part: str(folder / f"{name}.jsonl")
        for part, name in (("train", "train"), ("validation", "dev"), ("test", "test"))
    }
    loaded = load_datasets(load_spec("waybill"), data=data)
    assert (len(loaded.train), len(loaded.validation), len(loaded.test)) == (1600, 200, 200)
    assert loaded.validation_source == "file"
    first = loaded.validation[0]
    assert first.text.startswith("喻晓刚") and first.fields["phone"] == "18513386163" and first.label is None
    assert set(first.fields) == {"name", "phone", "province", "city", "district", "specific_location"}


CSV_TASK = Task(type="classification", labels=("neg", "pos"))


def read_csv(path: Path, text: str) -> list[Example]:
    path.write_text(text, encoding="utf-8")
    return read_examples(path, CSV_TASK, "text", "label", "fields")


def test_csv_quotes_that_close_are_read_as_the_csv_module_reads_them(tmp_path):
    # A doubled quote inside quotes, a quote inside an unquoted field, text after a closing quote (read leniently),
    # a quoted last field that ends in a newline, and no newline at the end of the file.
    text = 'text,label\n"he said ""fine""\nthen left",pos\nab"c,neg\n"x"y,pos\n"two\nlines\n",neg\n"last ""one""",pos'
    assert [(ex.text, ex.label) for ex in read_csv(tmp_path / "ok.csv", text)] == [
        ('he said "fine"\nthen left', "pos"),
        ('ab"c', "neg"),
        ("xy", "pos"),
        ("two\nlines\n", "neg"),
        ('last "one"', "pos"),
    ]


@pytest.mark.parametrize(
    "text, line",
    [
        ('text,label\ngood,pos\n"opens here,neg\nswallowed,pos\n', 3),
        ('text,label\r\ngood,pos\r\n"opens ""here""\r\nswallowed,neg\r\n', 3),  # CRLF, a doubled quote inside
        ('text,label\ngood,pos\nlabel opens,"neg\n', 3),  # in the last field, no line after it
        ('"text,label\ngood,pos\n', 1),  # in the header
    ],
    ids=["text", "crlf-doubled", "label", "header"],
)
def test_an_unterminated_csv_quote_is_an_error_on_the_line_it_opens(tmp_path, text, line):
    path = tmp_path / "bad.csv"
    with pytest.raises(UserError) as info:
        read_csv(path, text)
    assert (
        str(info.value)
        == f"{path}:{line}: unterminated quote starting on line {line}: its field runs to the end of the file"
    )


def test_a_csv_error_is_one_line_naming_the_physical_line_and_the_limit_is_put_back(tmp_path, monkeypatch):
    import csv

    import harness.data_files

    before = csv.field_size_limit()
    assert len(read_csv(tmp_path / "long.csv", f'text,label\n"{"x" * 200_000}",pos\n')[0].text) == 200_000
    assert csv.field_size_limit() == before  # raised while a file is read, not for the whole process
    monkeypatch.setattr(harness.data_files, "CSV_FIELD_LIMIT", 10)  # past any real limit's size, the error is the same
    path = tmp_path / "over.csv"
    with pytest.raises(UserError) as info:
        read_csv(path, 'text,label\nshort,pos\n"two\nlines and over ten",neg\n')
    assert str(info.value) == f"{path}:4: not valid CSV (field larger than field limit (10))"
    assert csv.field_size_limit() == before
