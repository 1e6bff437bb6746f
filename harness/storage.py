"""Where runs' artifacts live apart from the store: ``--storage URI`` (or ``HARNESS_STORAGE``), a local path or any
fsspec URL (``s3://bucket/prefix``, ``gs://...``, ``file://...``), for a cluster whose nodes share no disk.

With storage, a run's model, checkpoints and predictions are kept under ``runs/<run_id>/`` there; the store's
run directory keeps the record, the training log, a copy of the predictions (scoring and reports read them)
and ``storage.json``, which names the storage: every reader of a run's artifacts (measure, ``bench --run``,
``try``, resume, ``store ls`` and ``store gc``) finds them through it. Without storage nothing changes: the
artifacts are in the run's directory in the store.

Units on other machines work on a local copy (:func:`local_copy`, under the user's cache directory) and
write back: the train unit after each checkpoint (the newest complete one is what a unit that died resumes
from, on any node) and when it finishes (``train_result.json`` last: its presence says training finished);
the measure unit its predictions; the training log goes beside the model. Credentials come from the
environment (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ``GOOGLE_APPLICATION_CREDENTIALS``, ...), never from
the URI.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from harness.errors import UserError

STORAGE_ENV = "HARNESS_STORAGE"
MARKER = "storage.json"  # in a run's directory in the store: {"uri": ...}, where its artifacts are
CHECK_SECONDS = 30.0  # a storage that has not answered a write and a read by then is one line, not minutes of retries


def storage_uri(option: str | None) -> str | None:
    """``--storage``, else ``HARNESS_STORAGE``, else None (artifacts in the store); a local path made absolute, as
    every process and every later command reads it."""
    uri = option or os.environ.get(STORAGE_ENV) or None
    return uri if uri is None or "://" in uri else str(Path(uri).expanduser().absolute())


def run_key(run_id: str, *parts: str) -> str:
    """A run's place in storage: ``runs/<run_id>/...``."""
    return "/".join(("runs", run_id, *parts))


