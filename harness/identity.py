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

import ast
import hashlib
import importlib
import importlib.util
import inspect
import json
import marshal
import sys
import textwrap
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

# Libraries whose version changes what training computes, or the prompts and data it sees: the chat
# templates are jinja2, tokenizers split the text, safetensors and gguf read the weights, numpy and
# scikit-learn compute the validation metrics that select checkpoints.
TRAINING_LIBRARIES = (
    "torch",
    "transformers",
    "tokenizers",
    "accelerate",
    "peft",
    "safetensors",
    "jinja2",
    "numpy",
    "scikit-learn",
    "gguf",
)
# ... and those a measurement may run on.
SERVING_LIBRARIES = (*TRAINING_LIBRARIES, "onnxruntime", "onnxruntime-gpu", "vllm", "harness-compare")

# The core's code that runs in the train unit around the approach's own training: reading the data,
# seeding, the call. (The Trainer glue, the sampler and the model loading are reached from the
# approach's train through what it calls.)
CORE_TRAINING = ("harness.units:train_unit",)
# ... and the measure unit's.
CORE_MEASURING = ("harness.units:measure_unit",)

# Modules that present, store, time or dispatch and never change what a model learns (a package: all its
# modules): the code fingerprint does not follow calls into them. Every other module of harness, harness_plugins
# or the approach's own package that the training path calls counts, found by following the calls (harness.types
# among them: Prompt.plain builds every prompt without a chat template).
NOT_TRAINING = frozenset(
    {
        "harness.bench",
        "harness.cli",
        "harness.commands",
        "harness.commands.bench",
        "harness.commands.checks",
        "harness.commands.compare",
        "harness.commands.listing",
        "harness.commands.output",
        "harness.commands.report",
        "harness.commands.store",
        "harness.commands.tryout",
        "harness.data_files",
        "harness.data_load",
        "harness.data_rows",
        "harness.errors",
        "harness.identity",
        "harness.measure",
        "harness.plugins",
        "harness.progress",
        "harness.pytest_plugin",
        "harness.report_plots",
        "harness.report_terminal",
        "harness.stats_analysis",
        "harness.stats_intervals",
        "harness.stats_pairs",
        "harness.stats_seeds",
        "harness.storage",
        "harness.store",
        "harness.testing",
    }
)
# For the measuring code, timing counts: harness.measure is followed.
NOT_MEASURING = NOT_TRAINING - {"harness.measure"}


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
        files = (
            [path]
            if path.is_file()
            else sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
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


def code_fingerprint(roots: list[Any], skip: frozenset[str]) -> dict[str, str]:
    """The code that ``roots`` (functions, methods, classes or ``"module:name"`` strings) run, function by
    function: each one's qualified name and a digest of its syntax tree, following every name it uses that
    resolves to a function or class of harness, harness_plugins or the roots' own packages (imports inside
    functions included), except in the modules of ``skip`` (a package there: all its modules). Constants it
    reads (a module's dict of defaults, a prompt template) count with their values.

    A method's ``self.<name>`` is looked up on its class and the class's bases, as Python looks it up: a
    method found there is followed like a function, a class attribute that is a constant counts with its
    value, and an attribute the class does not have (set on the instance) follows the class's
    ``__init__``. The class is the instance's, for a bound method; else the one the method is defined in.

    The digest ignores what cannot change a result: comments, formatting, docstrings and the message of a
    ``raise``. So editing a predict function, bench, the report or an error message changes no training
    identity; editing the training step, a helper it calls through ``self``, the sampler, the Trainer glue
    or seeding does.
    """
    packages = {"harness", "harness_plugins"} | {module.split(".")[0] for root in roots for module in _modules_of(root)}
    found: dict[str, str] = {}
    seen: set[tuple[str, Any]] = set()
    queue = [_resolve_root(root) for root in roots]
    while queue:
        obj, owner = queue.pop()
        obj = inspect.unwrap(obj)
        name = f"{obj.__module__}.{obj.__qualname__}"
        if (name, owner) in seen:
            continue
        seen.add((name, owner))
        tree, namespace = _syntax(obj)
        found[name] = hashlib.sha256(ast.dump(tree).encode()).hexdigest()[:16]
        for used, value in _used(tree, namespace, obj.__module__):
            if (inspect.isfunction(value) or inspect.isclass(value)) and _tracked(value, packages, skip):
                queue.append((value, value if inspect.isclass(value) else None))
            elif _constant(value) and used in namespace and namespace.get(used) is value:
                found[f"{obj.__module__}.{used}"] = digest(_ordered(value))[:16]
        if owner is None:
            continue
        for attr in _self_attributes(tree):
            defined_in, value = _lookup(owner, attr)
            if defined_in is None:  # set on the instance: by __init__
                defined_in, value = _lookup(owner, "__init__")
            if defined_in is obj:
                continue  # a class's own methods are in its digest already
            if inspect.isfunction(value) or inspect.isclass(value):
                if _tracked(value, packages, skip):
                    queue.append((value, value if inspect.isclass(value) else owner))
            elif _constant(value) and _tracked(defined_in, packages, skip):
                found[f"{owner.__module__}.{owner.__qualname__}.{attr}"] = digest(_ordered(value))[:16]
    return dict(sorted(found.items()))


def _resolve_root(root: Any) -> tuple[Any, type | None]:
    """A root's function or class, and the class its ``self`` is looked up on (None for a plain function)."""
    if isinstance(root, str):
        module, _, name = root.partition(":")
        root = getattr(importlib.import_module(module), name)
    if inspect.isclass(root):
        return root, root
    if inspect.ismethod(root):  # bound: the instance's own class (a classmethod's: the class itself)
        bound = root.__self__
        return root.__func__, bound if inspect.isclass(bound) else type(bound)
    return root, defining_class(root)


def defining_class(function: Any) -> type | None:
    """The class a function is defined in, found by its qualified name in its module; None for a function
    outside a class (or inside another function)."""
    path = getattr(function, "__qualname__", "").split(".")[:-1]
    value = sys.modules.get(getattr(function, "__module__", None) or "")
    if not path or "<locals>" in path or value is None:
        return None
    for part in path:
        value = getattr(value, part, None)
    return value if inspect.isclass(value) else None


def _self_attributes(tree: ast.AST) -> set[str]:
    """The ``<self>.<name>`` names that a method, or a class's methods, read: ``<self>`` is each method's
    first parameter (a static method has none)."""
    body = getattr(tree, "body", [])
    methods = [
        node
        for item in body
        for node in (item.body if isinstance(item, ast.ClassDef) else [item])
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and not any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in node.decorator_list)
    ]
    names = {first.arg for node in methods for first in (node.args.posonlyargs + node.args.args)[:1]}
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in names
    }


