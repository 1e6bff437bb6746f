"""The data cache: the datasets written once by the parent, as one JSON file named by their hashes, for every unit.

Data crosses to a unit's process once, as this file; the Ray executor ships the file's bytes to its workers.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from harness.data_load import Datasets
from harness.types import Example


def data_cache_file(data: Datasets, folder: Path) -> Path:
    """Where :func:`write_data_cache` keeps these datasets: named by their hashes."""
    from harness.identity import digest

    key = digest([data.train_hash, data.validation_hash, data.test_hash, data.validation_source])
    return folder / f"{key[:32]}.json"


def write_data_cache(data: Datasets, folder: Path) -> Path:
    """The datasets as one JSON file named by their hashes; an existing file is the same data."""
    from harness.files import write_json

    path = data_cache_file(data, folder)
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        write_json(
            path,
            {
                "validation_source": data.validation_source,
                **{split: [asdict(ex) for ex in getattr(data, split)] for split in ("train", "validation", "test")},
            },
        )
    return path


def read_data_cache(path: Path) -> Datasets:
    raw = json.loads(path.read_text(encoding="utf-8"))
    train, validation, test = ([Example(**row) for row in raw[split]] for split in ("train", "validation", "test"))
    return Datasets(train, validation, test, validation_source=raw["validation_source"])
