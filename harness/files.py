"""Writing a file whole or not at all: what every part of harness that writes JSON or text a reader may open
at the same moment (the store, the Trainer glue, reports) writes with."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def write_text(path: Path, text: str) -> None:
    """Written whole or not at all, also when two processes, or two threads of one (a grid's runs), write the
    same file at once."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
