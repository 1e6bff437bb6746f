"""The approach contract: an approach is an object with ``train``, ``load``, ``predict`` (and optionally
``reference``) methods and typed settings, registered by a plugin through ``harness_register_approaches``.

As simonw/llm registers models, a plugin module registers one or several approaches::

    @hookimpl
    def harness_register_approaches(register):
        register(Bert())

The core gives each method the task, the data, the approach's own settings (an instance of its
:class:`Settings` class: typed, validated, with nothing of the core's in it) and a :class:`RunContext`
(the run's seed, whether weights are random, the directories it may write, the batch the core asks for,
progress). What many plugins answer (scores, events, the identity and environment) stays pluggy hooks.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from harness.types import ApproachInfo, Artifact, Example, Parity, Prediction, Serving, Task, TaskType


class Progress(Protocol):
    """What ``RunContext.progress`` offers (harness.progress.RunProgress): bars, log lines, timed phases."""

    def bar(self, description: str, total: float | None) -> Any: ...
    def track(self, items: Any, description: str, total: float | None = None, weight: Any = None) -> Any: ...
    def log(self, **entry: Any) -> None: ...
    def phase(self, name: str) -> Any: ...


class Settings(BaseModel):
    """An approach's settings: subclass it, one field each, declared with :func:`setting`. The field's
    type is enforced, a ``Literal`` gives its choices, ``ge``/``gt``/``le``/``lt`` its range."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump()


