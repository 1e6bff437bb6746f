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
from harness.approach import Approach, RunContext, settings_info
from harness.errors import UserError
from harness.spec import Spec, resolve_settings, spec_notices
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

    # Approaches registered through harness_register_approaches, by name, and the plugin that registered each.
    registry: dict[str, Approach] = field(default_factory=dict)
    registered_by: dict[str, str] = field(default_factory=dict)
    # Entry points installed but not loaded: filtered out by HARNESS_LOAD_PLUGINS, or failed to import.
    not_loaded: set[str] = field(default_factory=set)

    def approaches(self) -> list[str]:
        """Names of the registered approaches and of the hook-style plugins that train or predict, sorted."""
        names = []
        for name, plugin in self.pm.list_name_plugin():
            if any(hasattr(plugin, hook) for hook in APPROACH_HOOKS):
                names.append(name)
        return sorted(names)

    def collect(self, plugin_name: str | None = None) -> None:
        """Ask every plugin (or ``plugin_name`` alone) to register its approaches."""
        caller = self.pm.hook.harness_register_approaches
        if plugin_name is not None:
            others = {impl.plugin for impl in caller.get_hookimpls() if impl.plugin_name != plugin_name}
            caller = self.pm.subset_hook_caller("harness_register_approaches", remove_plugins=others)
        for impl_owner, approach in _registrations(caller):
            self.add(approach, impl_owner or plugin_name or "")

    def add(self, approach: Approach, plugin_name: str = "") -> None:
        """Register one approach object (what ``register`` does inside ``harness_register_approaches``)."""
        if not isinstance(approach, Approach):
            raise TypeError(f"register() takes an harness.approach.Approach, got {type(approach).__name__}")
        if not approach.name:
            raise TypeError(f"{type(approach).__name__} has no name")
        if self.pm.get_plugin(approach.name) is not None:
            raise ValueError(f"two approaches are named {approach.name!r}")
        self.registry[approach.name] = approach
        self.registered_by[approach.name] = plugin_name
        # Called through pluggy like any plugin, so that wrappers (a profiler, the speed gate) see it too.
        self.pm.register(_proxy(approach), name=approach.name)
        owner = self.meta.get(plugin_name)
        self.meta[approach.name] = PluginMeta(
            approach.name, type(approach).__module__, owner.version if owner else "", bool(owner and owner.builtin)
        )

    def register(self, plugin: Any, name: str, *, package: str = "", version: str = "") -> None:
        """Register ``plugin`` under ``name``, as tests and embedding code do: a module or object with hook
        implementations (its ``harness_register_approaches`` registers its approaches), or one Approach."""
        self.registered[name] = plugin
        if isinstance(plugin, Approach):
            self.add(plugin, name)
            return
        pm_name = registrar_name(plugin, name)
        self.pm.register(plugin, name=pm_name)
        self.pm.check_pending()
        self.meta[pm_name] = PluginMeta(name, package or getattr(plugin, "__name__", name), version, False)
        if pm_name != name:
            self.collect(pm_name)

    def implements(self, name: str, hook: str) -> bool:
        plugin = self.pm.get_plugin(name)
        return plugin is not None and hasattr(plugin, hook)

    def code_roots(self, name: str, hooks: tuple[str, ...]) -> list[Any]:
        """The functions behind ``hooks`` of approach ``name``, for its code fingerprint. A registered approach's
        are its methods bound to the registered object, so that harness.identity looks up what they reach through
        ``self`` on its own class: an inherited ``train`` calling ``self._fit`` reaches the subclass's ``_fit``."""
        if name in self.registry:
            approach = self.registry[name]
            return [
                getattr(approach, METHODS[hook]) for hook in hooks if self.implements(name, hook) and hook in METHODS
            ]
        plugin = self.pm.get_plugin(name)
        return [getattr(plugin, hook) for hook in hooks if hasattr(plugin, hook)]

    def require(self, names: list[str]) -> None:
        """Fail with a one-line error naming the known approaches if any name is unknown."""
        known = self.approaches()
        unknown = [n for n in names if n not in known]
        if unknown:
            raise UserError(
                f"unknown plugin {', '.join(repr(n) for n in unknown)}; known: {', '.join(known) or '(none)'}",
                where="--plugins",
            )

    def check_spec(
        self, spec: Spec, rows: list[str], overrides: dict[str, dict[str, str]], *, teacher_option: str | None = None
    ) -> list[str]:
        """Check every row of ``spec`` (each ``plugins.<row>`` section), whatever ``rows`` (the rows this
        compare runs: ``--plugins`` and the teacher) selects: its approach is installed, and its settings in
        the spec are settings of that approach, of their types, choices and ranges; and the spec's ``teacher``
        (and ``--teacher``) names an approach or a row. A mistake is a :class:`UserError` naming the spec file
        and key. Rows that run are also checked with their ``--set`` values, as the plan will be.

        Returns the notices for the rows that run (:func:`harness.spec.spec_notices`): the commands the spec
        file makes them run and the addresses it makes them send the user's key to.

        Only the approaches' Settings classes are read: the plugin modules are imported already, and an
        approach's optional extras (openai, onnxruntime, a vLLM environment) are not needed to check a row.
        A row whose approach comes from an installed plugin that is not loaded (HARNESS_LOAD_PLUGINS, or it
        failed to import, which was said) is not checked unless it runs."""
        known = self.approaches()
        variants = [row for row in spec.plugins if spec.approach_of(row) != row]

        listed = ", ".join(known) or "(none)"
        running = set(rows)
        for row in spec.plugins:
            base = spec.approach_of(row)
            if base in known or (base in self.not_loaded and row not in running):
                continue
            key = f"plugins.{row}.approach" if row in variants else f"plugins.{row}"
            hint = "" if row in variants else "; a row of another approach names it with approach: NAME"
            raise UserError(f"unknown approach {base!r} (known: {listed}){hint}", where=f"{spec.where}: {key}")
        for where, teacher in ((f"{spec.where}: teacher", spec.teacher), ("--teacher", teacher_option)):
            if (
                teacher
                and spec.approach_of(teacher) not in known
                and not (teacher in self.not_loaded and teacher not in running)
            ):
                rows_known = f"; rows of {spec.where}: {', '.join(variants)}" if variants else ""
                raise UserError(f"unknown approach or row {teacher!r} (known: {listed}{rows_known})", where=where)

        def info_of(row: str) -> ApproachInfo | None:
            try:
                return self.describe(spec.approach_of(row)) if spec.approach_of(row) in known else None
            except Exception:  # a plugin that cannot describe itself: the plan says so in one line if its row runs
                return None

        infos = {row: info for row in spec.plugins if (info := info_of(row)) is not None}
        # An engine's row runs the approach it serves too (plan_settings resolves both with their --set values).
        for row in list(running):
            info = infos.get(row) or info_of(row)
            if info is not None and info.serves:
                running.add(info.serves)
        notices: list[str] = []
        for row, info in infos.items():
            base = spec.approach_of(row)
            given = overrides if row in running else {}
            base_given = given.get(base) if base != row else None
            settings = resolve_settings(
                row,
                info.settings,
                spec,
                given.get(row, {}),
                choices=info.choices,
                limits=info.limits,
                secret=info.secret_settings,
                base_overrides=base_given,
            )
            if row in running:
                notices += spec_notices(
                    spec,
                    row,
                    settings,
                    info.settings,
                    secret=info.secret_settings,
                    overrides=given.get(row, {}),
                    base_overrides=base_given,
                )
        return list(dict.fromkeys(notices))

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