def _lookup(owner: type, attr: str) -> tuple[type | None, Any]:
    """The class of ``owner``'s method resolution order that defines ``attr``, and what it holds there
    (a static or class method's function, a property's getter, a wrapper's wrapped function)."""
    for cls in owner.__mro__:
        if attr in vars(cls):
            value = vars(cls)[attr]
            if isinstance(value, (staticmethod, classmethod)):
                value = value.__func__
            elif isinstance(value, property):
                value = value.fget
            return cls, inspect.unwrap(value) if callable(value) else value
    return None, None


def _modules_of(root: Any) -> set[str]:
    """The root's module, and for a bound method its object's class's too: a subclass in a package of its
    own that inherits ``train`` from another package is followed into both."""
    if isinstance(root, str):
        return {root.partition(":")[0]}
    owner = getattr(root, "__self__", None)
    owner_module = (owner if inspect.isclass(owner) else type(owner)).__module__ if owner is not None else ""
    return {name for name in (getattr(root, "__module__", "") or "", owner_module) if name}


def _tracked(value: Any, packages: set[str], skip: frozenset[str]) -> bool:
    module = getattr(value, "__module__", "") or ""
    skipped = any(module == name or module.startswith(f"{name}.") for name in skip)
    return module.split(".")[0] in packages and not skipped


def _ordered(value: Any) -> Any:
    """A constant with its sets sorted: a frozenset's order is its strings' hashes', which differ from one
    process to the next (PYTHONHASHSEED), and its digest must not."""
    if isinstance(value, frozenset):
        return sorted((_ordered(v) for v in value), key=repr)
    if isinstance(value, (tuple, list)):
        return [_ordered(v) for v in value]
    if isinstance(value, dict):
        return {k: _ordered(v) for k, v in value.items()}
    return value


def _constant(value: Any) -> bool:
    if value is None or isinstance(value, (str, int, float, bool)):
        return True
    if isinstance(value, (tuple, list, frozenset)):
        return all(_constant(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _constant(v) for k, v in value.items())
    return False


def _syntax(obj: Any) -> tuple[ast.AST, dict[str, Any]]:
    """The normalised syntax tree of a function or class and the globals its names resolve in. Code
    without source (built in memory) is taken from its compiled form."""
    namespace = vars(sys.modules[obj.__module__]) if obj.__module__ in sys.modules else {}
    namespace = getattr(obj, "__globals__", namespace)
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(obj)))
    except (OSError, TypeError, SyntaxError):
        codes = [getattr(v, "__code__", None) for v in ([obj] if inspect.isfunction(obj) else vars(obj).values())]
        return ast.Constant(b"".join(marshal.dumps(c) for c in codes if c is not None).hex()), namespace
    return _Normalise().visit(tree), namespace