class Storage:
    """A storage location, opened through fsspec; keys are ``/``-separated paths below it."""

    def __init__(self, uri: str):
        parts = urlsplit(uri)
        if "://" in uri and (parts.username or parts.password):
            raise UserError(
                "credentials do not go in the storage URL: give them in the environment "
                "(AWS_ACCESS_KEY_ID, GOOGLE_APPLICATION_CREDENTIALS, ...)",
                where="--storage",
            )
        self.uri = uri.rstrip("/") or uri
        try:
            import fsspec
        except ImportError:
            raise UserError(
                "--storage needs fsspec: pip install 'harness-compare[storage]'", where="--storage"
            ) from None
        try:
            self.fs, root = fsspec.core.url_to_fs(self.uri)
        except ImportError as exc:  # fsspec says which package: "Install s3fs to access S3"
            raise UserError(f"{self.uri}: {str(exc).splitlines()[0]}", where="--storage") from None
        except ValueError as exc:  # an unknown protocol
            raise UserError(f"{self.uri}: {str(exc).splitlines()[0]}", where="--storage") from None
        self.root = root.rstrip("/")
        self.local = getattr(self.fs, "protocol", None) in ("file", "local", ("file", "local"))

    def __repr__(self) -> str:
        return f"Storage({self.uri!r})"

    def path(self, key: str) -> str:
        return f"{self.root}/{key}" if key else self.root

    def check(self, seconds: float = CHECK_SECONDS) -> None:
        """Write, read back and delete a small object: an unreachable, missing or read-only storage is one line
        (naming it) before anything trains."""
        outcome: dict[str, BaseException | None] = {}
        probe = f".harness-check-{secrets.token_hex(4)}"

        def attempt() -> None:
            try:
                self.fs.makedirs(self.root, exist_ok=True)
                self.fs.pipe_file(self.path(probe), b"harness")
                if self.fs.cat_file(self.path(probe)) != b"harness":
                    raise OSError("what was written reads back different")
                self.fs.rm_file(self.path(probe))
                outcome["error"] = None
            except BaseException as exc:  # handed to the caller
                outcome["error"] = exc

        thread = threading.Thread(target=attempt, name="harness-storage-check", daemon=True)
        thread.start()
        thread.join(seconds)
        if "error" not in outcome:
            raise UserError(f"{self.uri} did not answer a write within {seconds:g} s", where="--storage")
        error = outcome["error"]
        if error is not None:
            text = str(error).splitlines()[0] if str(error) else ""
            raise UserError(
                f"cannot write to {self.uri}: {type(error).__name__}: {text}".rstrip(": "), where="--storage"
            ) from None

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self.path(key)))

    def read_text(self, key: str) -> str:
        return bytes(self.fs.cat_file(self.path(key))).decode("utf-8")

    def read_json(self, key: str) -> Any:
        return json.loads(self.read_text(key))

    def files(self, key: str) -> list[str]:
        """The keys of the files below ``key``, relative to it."""
        base = self.path(key).rstrip("/")
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return []
        return sorted(str(path)[len(base) + 1 :] for path in found if str(path).startswith(base + "/"))

    def _writable(self, key: str) -> str:
        """The path of ``key``, its folder made where storage is a directory tree (an object store's keys need none)."""
        if self.local:
            self.fs.makedirs(self.path(key).rpartition("/")[0], exist_ok=True)
        return self.path(key)

    def put_file(self, local: Path, key: str) -> None:
        self.fs.put_file(str(local), self._writable(key))

    def write_text(self, key: str, text: str) -> None:
        self.fs.pipe_file(self._writable(key), text.encode("utf-8"))

    def get_file(self, key: str, local: Path) -> None:
        self.fs.get_file(self.path(key), str(local))

    def put_dir(self, local: Path, key: str, last: tuple[str, ...] = ()) -> None:
        """Upload the files below ``local`` to ``key``; those named in ``last`` after the others (a reader takes
        the folder as complete once they are there)."""
        files = [p for p in local.rglob("*") if p.is_file() and not p.name.endswith(".tmp")]
        for path in sorted(files, key=lambda p: (p.name in last, p)):
            self.put_file(path, f"{key}/{path.relative_to(local).as_posix()}")

    def get_dir(self, key: str, local: Path) -> None:
        """The files below ``key`` in the folder ``local`` (which must not exist yet): it appears whole or not at
        all; where another process of this machine made it first, its copy is kept."""
        names = self.files(key)
        if not names:
            raise FileNotFoundError(f"nothing under {self.uri}/{key}")
        scratch = local.with_name(f".{local.name}.{os.getpid()}-{threading.get_ident()}")
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        for name in names:
            (scratch / name).parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(self.path(f"{key}/{name}"), str(scratch / name))
        try:
            scratch.replace(local)
        except OSError:
            if not local.is_dir():
                raise
            shutil.rmtree(scratch, ignore_errors=True)  # another process on this machine put the same files first

    def remove(self, key: str) -> None:
        try:
            self.fs.rm(self.path(key), recursive=True)
        except FileNotFoundError:
            pass

    def newest_checkpoint(self, key: str) -> str | None:
        """The newest complete Trainer checkpoint in the folder ``key`` (its ``trainer_state.json``, written last,
        is there), by name (``checkpoint-800``), or None."""
        names = self.files(key)
        complete = [n.split("/")[0] for n in names if n.endswith("/trainer_state.json") and n.count("/") == 1]
        newest = max(complete, key=checkpoint_step, default=None)
        return newest if newest is not None and checkpoint_step(newest) >= 0 else None

    def size(self, key: str) -> int | None:
        """Bytes below ``key``, or None when there is nothing (or it cannot be read)."""
        try:
            return int(self.fs.du(self.path(key))) if self.fs.exists(self.path(key)) else None
        except (OSError, ValueError):
            return None


_OPEN: dict[str, Storage] = {}