# The approach hooks the core calls by name, and the Approach methods behind them.
METHODS = {
    "harness_describe": "describe",
    "harness_train": "train",
    "harness_load": "load",
    "harness_predict": "predict",
    "harness_reference": "reference",
    "harness_parity": "parity",
    "harness_check": "check",
}


def registrar_name(plugin: Any, name: str) -> str:
    """The plugin manager's name for a plugin: its own name, or for one that registers approaches (whose
    names may well be its own) ``NAME:approaches``."""
    return f"{name}:approaches" if hasattr(plugin, "harness_register_approaches") else name


hookimpl = pluggy.HookimplMarker("harness")


class _Proxy:
    """A registered approach as pluggy sees it: hook implementations that call its methods with typed
    settings and a RunContext. Built per approach with only the hooks it implements."""

    def __init__(self, approach: Approach):
        self.approach = approach


@hookimpl
def _describe(self: _Proxy) -> ApproachInfo:
    return describe(self.approach)


@hookimpl
def _train(self: _Proxy, task: Any, train: Any, validation: Any, settings: Any, workdir: Any, progress: Any) -> Any:
    return call_approach(self.approach, "harness_train", locals())


@hookimpl
def _load(self: _Proxy, task: Any, artifact: Any, settings: Any, cache_dir: Any) -> Any:
    return call_approach(self.approach, "harness_load", locals())


@hookimpl
def _predict(self: _Proxy, task: Any, artifact: Any, examples: Any, settings: Any, progress: Any) -> Any:
    return call_approach(self.approach, "harness_predict", locals())


@hookimpl
def _reference(self: _Proxy, task: Any, artifact: Any, settings: Any) -> Any:
    return call_approach(self.approach, "harness_reference", locals())


