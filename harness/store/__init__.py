"""The results store, as a package: harness.store.store holds it whole while it is split a module per job."""

from harness.store.store import (
    Store,
    comparison_to_dict,
    jsonable,
    load_artifact,
    read_predictions,
    read_scored,
    removed_lines,
    resumable,
    save_artifact,
    shown_as,
    size_text,
    skipped_lines,
    write_json,
    write_predictions,
    write_text,
)

__all__ = [
    "Store",
    "comparison_to_dict",
    "jsonable",
    "load_artifact",
    "read_predictions",
    "read_scored",
    "removed_lines",
    "resumable",
    "save_artifact",
    "shown_as",
    "size_text",
    "skipped_lines",
    "write_json",
    "write_predictions",
    "write_text",
]
