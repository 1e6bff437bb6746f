"""What a run is: the identity of what was trained, and of how it was measured.

A trained model is expensive and a measurement is cheap, so a run has two identities:

- the **training identity**: the approach that trains, the settings that affect training, the train and
  validation data, the seed, the model's exact identity (a hub id with its resolved revision, or the
  content hash of a local directory or file), a fingerprint of the source code that trains, and the
  versions of the libraries that train;
- the **measurement identity** on top of it: the approach that serves (itself or an engine), its
  predict-only settings, the test data, the latency options, the machine and device, and the code and
  library versions that measure.

A stored trained artifact is reused by every measurement whose training identity matches; a stored row is
reused whole when both match. Each identity is kept in the record as a dict, so a new row can say exactly
what changed.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import marshal
import os
import sys
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

# Libraries whose version changes what training computes.
TRAINING_LIBRARIES = ("torch", "transformers", "peft", "accelerate")
# ... and those a measurement may run on.
SERVING_LIBRARIES = (*TRAINING_LIBRARIES, "onnxruntime", "onnxruntime-gpu", "vllm", "harness-compare")

# Modules of the harness package that present, store or time results and never change what a model
# learns: editing them re-measures but does not retrain. Every other module (a new one too) counts as
# training code, so forgetting to list one errs on the side of training again.
NOT_TRAINING_CODE = {
    "__init__.py", "__main__.py", "bench.py", "cli.py", "identity.py", "launcher.py", "measure.py", "packing.py",
    "progress.py", "pytest_plugin.py", "report.py", "store.py", "testing.py",
}


def digest(value: Any) -> str:
    """sha256 of a JSON-able value, keys sorted: the key of an identity dict."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def file_sha256(path: Path, cache: dict[str, Any] | None = None) -> str:
    """A file's sha256, remembered in ``cache`` by path, size and modification time (weights are large)."""
    stat = path.stat()
    stamp = f"{stat.st_size}:{stat.st_mtime_ns}"
    key = str(path.resolve())
    if cache is not None and cache.get(key, {}).get("stamp") == stamp:
        return cache[key]["sha256"]
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    if cache is not None:
        cache[key] = {"stamp": stamp, "sha256": sha.hexdigest()}
    return sha.hexdigest()


def model_identity(value: str, cache: dict[str, Any] | None = None) -> str:
    """``local:<sha256>`` of a local model file or directory's files, or ``hub:<id>@<commit>`` for a hub id.

    A hub id (``org/name`` or ``org/name@revision``) is resolved to the commit its revision points at:
    from the hub when online, else from the local Hugging Face cache's refs. Where neither knows it, the
    identity says ``unresolved``, and two runs of an unresolved id can only match each other.
    """
    path = Path(value).expanduser()
    if path.exists():
        files = [path] if path.is_file() else sorted(
            p for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        combined = hashlib.sha256()
        for file in files:
            name = file.name if path.is_file() else file.relative_to(path).as_posix()
            combined.update(f"{name}\0{file_sha256(file, cache)}\n".encode())
        return f"local:{combined.hexdigest()}"
    repo, _, revision = value.partition("@")
    return f"hub:{repo}@{resolve_hub_revision(repo, revision or None) or 'unresolved'}"


def resolve_hub_revision(repo: str, revision: str | None) -> str | None:
    """The commit sha a hub model's revision points at, or None when it cannot be known here."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return None
    if not constants.HF_HUB_OFFLINE:
        try:
            from huggingface_hub import HfApi

            return HfApi().model_info(repo, revision=revision).sha
        except Exception:  # offline in practice, gated, or unknown: the cache may still know
            pass
    refs = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}" / "refs" / (revision or "main")
    if refs.is_file():
        return refs.read_text(encoding="utf-8").strip()
    if revision and len(revision) == 40 and all(c in "0123456789abcdef" for c in revision):
        return revision  # already a commit
    return None


def library_versions(names: tuple[str, ...]) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def plugin_modules(plugin: Any) -> list[ModuleType]:
    """The plugin's module and the modules of its own package that it uses directly (``from mypkg.model
    import Net`` counts ``mypkg.model``): the source whose edits must be seen."""
    module = plugin if isinstance(plugin, ModuleType) else sys.modules.get(type(plugin).__module__)
    if module is None:
        return []
    top = module.__name__.split(".")[0]
    found = {module.__name__: module}
    for value in vars(module).values():
        owner = value if isinstance(value, ModuleType) else sys.modules.get(getattr(value, "__module__", None) or "")
        if owner is not None and owner.__name__.split(".")[0] == top and top not in ("harness", "builtins"):
            found.setdefault(owner.__name__, owner)
    return [found[name] for name in sorted(found)]


def module_fingerprint(module: ModuleType) -> str:
    """sha256 of a module's source file, or of its compiled functions when it has no file (built in memory)."""
    try:
        source = inspect.getsourcefile(module)
    except TypeError:
        source = None
    if source and os.path.isfile(source):
        return file_sha256(Path(source))
    sha = hashlib.sha256()
    for name, value in sorted(vars(module).items()):
        code = getattr(getattr(value, "__func__", value), "__code__", None)
        if code is not None:
            sha.update(name.encode() + marshal.dumps(code))
    return sha.hexdigest()


def harness_fingerprint(*, training_only: bool) -> str:
    """sha256 of the harness package's source: its training code alone, or all of it."""
    root = Path(__file__).parent
    sha = hashlib.sha256()
    for path in sorted(root.glob("*.py")):
        if training_only and path.name in NOT_TRAINING_CODE:
            continue
        sha.update(f"{path.name}\0{file_sha256(path)}\n".encode())
    return sha.hexdigest()


def code_fingerprint(plugin: Any, *, training_only: bool) -> dict[str, str]:
    """The fingerprints of the code that trains (``training_only``) or measures: harness and the plugin."""
    return {
        "harness": harness_fingerprint(training_only=training_only),
        **{f"plugin:{m.__name__}": module_fingerprint(m) for m in plugin_modules(plugin)},
    }


def accelerator() -> str:
    """``cuda`` where torch sees a CUDA GPU, else ``cpu``: training on one or the other is not the same run."""
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def gpu_name() -> str | None:
    """The first CUDA GPU's name, or None: a measurement on another GPU is another measurement."""
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