@hookimpl
def _parity(self: _Proxy, task: Any, artifact: Any, examples: Any, settings: Any) -> Any:
    return call_approach(self.approach, "harness_parity", locals())


@hookimpl
def _check(self: _Proxy, task: Any, settings: Any) -> Any:
    return call_approach(self.approach, "harness_check", locals())


_IMPLS = {
    "check": _check,
    "describe": _describe,
    "train": _train,
    "load": _load,
    "predict": _predict,
    "reference": _reference,
    "parity": _parity,
}


def _proxy(approach: Approach) -> _Proxy:
    cls = type(approach)
    methods = {
        f"harness_{method}": impl
        for method, impl in _IMPLS.items()
        if method in ("describe", "predict") or getattr(cls, method) is not getattr(Approach, method)
    }
    return type(f"Registered{cls.__name__}", (_Proxy,), methods)(approach)


def _registrations(caller: Any) -> list[tuple[str, Approach]]:
    """Call ``harness_register_approaches`` implementation by implementation, so that each registration
    is known by the plugin that made it."""
    found: list[tuple[str, Approach]] = []
    for impl in caller.get_hookimpls():

        def register(approach: Approach, owner: str = impl.plugin_name) -> None:
            found.append((owner, approach))

        impl.function(**{name: register for name in impl.argnames})
    return found


def describe(approach: Approach) -> ApproachInfo:
    """The ApproachInfo the core plans with, read off a registered approach and its Settings class."""
    info = settings_info(approach.settings)
    own = tuple(info.defaults) if approach.serves else info.predict  # an engine's settings are all predict settings
    return ApproachInfo(
        task_types=tuple(approach.task_types),
        settings=info.defaults,
        description=approach.description,
        predict_settings=own,
        choices=info.choices,
        serves=approach.serves,
        model_settings=info.models,
        limits=info.limits,
        secret_settings=info.secret,
    )


def typed_settings(approach: Approach, settings: dict[str, Any]) -> Any:
    """The approach's Settings instance from the core's settings dict (the core's own keys left out)."""
    fields = approach.settings.model_fields
    return approach.settings.model_validate({k: v for k, v in settings.items() if k in fields})


def call_approach(approach: Approach, hook: str, kwargs: dict[str, Any]) -> Any:
    """A hook-style call (``task=..., settings={...}, workdir=...``) made to a registered approach: its
    typed settings, and the core's values in a RunContext."""
    if hook == "harness_describe":
        return describe(approach)
    settings = kwargs.get("settings") or {}
    batch = settings.get("predict_batch_size")
    context = RunContext(
        seed=int(settings.get("seed", 0)),
        random_weights=bool(settings.get("random_weights")),
        workdir=kwargs.get("workdir"),
        cache_dir=kwargs.get("cache_dir"),
        batch_size=batch or None,
        progress=kwargs.get("progress"),
    )
    typed = typed_settings(approach, settings)
    task = kwargs["task"]
    if hook == "harness_train":
        return approach.train(task, kwargs["train"], kwargs.get("validation", []), typed, context)
    if hook == "harness_load":
        return approach.load(task, kwargs["artifact"], typed, context)
    if hook == "harness_predict":
        return approach.predict(task, kwargs["artifact"], kwargs["examples"], typed, context)
    if hook == "harness_parity":
        return approach.parity(task, kwargs["artifact"], kwargs["examples"], typed, context)
    if hook == "harness_check":
        return approach.check(task, typed, context)
    return approach.reference(task, kwargs["artifact"], typed, context)


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
                plugins.not_loaded.add(ep.name)
                continue
            if pm.get_plugin(ep.name) is not None:
                continue
            pm_name = ep.name
            try:
                module: ModuleType = ep.load()
                pm_name = registrar_name(module, ep.name)
                pm.register(module, name=pm_name)
                pm.check_pending()
                plugins.meta[pm_name] = PluginMeta(ep.name, ep.value, ep.dist.version if ep.dist else "", builtin)
                if pm_name != ep.name:
                    plugins.collect(pm_name)
            except Exception as exc:  # a broken plugin must not take the others down
                for name in [pm_name, *(n for n, owner in plugins.registered_by.items() if owner == pm_name)]:
                    if pm.get_plugin(name) is not None:
                        pm.unregister(name=name)
                    plugins.registry.pop(name, None)
                plugins.not_loaded.add(ep.name)
                message = f"harness: plugin {ep.name!r} ({ep.value}) not loaded: {type(exc).__name__}: {exc}"
                plugins.warnings.append(message)
                print(message.splitlines()[0], file=sys.stderr)
                continue

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