def setting(
    default: Any,
    *,
    predict: bool = False,
    secret: bool = False,
    model: bool = False,
    help: str = "",
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """One setting: its default, and what the core must know about it.

    - ``predict``: it changes only how predict runs (a batch size, a scoring rule, the serving device):
      changing it measures the stored model again instead of training a new one.
    - ``secret``: an API key or token: accepted from the spec or ``--set``, never written to a record, a
      log or an error message (the records hold ``"<secret>"``). Prefer reading it from the environment.
    - ``model``: it names a model (a hub id, a local directory or file): the run's training identity
      holds its resolved hub revision or the content hash of its files.
    """
    extra: dict[str, JsonValue] = {"predict": predict, "secret": secret, "model": model}
    return Field(default, description=help, ge=ge, gt=gt, le=le, lt=lt, json_schema_extra=extra)


@dataclass(frozen=True)
class SettingsDeclaration:
    """What the core reads off a :class:`Settings` class."""

    defaults: dict[str, Any]
    choices: dict[str, tuple[Any, ...]]
    predict: tuple[str, ...]
    secret: tuple[str, ...]
    models: tuple[str, ...]


def declaration_of(cls: type[Settings]) -> SettingsDeclaration:

    defaults: dict[str, Any] = {}
    choices: dict[str, tuple[Any, ...]] = {}
    predict: list[str] = []
    secret: list[str] = []
    models: list[str] = []
    hints = typing.get_type_hints(cls)
    for name, field_info in cls.model_fields.items():
        defaults[name] = field_info.default
        if typing.get_origin(hints[name]) is Literal:
            choices[name] = typing.get_args(hints[name])
        extra = field_info.json_schema_extra if isinstance(field_info.json_schema_extra, dict) else {}
        for flag, names in (("predict", predict), ("secret", secret), ("model", models)):
            if extra.get(flag):
                names.append(name)
    return SettingsDeclaration(defaults, choices, tuple(predict), tuple(secret), tuple(models))


@dataclass
class RunContext:
    """What the core gives every method besides the task, the data and the settings.

    - ``seed``: the run's training seed; Python, NumPy and torch are seeded with it before the call.
    - ``random_weights``: build the model from its config, without weights (speed only).
    - ``workdir``: train's directory of its own in the store, for checkpoints and the final model; the
      same directory comes back to a run resumed after a kill.
    - ``cache_dir``: load's directory of its own per trained model and serving settings, for what it
      derives to serve (an export, a merge); the first load that writes there is timed as the build.
    - ``batch_size``: the batch predict is asked for (the approach's ``predict_batch_size`` setting, or
      when that is 0 the batch load reported); None for an approach without one.
    - ``progress``: bars, training log lines, timed phases.
    """

    seed: int = 0
    random_weights: bool = False
    workdir: Path | None = None
    cache_dir: Path | None = None
    batch_size: int | None = None
    progress: Progress = field(default=None, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.progress is None:
            from harness.progress import SILENT

            self.progress = SILENT


class Approach:
    """The base of a registered approach. Subclass it, set the class attributes, implement the methods.

    ``name`` is what ``--plugins`` selects; ``serves`` names the approach whose trained model an engine
    serves (an engine trains nothing: the core trains that approach, or finds its stored training, and
    the engine loads and predicts from the artifact; all its own settings are predict settings).
    """

    name: str = ""
    task_types: tuple[TaskType, ...] = ("classification",)
    settings: type[Settings] = Settings
    description: str = ""
    serves: str | None = None

    def describe(self) -> ApproachInfo:
        """What the core plans with, read off the class attributes and the Settings class (no need to override)."""
        declared = declaration_of(self.settings)
        own = tuple(declared.defaults) if self.serves else declared.predict  # an engine's are all predict settings
        return ApproachInfo(
            task_types=tuple(self.task_types),
            settings=declared.defaults,
            description=self.description,
            predict_settings=own,
            choices=declared.choices,
            serves=self.serves,
            model_settings=declared.models,
            secret_settings=declared.secret,
        )

    def implements(self, method: str) -> bool:
        """Whether this approach has ``method`` of its own (``describe`` and ``predict`` it always has)."""
        return method in ("describe", "predict") or getattr(type(self), method) is not getattr(Approach, method)

    def validated(self, values: dict[str, Any]) -> Any:
        """This approach's Settings instance from the core's settings of a run (the core's own keys, such as
        ``seed``, are not settings of the approach and are left out)."""
        fields = self.settings.model_fields
        return self.settings.model_validate({key: value for key, value in values.items() if key in fields})

    def check(self, task: Task, settings: Any, context: RunContext) -> None:
        """Before anything trains or serves, in the process that runs the compare: make sure what the approach
        needs outside harness is there (an endpoint that answers and accepts the key, a command that exists),
        and raise :class:`harness.errors.UserError` in one line when it is not: the compare stops with exit 2."""
        return None

    def train(
        self, task: Task, train: list[Example], validation: list[Example], settings: Any, context: RunContext
    ) -> Artifact:
        """Train on ``train``, selecting checkpoints on ``validation``; save the model under
        ``context.workdir`` and return its :class:`~harness.types.Artifact`."""
        raise NotImplementedError(f"{self.name} does not train; an engine sets serves=")

    def load(self, task: Task, artifact: Artifact, settings: Any, context: RunContext) -> Serving | None:
        """Make the artifact ready to serve (called once per measuring process, before anything is timed)."""
        return None

    def predict(
        self, task: Task, artifact: Artifact, examples: list[Example], settings: Any, context: RunContext
    ) -> list[Prediction]:
        """Exactly one :class:`~harness.types.Prediction` per example, in the order given."""
        raise NotImplementedError

    def reference(
        self, task: Task, artifact: Artifact, settings: Any, context: RunContext
    ) -> Callable[[list[str]], Any] | None:
        """The loaded model called by hand, for bench's ``raw`` row; None when there is none."""
        return None

    def parity(
        self, task: Task, artifact: Artifact, examples: list[Example], settings: Any, context: RunContext
    ) -> Parity | None:
        """After the timed pass, untimed: check that what serves answers as the model it was derived from
        (a merged adapter against the adapter, an export against PyTorch) on ``examples`` (the test set
        without answers). A :class:`~harness.types.Parity` that is not ``ok`` fails the row with its message.
        None: nothing to check."""
        return None


class ZeroShotApproach(Approach):
    """An approach that answers without training (a model asked as it is, an endpoint): ``train`` stores
    nothing and says so in the row's notes."""

    def train(
        self, task: Task, train: list[Example], validation: list[Example], settings: Any, context: RunContext
    ) -> Artifact:
        artifact = Artifact(path=None)
        artifact.notes.append("zero-shot: nothing trains")
        return artifact
