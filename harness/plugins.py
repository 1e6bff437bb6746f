"""The plugins: found through entry points, their approaches registered, and an approach configured to call.

Built-in approaches and third-party ones are found the same way, through the ``harness`` entry-point
group; the only difference is that ``HARNESS_LOAD_PLUGINS`` filters third-party plugins alone, so the
built-ins keep working when a broken plugin is switched off. There is no global manager: each command
and each test builds its own with :func:`load_plugins`.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from harness import hookspecs
from harness.approach import Approach, RunContext, Settings
from harness.errors import UserError
from harness.hook_approach import METHOD_HOOKS, HookApproach, is_hook_style
from harness.planning import row_settings
from harness.spec import Spec
from harness.spec_notices import spec_notices
from harness.types import ApproachInfo, Artifact, Example, Parity, Prediction, Serving, Task

DISTRIBUTION = "harness-compare"
# Core plugins that are not approaches: registered by dotted name before the entry points.
CORE_PLUGINS = {"metrics": "harness.metrics"}


@dataclass
class PluginMeta:
    name: str
    package: str
    version: str
    builtin: bool


@dataclass
class Plugins:
    """The plugin manager, the registered approaches, and the metadata the CLI and the run records need."""

    pm: pluggy.PluginManager
    meta: dict[str, PluginMeta] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    entry_points: bool = True
    # Plugins registered by hand (not found through entry points): a unit's process registers them again.
    registered: dict[str, Any] = field(default_factory=dict)

    # Every approach by name (a hook-style plugin as its HookApproach), and the plugin that registered each.
    registry: dict[str, Approach] = field(default_factory=dict)
    registered_by: dict[str, str] = field(default_factory=dict)
    # Entry points installed but not loaded: filtered out by HARNESS_LOAD_PLUGINS, or failed to import.
    not_loaded: set[str] = field(default_factory=set)

    def approaches(self) -> list[str]:
        """Names of the approaches, sorted."""
        return sorted(self.registry)

    def approach(self, name: str) -> Approach:
        if name not in self.registry:
            raise TypeError(f"plugin {name!r} is not an approach")
        return self.registry[name]

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
        if approach.name in self.registry or self.pm.get_plugin(approach.name) not in (None, self.owner(approach)):
            raise ValueError(f"two approaches are named {approach.name!r}")
        self.registry[approach.name] = approach
        self.registered_by[approach.name] = plugin_name
        owner = self.meta.get(plugin_name)
        self.meta[approach.name] = PluginMeta(
            approach.name,
            owner.package if isinstance(approach, HookApproach) and owner else type(approach).__module__,
            owner.version if owner else "",
            bool(owner and owner.builtin),
        )

    def owner(self, approach: Approach) -> Any:
        """The plugin a hook-style approach was adapted from (registered in ``pm`` under its name); None for others."""
        return self.pm.get_plugin(approach.name) if isinstance(approach, HookApproach) else None

    def register(self, plugin: Any, name: str, *, package: str = "", version: str = "") -> None:
        """Register ``plugin`` under ``name``, as tests and embedding code do: a module or object with hook
        implementations (its ``harness_register_approaches`` registers its approaches; one written as
        ``harness_train``/``harness_predict`` hooks is adapted into an approach), or one Approach."""
        self.registered[name] = plugin
        if isinstance(plugin, Approach):
            self.add(plugin, name)
            return
        self.adopt(plugin, name, PluginMeta(name, package or getattr(plugin, "__name__", name), version, False))

    def adopt(self, plugin: Any, name: str, meta: PluginMeta) -> None:
        """Register a plugin module or object in the plugin manager, then its approaches: those it registers,
        or itself adapted when it is written as approach hooks."""
        pm_name = registrar_name(plugin, name)
        self.pm.register(plugin, name=pm_name)
        self.pm.check_pending()
        self.meta[pm_name] = meta
        if pm_name != name:
            self.collect(pm_name)
        elif is_hook_style(self.pm, plugin):
            self.add(HookApproach(name, self.pm, plugin), name)

    def implements(self, name: str, method: str) -> bool:
        return name in self.registry and self.registry[name].implements(method)

    def code_roots(self, name: str, methods: tuple[str, ...]) -> list[Any]:
        """The functions behind ``methods`` of approach ``name``, for its code fingerprint. A registered approach's
        are its methods bound to the registered object, so that harness.identity looks up what they reach through
        ``self`` on its own class: an inherited ``train`` calling ``self._fit`` reaches the subclass's ``_fit``."""
        approach = self.approach(name)
        if isinstance(approach, HookApproach):
            return approach.functions(methods)
        return [getattr(approach, method) for method in methods if approach.implements(method)]

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

        Returns the notices for the rows that run (:func:`harness.spec_notices.spec_notices`): the commands the spec
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
            settings = row_settings(self, row, spec, given)
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

    def describe(self, name: str) -> ApproachInfo:
        info = self.approach(name).describe()
        if not isinstance(info, ApproachInfo):
            raise TypeError(f"plugin {name!r}: harness_describe must return an ApproachInfo, got {type(info).__name__}")
        return info

    def settings_class(self, name: str) -> type[Settings]:
        """The Settings class that validates approach ``name``'s settings (a hook-style plugin's is built from
        what its ``harness_describe`` declares)."""
        approach = self.approach(name)
        return approach.declared_settings() if isinstance(approach, HookApproach) else approach.settings

    def hooks_of(self, name: str) -> list[str]:
        """The hooks a plugin implements; for an approach, the hook names of its methods (``harness_train``...)."""
        if name in self.registry:
            approach = self.registry[name]
            return sorted(f"harness_{method}" for method in METHOD_HOOKS if approach.implements(method))
        plugin = self.pm.get_plugin(name)
        return sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])

    def configured(
        self,
        name: str,
        settings: dict[str, Any],
        *,
        workdir: Path | None = None,
        cache_dir: Path | None = None,
        progress: Any = None,
    ) -> Configured:
        """Approach ``name`` with a run's settings (the plan's dict: the approach's settings and the core's
        ``seed``, ``random_weights``, ``predict_batch_size``) validated once into its Settings, and the context."""
        approach = self.approach(name)
        context = RunContext(
            seed=int(settings.get("seed", 0)),
            random_weights=bool(settings.get("random_weights")),
            workdir=workdir,
            cache_dir=cache_dir,
            batch_size=settings.get("predict_batch_size") or None,
            progress=progress,
        )
        return Configured(approach, approach.validated(settings), context)