class _Normalise(ast.NodeTransformer):
    """Drop docstrings and the arguments of raised exceptions: they explain, they do not compute."""

    def _body(self, node: Any) -> Any:
        self.generic_visit(node)
        body = node.body
        first = body[0] if body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            node.body = body[1:] or [ast.Pass()]
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = visit_Module = _body

    def visit_Raise(self, node: ast.Raise) -> Any:
        if isinstance(node.exc, ast.Call):
            node.exc = node.exc.func
        node.cause = None
        return node


def _used(tree: ast.AST, namespace: dict[str, Any], module: str) -> list[tuple[str, Any]]:
    """The names a syntax tree uses, with what they resolve to: globals, ``module.attribute`` chains and
    names imported inside functions."""
    used = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in namespace:
            used.append((node.id, namespace[node.id]))
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in namespace:
            owner = namespace[node.value.id]
            if isinstance(owner, ModuleType) and hasattr(owner, node.attr):
                used.append((f"{node.value.id}.{node.attr}", getattr(owner, node.attr)))
        elif isinstance(node, ast.ImportFrom):
            source = (
                importlib.util.resolve_name("." * node.level + (node.module or ""), module.rpartition(".")[0])
                if node.level
                else node.module or ""
            )
            if source.split(".")[0] not in ("harness", "harness_plugins", module.split(".")[0]):
                continue  # a library: its version is in the identity, its code is not read
            try:
                imported = importlib.import_module(source)
            except ImportError:
                continue
            used += [
                (alias.name, getattr(imported, alias.name)) for alias in node.names if hasattr(imported, alias.name)
            ]
    return used


def training_code(roots: list[Any]) -> dict[str, str]:
    """The code that trains: the train unit and the approach's train (``roots``), with all they call that
    can change what the model learns."""
    return code_fingerprint([*CORE_TRAINING, *roots], NOT_TRAINING)


def measuring_code(roots: list[Any]) -> dict[str, str]:
    """The code that serves and times: the measure unit and the approach's load and predict (``roots``)."""
    return code_fingerprint([*CORE_MEASURING, *roots], NOT_MEASURING)


def host() -> dict[str, Any]:
    """What a run's identities take from the machine its units run on, read where they run (a Ray worker, not the
    driver): its name and CPU, GPU, CPU threads, accelerator, bf16 units and library versions."""
    from harness import measure

    return {
        "machine": measure.machine(),
        "gpu": gpu_name(),
        "threads": measure.unit_threads(),
        "accelerator": accelerator(),
        "cpu_bf16": cpu_bf16(),
        "training_versions": library_versions(TRAINING_LIBRARIES),
        "serving_versions": library_versions(SERVING_LIBRARIES),
    }


def training_device(setting: Any) -> str:
    """Where training runs, as its identity: an approach's ``train_device`` setting, ``auto`` resolved to
    this machine's accelerator. A GPU-trained model is found again from a CPU machine by saying
    ``train_device=cuda`` there; the serving device is a predict setting of its own."""
    return accelerator() if setting in (None, "auto") else str(setting)


def cpu_bf16() -> bool:
    """Whether this CPU has bf16 units (AVX512-BF16 or AMX tiles, as harness.models.cpu_has_bf16 asks torch's
    oneDNN): read from the CPU's flags in /proc/cpuinfo on Linux, so the driver does not import torch (a second
    and more) to learn it; elsewhere from torch; False where torch is missing."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return bool({"avx512_bf16", "amx_tile"} & set(line.split(":", 1)[1].split()))
    except OSError:
        pass
    try:
        from harness.models import cpu_has_bf16

        return cpu_has_bf16()
    except ImportError:
        return False


def accelerator() -> str:
    """``cuda`` where torch sees a CUDA GPU, else ``cpu``: training on one or the other is not the same run."""
    if not _torch_may_see_a_gpu():
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def gpu_name() -> str | None:
    """The first CUDA GPU's name, or None: a measurement on another GPU is another measurement."""
    if not _torch_may_see_a_gpu():
        return None
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def _torch_may_see_a_gpu() -> bool:
    """False where torch is missing or is a CPU build (its version ends ``+cpu``), read from its metadata without
    importing it: the driver of a comparison whose approaches never need torch (an endpoint, a scikit-learn
    plugin) does not pay its import, two seconds and 200 MB, to learn that there is no GPU."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return not version("torch").endswith("+cpu")
    except PackageNotFoundError:
        return False