def open_storage(uri: str) -> Storage:
    """The storage at ``uri``, opened once per process."""
    if uri not in _OPEN:
        _OPEN[uri] = Storage(uri)
    return _OPEN[uri]


def cache_root() -> Path:
    """Where a machine keeps its local copies of what is in storage: ``HARNESS_CACHE``, else the user's cache
    directory (``XDG_CACHE_HOME`` or ``~/.cache``) ``/harness/storage``. Never the store."""
    if os.environ.get("HARNESS_CACHE"):
        return Path(os.environ["HARNESS_CACHE"]) / "storage"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "harness" / "storage"


def local_place(uri: str, key: str) -> Path:
    """The local folder for ``key`` of the storage at ``uri`` on this machine."""
    return cache_root() / hashlib.sha256(uri.encode()).hexdigest()[:16] / key


def local_copy(uri: str, key: str) -> Path:
    """The folder ``key`` of the storage at ``uri`` on this machine's disk, downloaded once (a finished run's
    artifacts never change); for a local storage, the folder itself."""
    storage = open_storage(uri)
    if storage.local:
        return Path(storage.path(key))
    folder = local_place(uri, key)
    if not (folder / ".complete").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        storage.get_dir(key, folder)
        (folder / ".complete").write_text("", encoding="utf-8")
    return folder


def marker(run_dir: Path) -> str | None:
    """The storage a run's artifacts are in (its ``storage.json``), or None: in the run's directory."""
    try:
        return str(json.loads((run_dir / MARKER).read_text(encoding="utf-8"))["uri"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class Mirror:
    """A train unit's working folder, written back to storage: each complete checkpoint as the Trainer saves it
    (and those it rotated away removed), then the finished model. Made by :func:`harness.units.train_unit`."""

    def __init__(self, uri: str, key: str, local: Path):
        self.storage = open_storage(uri)
        self.key = key
        self.local = local

    def fetch_checkpoint(self) -> str | None:
        """The newest complete checkpoint in storage into the local folder (a unit that died on any node left
        it); its name, or None."""
        newest = self.storage.newest_checkpoint(f"{self.key}/checkpoints")
        if newest is None:
            return None
        self.storage.get_dir(f"{self.key}/checkpoints/{newest}", self.local / "checkpoints" / newest)
        return newest

    def checkpoint_saved(self, folder: Path) -> None:
        """After the Trainer saved (and rotated) its checkpoints in ``folder``: upload the new ones,
        ``trainer_state.json`` last, and remove from storage those no longer kept locally."""
        kept = {p.name for p in folder.glob("checkpoint-*") if p.is_dir()}
        stored = {n.split("/", 1)[0] for n in self.storage.files(f"{self.key}/checkpoints")}
        for name in sorted(kept - stored, key=checkpoint_step):
            self.storage.put_dir(folder / name, f"{self.key}/checkpoints/{name}", last=("trainer_state.json",))
        for name in stored - kept:
            self.storage.remove(f"{self.key}/checkpoints/{name}")

    def finish(self, last: str, log: list[dict[str, Any]]) -> None:
        """The training log and the finished model up, ``last`` (``train_result.json``) last; the checkpoints down."""
        lines = "".join(json.dumps(entry, default=str) + "\n" for entry in log)
        self.storage.write_text(f"{self.key.rpartition('/')[0]}/train_log.jsonl", lines)
        self.storage.put_dir(self.local, self.key, last=(last,))
        self.storage.remove(f"{self.key}/checkpoints")


def checkpoint_step(name: str) -> int:
    """The step in a Trainer checkpoint's name (``checkpoint-16``), or -1 for a name that has none."""
    step = name.rpartition("-")[2]
    return int(step) if step.isdigit() else -1


ACTIVE: list[Mirror] = []  # the mirror of the train unit running in this process (hf_trainer reports to it)


def checkpoint_saved(folder: Path) -> None:
    """Called by the Trainer glue after each checkpoint: written back where a train unit mirrors to storage."""
    for mirror in ACTIVE:
        mirror.checkpoint_saved(folder)