@dataclass(frozen=True)
class Configured:
    """One approach with one run's settings and context: what the core calls its methods with."""

    approach: Approach
    settings: Any  # the approach's Settings instance (a hook-style plugin's: the dict its hooks take)
    context: RunContext

    def implements(self, method: str) -> bool:
        return self.approach.implements(method)

    def check(self, task: Task) -> None:
        self.approach.check(task, self.settings, self.context)

    def train(self, task: Task, train: list[Example], validation: list[Example]) -> Artifact:
        return self.approach.train(task, train, validation, self.settings, self.context)

    def load(self, task: Task, artifact: Artifact) -> Serving | None:
        return self.approach.load(task, artifact, self.settings, self.context)

    def predict(
        self, task: Task, artifact: Artifact, examples: list[Example], progress: Any = None
    ) -> list[Prediction]:
        context = self.context if progress is None else replace(self.context, progress=progress)
        return self.approach.predict(task, artifact, examples, self.settings, context)

    def reference(self, task: Task, artifact: Artifact) -> Any:
        return self.approach.reference(task, artifact, self.settings, self.context)

    def parity(self, task: Task, artifact: Artifact, examples: list[Example]) -> Parity | None:
        return self.approach.parity(task, artifact, examples, self.settings, self.context)


def registrar_name(plugin: Any, name: str) -> str:
    """The plugin manager's name for a plugin: its own name, or for one that registers approaches (whose
    names may well be its own) ``NAME:approaches``."""
    return f"{name}:approaches" if hasattr(plugin, "harness_register_approaches") else name


def _registrations(caller: Any) -> list[tuple[str, Approach]]:
    """Call ``harness_register_approaches`` implementation by implementation, so that each registration
    is known by the plugin that made it."""
    found: list[tuple[str, Approach]] = []
    for impl in caller.get_hookimpls():

        def register(approach: Approach, owner: str = impl.plugin_name) -> None:
            found.append((owner, approach))

        impl.function(**{name: register for name in impl.argnames})
    return found


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
            if pm.get_plugin(ep.name) is not None or ep.name in plugins.registry:
                continue
            pm_name = ep.name
            try:
                module: ModuleType = ep.load()
                pm_name = registrar_name(module, ep.name)
                version = ep.dist.version if ep.dist else ""
                plugins.adopt(module, ep.name, PluginMeta(ep.name, ep.value, version, builtin))
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
