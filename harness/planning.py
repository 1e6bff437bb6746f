"""Planning a comparison before anything runs: each row's Plan with its settings validated, and the run options.

An engine (``ApproachInfo.serves``) is planned over the approach it serves; a row of another approach
(``plugins.<row>.approach``) takes that approach's settings first, then its own. Plugins.check_spec reads a
spec's rows with the same :func:`row_settings`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.errors import UserError
from harness.settings import resolve_settings
from harness.spec import Spec
from harness.types import ApproachInfo


@dataclass
class CompareOptions:
    random_weights: bool = False
    rerun: bool = False
    latency_samples: int = 100
    warmup_examples: int = 64
    launcher: str = "process"  # or "inline": every unit in this process, for debugging
    seeds: list[int] | None = None  # --seeds: instead of the spec's seeds (or its seed)
    teacher: dict[str, Any] | None = None  # what harness.teacher did to the training data, for every record
    parallel: int = 1  # runs at once (harness grid on Ray); 1: one after another
    storage: str | None = None  # --storage: where new runs' artifacts go (harness.storage); None: the store
    # What the identities take from the machine that runs the units (harness.identity.host); None: this one's.
    host: dict[str, Any] | None = None
    # The plan's estimate for each (row, seed) (harness.estimate), kept in the row's record.
    estimates: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)


@dataclass
class Plan:
    """One row of a comparison, settled before anything runs.

    ``approach`` predicts; ``trainer`` trains: the approach itself, or the approach an engine serves.
    ``settings`` go to load and predict (the trainer's, with an engine's own on top); ``train_settings``
    go to train. ``predict_keys`` are the settings that change only how predict runs.
    """

    approach: str
    trainer: str
    settings: dict[str, Any]
    train_settings: dict[str, Any]
    predict_keys: tuple[str, ...] = ()
    train_predict_keys: tuple[str, ...] = ()  # the trainer's own predict settings: not part of what it trains
    model_settings: tuple[str, ...] = ()
    info: ApproachInfo | None = field(default=None, repr=False)
    secrets: tuple[str, ...] = ()  # settings never written to a record, a log or an error message
    # The row's name in the table (``approach`` unless the spec's plugins.<row>.approach names another),
    # and the row whose prompt the model is trained and asked with (the served row, for an engine).
    row: str = ""
    prompt_row: str = ""

    @property
    def name(self) -> str:
        return self.row or self.approach


def _describe(plugins: Any, name: str) -> ApproachInfo:
    try:
        return plugins.describe(name)
    except Exception as exc:  # a plugin bug, but the user needs to know which plugin
        raise UserError(
            f"plugin {name!r} cannot describe itself: {type(exc).__name__}: {exc}".splitlines()[0], where="--plugins"
        ) from None


def row_settings(plugins: Any, row: str, spec: Spec, overrides: dict[str, dict[str, str]]) -> dict[str, Any]:
    """``row``'s settings, judged by its approach's Settings class: the defaults, then the spec's section and
    ``overrides`` (``--set``, by row) for it. A row of another approach (plugins.<row>.approach) takes that
    approach's section and --set values first, then its own."""
    base = spec.approach_of(row)
    return resolve_settings(
        row,
        plugins.settings_class(base),
        spec,
        overrides.get(row, {}),
        base_overrides=overrides.get(base, {}) if base != row else None,
    )


def plan_settings(
    plugins: Any, spec: Spec, approaches: list[str], overrides: dict[str, dict[str, str]]
) -> dict[str, Plan]:
    """Validate every selected approach's settings and task support before anything runs.

    An engine (``ApproachInfo.serves``) is planned over the approach it serves, whose settings come from the
    spec's and ``--set``'s entries for that approach.
    """
    plugins.require([spec.approach_of(name) for name in approaches])
    infos = {name: _describe(plugins, spec.approach_of(name)) for name in approaches}
    served = {info.serves for info in infos.values() if info.serves}
    for name in sorted(served):
        if not plugins.implements(spec.approach_of(name), "train"):
            engine = next(n for n, i in infos.items() if i.serves == name)
            raise UserError(
                f"plugin {engine!r} serves {name!r}, which is not an installed approach that trains", where="--plugins"
            )
        infos.setdefault(name, _describe(plugins, spec.approach_of(name)))
    unknown = sorted(set(overrides) - set(approaches) - served - {spec.approach_of(name) for name in approaches})
    if unknown:
        raise UserError(f"{unknown[0]!r} is not among --plugins ({', '.join(approaches)})", where="--set")

    def resolved(name: str) -> dict[str, Any]:
        info = infos[name]
        if spec.task.type not in info.task_types:
            raise UserError(
                f"plugin {name!r} does not support {spec.task.type} (it supports {', '.join(info.task_types)})",
                where=spec.where,
            )
        return row_settings(plugins, name, spec, overrides)

    plans = {}
    for name in approaches:
        info = infos[name]
        trainer = info.serves or name
        train_settings = resolved(trainer)
        trainer_info = infos[trainer]
        if info.serves:
            own = resolved(name)
            # A setting the engine shares with what it serves (bert-onnx's max_length) takes the trained run's
            # value unless the engine's own section or --set names it.
            named = {
                *(spec.plugins.get(name) or {}),
                *(spec.plugins.get(spec.approach_of(name)) or {}),
                *overrides.get(name, {}),
                *overrides.get(spec.approach_of(name), {}),
            }
            own = {k: v for k, v in own.items() if k not in train_settings or k in named}
            settings = {**train_settings, **own}
            predict_keys = (*trainer_info.predict_settings, *info.settings)
        else:
            settings, predict_keys = train_settings, info.predict_settings
        # Every hook call gets the run's seed as settings["seed"] (the first seed here; run_approach sets its own).
        seed = {"seed": spec.training_seeds[0]}
        settings, train_settings = {**settings, **seed}, {**train_settings, **seed}
        plans[name] = Plan(
            spec.approach_of(name),
            spec.approach_of(trainer),
            settings,
            train_settings,
            tuple(dict.fromkeys(predict_keys)),
            tuple(trainer_info.predict_settings),
            trainer_info.model_settings,
            info,
            tuple({*info.secret_settings, *trainer_info.secret_settings}),
            row=name,
            prompt_row=trainer,
        )
    return plans
