"""Finding, loading and calling plugins.

Built-in approaches and third-party ones are found the same way, through the ``harness`` entry-point
group; the only difference is that ``HARNESS_LOAD_PLUGINS`` filters third-party plugins alone, so the
built-ins keep working when a broken plugin is switched off. There is no global manager: each command
and each test builds its own with :func:`load_plugins`.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import Any

import pluggy

from harness import hookspecs
from harness.errors import UserError
from harness.types import ApproachInfo

DISTRIBUTION = "harness-compare"
# Core plugins that are not approaches: registered by dotted name before the entry points.
CORE_PLUGINS = {"metrics": "harness.metrics"}
APPROACH_HOOKS = ("harness_train", "harness_predict")


@dataclass
class PluginMeta:
    name: str
    package: str
    version: str
    builtin: bool


@dataclass
class Plugins:
    """A plugin manager with the metadata the CLI and the run records need."""

    pm: pluggy.PluginManager
    meta: dict[str, PluginMeta] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    entry_points: bool = True
    # Plugins registered by hand (not found through entry points): a unit's process registers them again.
    registered: dict[str, Any] = field(default_factory=dict)

    def approaches(self) -> list[str]:
        """Names of the registered plugins that implement train or predict, sorted."""
        names = []
        for name, plugin in self.pm.list_name_plugin():
            if any(hasattr(plugin, hook) for hook in APPROACH_HOOKS):
                names.append(name)
        return sorted(names)

    def register(self, plugin: Any, name: str, *, package: str = "", version: str = "") -> None:
        """Register ``plugin`` (a module or object) under ``name``, as tests and embedding code do."""
        self.pm.register(plugin, name=name)
        self.pm.check_pending()
        self.meta[name] = PluginMeta(name, package or getattr(plugin, "__name__", name), version, False)
        self.registered[name] = plugin

    def implements(self, name: str, hook: str) -> bool:
        plugin = self.pm.get_plugin(name)
        return plugin is not None and hasattr(plugin, hook)

    def require(self, names: list[str]) -> None:
        """Fail with a one-line error naming the known approaches if any name is unknown."""
        known = self.approaches()
        unknown = [n for n in names if n not in known]
        if unknown:
            raise UserError(
                f"unknown plugin {', '.join(repr(n) for n in unknown)}; known: {', '.join(known) or '(none)'}",
                where="--plugins",
            )

    def call(self, name: str, hook: str, **kwargs: Any) -> Any:
        """Call ``hook`` on plugin ``name`` alone, so an approach never sees calls meant for another.

        Other plugins' wrappers (``@hookimpl(wrapper=True)``) still wrap the call: that is how
        observers such as the conformance kit or a profiler see every approach.
        """
        if not self.implements(name, hook):
            raise TypeError(f"plugin {name!r} does not implement {hook}")
        others = {
            impl.plugin
            for impl in getattr(self.pm.hook, hook).get_hookimpls()
            if impl.plugin_name != name and not (impl.wrapper or impl.hookwrapper)
        }
        return self.pm.subset_hook_caller(hook, remove_plugins=others)(**kwargs)

    def describe(self, name: str) -> ApproachInfo:
        info = self.call(name, "harness_describe")
        if not isinstance(info, ApproachInfo):
            raise TypeError(f"plugin {name!r}: harness_describe must return an ApproachInfo, got {type(info).__name__}")
        return info

    def hooks_of(self, name: str) -> list[str]:
        plugin = self.pm.get_plugin(name)
        return sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])


def _third_party_allowed(name: str) -> bool:
    setting = os.environ.get("HARNESS_LOAD_PLUGINS")
    if setting is None:
        return True
    return name in {n.strip() for n in setting.split(",") if n.strip()}


def load_plugins(*, entry_points: bool = True) -> Plugins:
    """Build a plugin manager: hook specs, core plugins, then every plugin of the ``harness`` entry-point group.

    A third-party plugin that fails to import leaves one warning line (also kept in ``warnings``)
    and the others load. ``HARNESS_LOAD_PLUGINS=''`` loads no third-party plugin;
    ``HARNESS_LOAD_PLUGINS=a,b`` loads only those. ``HARNESS_TRACE_PLUGINS=1`` prints every hook call.
    """
    pm = pluggy.PluginManager("harness")
    pm.add_hookspecs(hookspecs)
    plugins = Plugins(pm, entry_points=entry_points)
    for name, dotted in CORE_PLUGINS.items():
        pm.register(importlib.import_module(dotted), name=name)
        plugins.meta[name] = PluginMeta(name, dotted, _own_version(), True)

    if entry_points:
        for ep in metadata.entry_points(group="harness"):
            dist = ep.dist.name if ep.dist else ""
            builtin = _normalise(dist) == _normalise(DISTRIBUTION)
            if not builtin and not _third_party_allowed(ep.name):
                continue
            if pm.get_plugin(ep.name) is not None:
                continue
            try:
                module: ModuleType = ep.load()
                pm.register(module, name=ep.name)
                pm.check_pending()
            except Exception as exc:  # a broken plugin must not take the others down
                if pm.get_plugin(ep.name) is not None:
                    pm.unregister(name=ep.name)
                message = f"harness: plugin {ep.name!r} ({ep.value}) not loaded: {type(exc).__name__}: {exc}"
                plugins.warnings.append(message)
                print(message.splitlines()[0], file=sys.stderr)
                continue
            plugins.meta[ep.name] = PluginMeta(ep.name, ep.value, ep.dist.version if ep.dist else "", builtin)

    pm.check_pending()
    if os.environ.get("HARNESS_TRACE_PLUGINS"):
        pm.trace.root.setwriter(lambda text: print(text, end="", file=sys.stderr))
        pm.enable_tracing()
    return plugins


def _normalise(dist_name: str) -> str:
    return dist_name.lower().replace("_", "-")


def _own_version() -> str:
    from harness import __version__

    return __version__
