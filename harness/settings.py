"""A row's settings: the approach's defaults, the spec's and ``--set``'s values, each checked by its Settings class.

The approach's pydantic :class:`~harness.approach.Settings` class is the one validator: its field types,
``Literal`` choices and ``ge``/``gt``/``le``/``lt`` ranges decide what a value may be, and its errors become
the one-line errors users see, naming the spec file and key or the ``--set`` option. What happens before
pydantic sees a value is reading it: command-line text is read as YAML, and text and numbers are read as
the type of the setting's default (``"1e-5"`` for a float, ``8`` for a string), as a spec's author means them.
"""

from __future__ import annotations

import typing
from typing import Any, Literal

import yaml
from pydantic import ValidationError, create_model
from pydantic.fields import FieldInfo

from harness.approach import Settings, setting
from harness.errors import UserError
from harness.spec import Spec

SEED_HINT = (
    "the seed is not a plugin setting: the spec's seed: or seeds:, or --seeds; a plugin gets "
    "the run's seed as settings['seed']"
)


def resolve_settings(
    row: str,
    settings: type[Settings],
    spec: Spec,
    overrides: dict[str, str],
    *,
    base_overrides: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The settings row ``row`` runs with: the defaults of ``settings`` (its approach's Settings class), then
    the spec's ``plugins.<row>`` section, then ``--set`` (``overrides``). A row of another approach
    (``plugins.<row>.approach``) starts from that approach's section and ``--set`` values (``base_overrides``)."""
    values = {name: field.default for name, field in settings.model_fields.items()}

    def set_values(section: str, given: dict[str, str]) -> None:
        for key, text in given.items():
            where = f"--set {section}.{key}"
            if key == "prompt" and key not in values:
                raise UserError(
                    f"the prompt is set in the spec: task.prompt, or plugins.{section}.prompt for {section} alone",
                    where=where,
                )
            value = read_cli_value(text, values.get(key), choices_of(settings, key))
            values[key] = checked(row, settings, key, value, where=where)

    base = spec.approach_of(row)
    layers = [(base, base_overrides or {}), (row, overrides)] if base != row else [(row, overrides)]
    for section, given in layers:
        for key, value in (spec.plugins.get(section) or {}).items():
            values[key] = checked(row, settings, key, value, where=f"{spec.where}: plugins.{section}.{key}")
        set_values(section, given)
    return values


def checked(row: str, settings: type[Settings], key: str, value: Any, *, where: str) -> Any:
    """``value`` for setting ``key``, as the Settings class validates it; a :class:`UserError` at ``where``."""
    fields = settings.model_fields
    if key == "seed" and key not in fields:
        raise UserError(SEED_HINT, where=where)
    if key not in fields:
        raise UserError(f"unknown setting for {row}; known: {', '.join(sorted(fields))}", where=where)
    default = fields[key].default
    extra = fields[key].json_schema_extra
    secret = isinstance(extra, dict) and bool(extra.get("secret"))
    try:
        if value is None and default is not None:
            hint = ' (write "" for an empty string)' if isinstance(default, str) else ""
            raise UserError(f"needs a {type(default).__name__} value{hint}", where=where)
        value = as_type_of(default, value)
        try:
            return getattr(settings.model_validate({key: value}, strict=True), key)
        except ValidationError as exc:
            raise UserError(_message(exc, value, fields[key]), where=where) from None
    except UserError:
        if not secret:
            raise
        # A secret is never printed back, not even to say what is wrong with it.
        raise UserError(
            f"not a valid {type(default).__name__} (a secret: its value is not shown)", where=where
        ) from None


def as_type_of(default: Any, value: Any) -> Any:
    """``value`` read as the type of ``default`` where it is text or a number of another kind: ``"8"`` for an
    int, ``"1e-5"`` or ``3`` for a float, ``8`` for a string. Anything else is left for pydantic to judge."""
    kind = type(default)
    if isinstance(value, bool) or default is None:
        return value
    if kind is float and isinstance(value, (int, str)):
        try:
            return float(value)
        except ValueError:
            return value
    if kind is int and isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return value
    if kind is str and isinstance(value, (int, float)):
        return str(value)
    return value


RELATIONS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}


def _message(exc: ValidationError, value: Any, field: FieldInfo) -> str:
    error = exc.errors()[0]
    kind = error["type"]
    if kind in RELATIONS:
        name = {">=": "ge", ">": "gt", "<=": "le", "<": "lt"}[RELATIONS[kind]]
        bound = next(getattr(m, name) for m in field.metadata if hasattr(m, name))  # as declared: 0, not 0.0
        return f"must be {RELATIONS[kind]} {bound}, got {value}"
    if kind == "finite_number":
        return f"must be a finite number, got {value}"
    wrong_type = field.default is not None and (
        not isinstance(value, type(field.default)) or isinstance(value, bool) != isinstance(field.default, bool)
    )
    choices = typing.get_args(field.annotation)
    if kind == "literal_error" and (not wrong_type or len({type(choice) for choice in choices}) > 1):
        # As the user writes them: YAML's true and false for a setting that mixes booleans and words.
        words = (str(choice).lower() if isinstance(choice, bool) else str(choice) for choice in choices)
        return f"{value!r} is not one of {', '.join(words)}"
    expected = (
        type(field.default).__name__ if field.default is not None else error["msg"].removeprefix("Input should be ")
    )
    return f"expected {expected}, got {value!r}"


def settings_class(
    name: str,
    defaults: dict[str, Any],
    *,
    choices: dict[str, tuple[Any, ...]] | None = None,
    limits: dict[str, tuple[Any, Any]] | None = None,
    predict: tuple[str, ...] = (),
    secret: tuple[str, ...] = (),
    models: tuple[str, ...] = (),
) -> type[Settings]:
    """The Settings class of settings declared as a dict of defaults, as a hook-style plugin's ApproachInfo
    declares them: each default's type (any value where the default is None), its choices as a ``Literal``,
    its range from ``limits`` (``(low, high)``, a bound written ``(">", x)`` excluded) or, for the settings
    every approach shares (the Trainer's, ``max_length``, ``predict_batch_size``), their shared range."""
    choices, limits = choices or {}, limits or {}
    fields: dict[str, Any] = {}
    for key, default in defaults.items():
        annotation: Any = Any if default is None else type(default)
        if key in choices:
            annotation = Literal[tuple(choices[key])]
        bounds = _bounds(limits[key]) if key in limits else shared_ranges().get(key, {})
        declared = setting(default, predict=key in predict, secret=key in secret, model=key in models, **bounds)
        fields[key] = (annotation, declared)
    return create_model(f"{name} settings", __base__=Settings, **fields)


def _bounds(limit: tuple[Any, Any]) -> dict[str, Any]:
    low, high = limit
    bounds = {}
    if low is not None:
        bounds.update({"gt": low[1]} if isinstance(low, tuple) else {"ge": low})
    if high is not None:
        bounds.update({"lt": high[1]} if isinstance(high, tuple) else {"le": high})
    return bounds


def shared_ranges() -> dict[str, dict[str, Any]]:
    """The ranges of the settings that mean the same in every approach that has them: the Trainer's (declared
    on :class:`harness.hf_trainer.TrainerSettings`), ``max_length`` and ``predict_batch_size``."""
    import annotated_types

    from harness.hf_trainer import TrainerSettings

    ranges: dict[str, dict[str, Any]] = {"max_length": {"ge": 1}, "predict_batch_size": {"ge": 0}}
    for key, field in TrainerSettings.model_fields.items():
        for bound in field.metadata:
            if isinstance(bound, (annotated_types.Ge, annotated_types.Gt, annotated_types.Le, annotated_types.Lt)):
                ranges.setdefault(key, {}).update(
                    {name: getattr(bound, name) for name in ("ge", "gt", "le", "lt") if hasattr(bound, name)}
                )
    return ranges


def read_cli_value(text: str, default: Any = None, choices: tuple[Any, ...] = ()) -> Any:
    """A ``--set`` value: YAML (``8``, ``1e-5``, ``true``, ``[a, b]``), but a string setting takes the text as
    typed: YAML would read "" as null, "on" as true, "{text}" as a mapping and "1.0e-5" as 1e-05. A quoted
    YAML string is still read as one, so "a\\nb" can pass a newline. A setting whose ``choices`` mix words and
    booleans (``gradient_checkpointing``: true, false or auto) takes YAML's true and false as they are."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, bool) and any(choice is value for choice in choices):
        return value
    if isinstance(default, str) and not isinstance(value, str):
        return text
    return value


def choices_of(settings: type[Settings], key: str) -> tuple[Any, ...]:
    """The choices of setting ``key`` when its type is a ``Literal``, else ()."""
    field = settings.model_fields.get(key)
    return (
        typing.get_args(field.annotation)
        if field is not None and typing.get_origin(field.annotation) is Literal
        else ()
    )


def parse_overrides(items: list[str]) -> dict[str, dict[str, str]]:
    """``["bert.num_train_epochs=1"]`` -> ``{"bert": {"num_train_epochs": "1"}}``."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        target, sep, value = item.partition("=")
        approach, dot, key = target.partition(".")
        if not sep or not dot or not approach or not key:
            raise UserError(f"expected PLUGIN.KEY=VALUE, got {item!r}", where="--set")
        out.setdefault(approach, {})[key] = value
    return out
