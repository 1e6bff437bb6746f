"""Shipping the parent's plugins to a unit's process: described here as picklable references, rebuilt there.

A plugin the parent registered by hand travels as an importable module's name, a module file, an attribute of
such a module, an approach made again from its class in its module, or, failing those, a pickled object.
"""

from __future__ import annotations

import importlib
import importlib.util
import pickle
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any


@dataclass
class PluginSetup:
    """How a unit's process rebuilds the parent's plugins: entry points or not, plus the plugins the parent
    registered by hand, each as an importable module name, a module file, or a pickled object."""

    entry_points: bool = True
    extra: list[tuple[str, str, Any]] = field(default_factory=list)  # (name, kind, value)


def plugin_setup(plugins: Any) -> PluginSetup:
    """Describe ``plugins`` so that another process can build the same set."""
    setup = PluginSetup(entry_points=plugins.entry_points)
    for name, plugin in plugins.registered.items():
        setup.extra.append((name, *_reference(name, plugin)))
    return setup


def _reference(name: str, plugin: Any) -> tuple[str, Any]:
    if isinstance(plugin, ModuleType):
        return _module_reference(name, plugin)
    # An object defined in a module (an engine beside its approach, say): that module, then the attribute.
    import sys

    module = sys.modules.get(type(plugin).__module__)
    attribute = next((key for key, value in vars(module).items() if value is plugin), None) if module else None
    if module is not None and attribute is not None:
        return "attribute", (_module_reference(name, module), attribute)
    from harness.approach import Approach

    if isinstance(plugin, Approach) and module is not None:  # made again from its class, in its module
        return "instance", (_module_reference(name, module), type(plugin).__qualname__)
    try:
        return "object", pickle.dumps(plugin)
    except Exception as exc:
        raise TypeError(
            f"plugin {name!r} cannot be sent to another process ({type(exc).__name__}: {exc}); "
            "register a module, or use the inline launcher"
        ) from None


def _module_reference(name: str, module: ModuleType) -> tuple[str, Any]:
    import sys

    # Importable by name in a fresh process: a finder knows its top-level package without sys.modules' help.
    top = module.__name__.partition(".")[0]
    if module.__name__ != "__main__" and any(
        finder.find_spec(top, None) is not None for finder in sys.meta_path if hasattr(finder, "find_spec")
    ):
        return "module", module.__name__
    if getattr(module, "__file__", None):
        return "file", (module.__name__, module.__file__)
    raise TypeError(
        f"plugin {name!r} comes from a module built in memory; another process cannot load it: "
        "register a module that has a file, or use the inline launcher"
    )


def _load(kind: str, value: Any) -> Any:
    import sys

    if kind == "module":
        return importlib.import_module(value)
    if kind == "file":
        module_name, path = value
        if module_name in sys.modules:  # its engine and its approach come from one module: load it once
            return sys.modules[module_name]
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"plugin module {module_name!r} cannot be loaded from {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        return module
    if kind in ("attribute", "instance"):
        (module_kind, module_value), attribute = value
        found = getattr(_load(module_kind, module_value), attribute)
        return found() if kind == "instance" else found
    return pickle.loads(value)


def rebuild_plugins(setup: PluginSetup) -> Any:
    from harness.plugins import load_plugins

    plugins = load_plugins(entry_points=setup.entry_points)
    for name, kind, value in setup.extra:
        plugins.register(_load(kind, value), name)
    return plugins
