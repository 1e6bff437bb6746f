"""The adapter that turns a plugin written as hook functions into an Approach (deprecated).

Before the registered contract (:class:`harness.approach.Approach`), an approach was a module or object with
``harness_describe``, ``harness_train``, ``harness_predict``... hook functions registered under the approach's
name. Such plugins keep working: the core adapts each one into a :class:`HookApproach` once, when it is
registered, with a DeprecationWarning, and from then on calls it as it calls every approach. Its settings
stay the dict the hooks were written for, with the core's ``seed``, ``random_weights`` and
``predict_batch_size`` in it.
"""

from __future__ import annotations

import warnings
from typing import Any

import pluggy

from harness.approach import Approach, RunContext, Settings
from harness.settings import settings_class
from harness.types import ApproachInfo, Artifact, Example, Parity, Prediction, Serving, Task

# The hooks a plugin implements to be an approach, and those it may add.
APPROACH_HOOKS = ("harness_train", "harness_predict")
METHOD_HOOKS = ("check", "describe", "train", "load", "predict", "reference", "parity")


def hook_impls(pm: pluggy.PluginManager, plugin: Any) -> dict[str, pluggy.HookImpl]:
    """The hook implementations ``plugin`` registered in ``pm``, by hook name, leaving out wrappers (which
    observe other plugins' calls and are no approach's own)."""
    found = {}
    for caller in pm.get_hookcallers(plugin) or []:
        for impl in caller.get_hookimpls():
            if impl.plugin is plugin and not (impl.wrapper or impl.hookwrapper):
                found[caller.name] = impl
    return found


def is_hook_style(pm: pluggy.PluginManager, plugin: Any) -> bool:
    """Whether ``plugin`` (registered in ``pm``) is an approach written as hook functions."""
    return any(hook in APPROACH_HOOKS for hook in hook_impls(pm, plugin))


class HookApproach(Approach):
    """A hook-style plugin as an Approach: each method calls the plugin's hook of the same name with the
    arguments it asks for (an implementation may take any subset of a hook's arguments)."""

    def __init__(self, name: str, pm: pluggy.PluginManager, plugin: Any):
        self.name = name
        self.hooks = {
            hook.removeprefix("harness_"): impl
            for hook, impl in hook_impls(pm, plugin).items()
            if hook.removeprefix("harness_") in METHOD_HOOKS
        }
        warnings.warn(
            f"plugin {name!r} is written as hook functions ({', '.join(sorted(self.hooks))}), which is deprecated: "
            "register an harness.Approach from harness_register_approaches instead (docs/plugins.md)",
            DeprecationWarning,
            stacklevel=4,
        )

    def _call(self, method: str, **kwargs: Any) -> Any:
        impl = self.hooks.get(method)
        if impl is None:
            raise TypeError(f"plugin {self.name!r} does not implement harness_{method}")
        return impl.function(**{arg: kwargs[arg] for arg in impl.argnames})

    def implements(self, method: str) -> bool:
        return method in self.hooks

    def functions(self, methods: tuple[str, ...]) -> list[Any]:
        """The hook functions behind ``methods``, for the identity's code fingerprint."""
        return [self.hooks[method].function for method in methods if method in self.hooks]

    def describe(self) -> ApproachInfo:
        return self._call("describe")  # the core checks it is an ApproachInfo

    def declared_settings(self) -> type[Settings]:
        """A Settings class of what ``harness_describe`` declares: the settings are checked as every approach's."""
        info = self.describe()
        flags = {"predict": info.predict_settings, "secret": info.secret_settings, "models": info.model_settings}
        return settings_class(self.name, info.settings, choices=info.choices, limits=info.limits, **flags)

    def validated(self, values: dict[str, Any]) -> Any:
        return dict(values)  # checked against the declared settings when planned; the hooks take the dict

    def check(self, task: Task, settings: Any, context: RunContext) -> None:
        self._call("check", task=task, settings=settings)

    def train(
        self, task: Task, train: list[Example], validation: list[Example], settings: Any, context: RunContext
    ) -> Artifact:
        return self._call(
            "train",
            task=task,
            train=train,
            validation=validation,
            settings=settings,
            workdir=context.workdir,
            progress=context.progress,
        )

    def load(self, task: Task, artifact: Artifact, settings: Any, context: RunContext) -> Serving | None:
        return self._call("load", task=task, artifact=artifact, settings=settings, cache_dir=context.cache_dir)

    def predict(
        self, task: Task, artifact: Artifact, examples: list[Example], settings: Any, context: RunContext
    ) -> list[Prediction]:
        return self._call(
            "predict", task=task, artifact=artifact, examples=examples, settings=settings, progress=context.progress
        )

    def reference(self, task: Task, artifact: Artifact, settings: Any, context: RunContext) -> Any:
        return self._call("reference", task=task, artifact=artifact, settings=settings)

    def parity(
        self, task: Task, artifact: Artifact, examples: list[Example], settings: Any, context: RunContext
    ) -> Parity | None:
        return self._call("parity", task=task, artifact=artifact, examples=examples, settings=settings)
