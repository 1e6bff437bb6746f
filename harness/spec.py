"""Benchmark specs: YAML files validated on load, so a typo is a one-line error naming file and key."""

from __future__ import annotations

import math
import re
import string
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from harness.errors import UserError, not_utf8
from harness.types import Prompt, Task


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


PLACEHOLDERS = ("text", "options")


def template_problem(template: str, *, needs_text: bool) -> str | None:
    """Why a prompt template would fail or mislead when filled with str.format, or None if it is fine."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError:
        return "unbalanced brace; write a literal { or } as {{ or }}"
    names = set()
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        # Only the bare names: plugins fill templates with str.format(text=..., options=...), and a format
        # spec or attribute access there is almost always JSON or code that needed its braces doubled.
        if name not in PLACEHOLDERS or spec or conversion:
            shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            return f"unknown placeholder {shown}; use {{text}} and {{options}}, and {{{{ }}}} for literal braces"
        names.add(name)
    if needs_text and "text" not in names:
        return "needs the {text} placeholder (where the example goes)"
    return None


def _checked_template(needs_text: bool):
    def check(value: str | None) -> str | None:
        # "" is how an approach's override removes the task's system message or raw prompt.
        if value is None or (value == "" and not needs_text):
            return value
        problem = template_problem(value, needs_text=needs_text)
        if problem:
            raise ValueError(problem)
        return value

    return check


class PromptSpec(_Strict):
    """A prompt with roles. ``system`` and ``user`` are a chat model's messages; ``raw`` is the whole prompt
    for a model without a chat template (seed 002's SeqGPT). A prompt with only ``raw`` is also given to
    chat models, as their user message."""

    system: str | None = Field(None, description="the chat system message; {options} allowed")
    user: str | None = Field(None, description="the chat user message; needs {text}")
    raw: str | None = Field(None, description="the whole prompt for a model without a chat template; needs {text}")

    check_system = field_validator("system")(_checked_template(needs_text=False))
    check_user_and_raw = field_validator("user", "raw")(_checked_template(needs_text=True))


def _prompt_form(value: Any) -> str | None:
    if isinstance(value, str):
        return "prompt-string"
    if isinstance(value, (dict, PromptSpec)):
        return "prompt-mapping"
    return None


# A string is the user template (as before prompts had roles); a mapping gives roles. The discriminator
# validates only the form given, so an error names the real problem instead of one per union branch.
PromptValue = Annotated[
    Union[
        Annotated[Annotated[str, AfterValidator(_checked_template(needs_text=True))], Tag("prompt-string")],
        Annotated[PromptSpec, Tag("prompt-mapping")],
    ],
    Discriminator(
        _prompt_form,
        custom_error_type="prompt_form",
        custom_error_message="a prompt is a string (the user template) or a mapping of system, user and raw",
    ),
]
_PROMPT = TypeAdapter(PromptValue)
_UNION_TAGS = {"prompt-string", "prompt-mapping", "float", "int"}


def _prompt_fields(prompt: str | PromptSpec | None) -> dict[str, str]:
    if prompt is None:
        return {}
    if isinstance(prompt, str):
        return {"user": prompt}
    return prompt.model_dump(exclude_none=True)


def _merged_prompt(base: str | PromptSpec | None, override: str | PromptSpec | None) -> dict[str, str]:
    """Field by field: what the override gives replaces the task's; what it leaves out is kept."""
    return {**_prompt_fields(base), **_prompt_fields(override)}


def _prompt_problem(fields: dict[str, str]) -> str | None:
    """What a complete prompt (the task's, or an approach's after merging) lacks, or None."""
    if fields.get("user") is None and fields.get("system"):
        return "a system message needs a user template with {text} too"
    if fields.get("user") is None and not fields.get("raw"):
        return "needs user (a chat model's message) or raw (the whole prompt of a model without a chat template)"
    return None


def _listed_once(names: list[str]) -> list[str]:
    """A list of names (labels, fields, metrics) in which each name is one thing: a name listed twice would be
    two labels of one class, a field scored twice, or a column shown twice."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{name!r} is listed twice")
        seen.add(name)
    return names


class TaskSpec(_Strict):
    type: Literal["classification", "extraction"]
    labels: list[str] = Field(default_factory=list, description="label names, in label-id order")
    fields: list[str] = Field(default_factory=list, description="field names to extract")
    prompt: PromptValue | None = Field(
        None,
        description="prompt for prompted approaches: a string (the user template) or a mapping of system, user "
        "and raw; templates take {text} and {options}",
    )
    option_labels: list[str] = Field(
        default_factory=list, description="how each label is written in the prompt's options (defaults to labels)"
    )
    prompts: dict[str, PromptValue] = Field(
        default_factory=dict,
        description="named prompts besides task.prompt: an approach selects one with plugins.<approach>.prompt: NAME",
    )
    normalize: bool = Field(
        True,
        description="extraction: compare field values after Unicode NFKC and trimming "
        'whitespace (null, a missing key and "" are always the same empty value)',
    )

    _unique_names = field_validator("labels", "fields", "option_labels")(_listed_once)

    @model_validator(mode="after")
    def _labels_for_classification(self) -> TaskSpec:
        if self.type == "classification" and len(self.labels) < 2:
            raise ValueError("a classification task needs at least two labels")
        if self.option_labels and len(self.option_labels) != len(self.labels):
            raise ValueError("option_labels must have one entry per label")
        if self.type == "extraction" and not self.fields:
            raise ValueError("an extraction task needs its field names")
        return self


class DatasetSpec(_Strict):
    hub: str | None = Field(None, description="a Hugging Face hub dataset id, or a local dataset directory")
    config: str | None = Field(None, description="the hub dataset's configuration name")
    train_split: str = "train"
    test_split: str = "test"
    validation_split: str | None = Field(
        None, description="the hub dataset's validation split, used as is (nothing is held out of train)"
    )
    train: str | None = Field(None, description="a local JSONL or CSV file, relative to the spec file")
    test: str | None = None
    validation: str | None = Field(
        None, description="a local validation file beside train and test, used as is (nothing is held out of train)"
    )
    text_field: str = "text"
    label_field: str = "label"
    fields_field: str = "fields"

    # No source at all is allowed: a spec for data that is not published (waybill) names its fields and
    # is run with --data; load_datasets says so if --data is missing.
    @model_validator(mode="after")
    def _one_source(self) -> DatasetSpec:
        if bool(self.train) != bool(self.test):
            raise ValueError("give both train and test files (or a hub dataset)")
        if self.validation and self.validation_split:
            raise ValueError("give validation (a file) or validation_split (a hub split), not both")
        if self.validation and not self.train:
            raise ValueError(
                "validation is a local file beside the train and test files; a hub dataset names its validation_split"
            )
        if self.validation_split and not self.hub:
            raise ValueError("validation_split names a split of the hub dataset; local files use validation")
        return self


# numpy's and scikit-learn's seeds are unsigned 32-bit integers: outside this range a run would fail inside them.
MAX_SEED = 2**32 - 1


def seed_problem(seed: int) -> str | None:
    """Why ``seed`` cannot seed a run, or None: the spec's seed and seeds and ``--seeds`` alike."""
    if not 0 <= seed <= MAX_SEED:
        return f"a seed is an integer from 0 to {MAX_SEED}, got {seed}"
    return None


# A spec's name starts every comparison id, and comparison ids are file names in the store: ASCII letters,
# digits, '.', '_' and '-' as in a run id (harness.store.RUN_ID), no '..', and short enough for a file name.
SPEC_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")


class Spec(_Strict):
    name: str
    description: str = ""
    task: TaskSpec
    dataset: DatasetSpec
    validation: float | Literal["test", "none"] = Field(
        0.1,
        description="fraction of train held out (stratified) for checkpoint selection; 'test' selects on the "
        "test set as the seed articles did; 'none' trains without evaluation. Ignored when a validation file "
        "or split is given",
    )
    seed: int = Field(
        0,
        description="seeds the data: --limit-* samples and the held-out validation; the "
        "training seed too unless seeds is given",
    )
    seeds: list[int] | None = Field(
        None,
        description="train and measure each approach once per seed (the data "
        "stays the seed's sample); the table shows mean ± sd across them",
    )
    metrics: list[str] = Field(
        default_factory=list,
        description="the metrics the table shows (default: the task type's headline ones), by name "
        "(harness.metrics.METRICS, by task type)",
    )
    teacher: str | None = Field(
        None,
        description="an approach (or row) that labels the train examples before the "
        "approaches train, such as openai at an endpoint (harness.teacher); --teacher overrides",
    )
    plugins: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="per-approach settings; the key 'prompt' is not a setting but that approach's prompt, "
        "merged field by field over task.prompt",
    )

    # Set by load_spec, not by the YAML: where the spec came from, for error messages and relative paths.
    path: Path | None = Field(None, exclude=True)
    # plugins.<approach>.prompt, taken out of the settings on load so that it never reaches a plugin as one.
    _prompts: dict[str, str | PromptSpec] = PrivateAttr(default_factory=dict)
    _prompt_names: dict[str, str] = PrivateAttr(default_factory=dict)  # plugins.<row>.prompt: NAME of task.prompts
    # plugins.<row>.approach: a row of its own name that runs an installed approach with its own settings
    # and prompt (a zero-shot row of qwen beside the tuned one, say).
    _bases: dict[str, str] = PrivateAttr(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name_is_a_file_name(cls, name: str) -> str:
        if not SPEC_NAME.fullmatch(name) or ".." in name:
            raise ValueError(
                "letters, digits, '.', '_' and '-' only, no '..', 1 to 100 characters (it names the "
                f"comparison's files), got {name!r}"
            )
        return name

    _unique_metrics = field_validator("metrics")(_listed_once)

    @field_validator("seed")
    @classmethod
    def _seed_range(cls, seed: int) -> int:
        problem = seed_problem(seed)
        if problem:
            raise ValueError(problem)
        return seed

    @field_validator("seeds")
    @classmethod
    def _seeds_range(cls, seeds: list[int] | None) -> list[int] | None:
        problem = next((p for p in map(seed_problem, seeds or []) if p), None)
        if problem:
            raise ValueError(problem)
        return seeds

    @model_validator(mode="after")
    def _validation_range(self) -> Spec:
        from harness.metrics import DEFAULT_METRICS, METRICS

        known = METRICS[self.task.type]
        if "metrics" not in self.model_fields_set:
            self.metrics = list(DEFAULT_METRICS[self.task.type])
        unknown = [m for m in self.metrics if m not in known]
        if unknown:
            raise ValueError(f"metrics: unknown metric {unknown[0]!r} for {self.task.type}; known: {', '.join(known)}")
        if self.seeds is not None and (not self.seeds or len(set(self.seeds)) != len(self.seeds)):
            raise ValueError("seeds: give distinct seeds, at least one")
        if isinstance(self.validation, float) and not 0.0 < self.validation < 1.0:
            raise ValueError("validation must be a fraction between 0 and 1, 'test' or 'none'")
        given = "dataset.validation" if self.dataset.validation else "dataset.validation_split"
        if self.validation in ("test", "none") and (self.dataset.validation or self.dataset.validation_split):
            raise ValueError(
                f"validation: {self.validation!r} and {given} both say how checkpoints are selected; remove one"
            )
        return self

    @model_validator(mode="after")
    def _approach_prompts(self) -> Spec:
        problem = self.task.prompt is not None and _prompt_problem(_prompt_fields(self.task.prompt))
        if problem:
            raise ValueError(f"task.prompt: {problem}")
        for name, prompt in self.task.prompts.items():
            problem = _prompt_problem(_prompt_fields(prompt))
            if problem:
                raise ValueError(f"task.prompts.{name}: {problem}")
        for row, section in self.plugins.items():
            if "approach" in section:
                base = section.pop("approach")
                if not isinstance(base, str) or not base or base == row:
                    raise ValueError(
                        f"plugins.{row}.approach: the name of an installed approach this row runs "
                        f"with its own settings, got {base!r}"
                    )
                self._bases[row] = base
        for approach, section in self.plugins.items():
            if "prompt" not in section:
                continue
            where = f"plugins.{approach}.prompt"
            value = section.pop("prompt")
            if isinstance(value, str) and value in self.task.prompts:
                # A named prompt is whole: it replaces task.prompt, its absent system or raw removing the task's.
                self._prompts[approach] = PromptSpec.model_construct(
                    **{"system": "", "raw": "", **_prompt_fields(self.task.prompts[value])}
                )
                self._prompt_names[approach] = value
                continue
            if isinstance(value, str) and "{" not in value and self.task.prompts:
                raise ValueError(f"{where}: {value!r} is not one of task.prompts ({', '.join(self.task.prompts)})")
            try:
                override = _PROMPT.validate_python(value)
            except ValidationError as exc:
                loc, message = _error_parts(exc)
                raise ValueError(f"{where}{'.' + loc if loc else ''}: {message}") from None
            problem = _prompt_problem(_merged_prompt(self.task.prompt, override))
            if problem:
                raise ValueError(f"{where}: {problem}, here or in task.prompt")
            self._prompts[approach] = override
        return self

    def to_task(self, approach: str | None = None) -> Task:
        """The task as ``approach`` sees it: the spec's prompt with that approach's ``plugins.<approach>.prompt``
        merged over it field by field (no approach: the spec's prompt alone)."""
        return Task(
            type=self.task.type,
            labels=tuple(self.task.labels),
            fields=tuple(self.task.fields),
            normalize=self.task.normalize,
            prompt=self.prompt_for(approach),
            option_labels=tuple(self.task.option_labels or self.task.labels),
        )

    def prompt_for(self, approach: str | None = None) -> Prompt | None:
        override = (self._prompts.get(approach) or self._prompts.get(self.approach_of(approach))) if approach else None
        fields = _merged_prompt(self.task.prompt, override)
        if not fields:
            return None
        # "" in an override removes the task's system message or raw prompt; a raw-only prompt is what a
        # chat model gets as its user message too (validation guarantees user or raw is there).
        raw = fields.get("raw") or None
        return Prompt(user=fields.get("user") or raw, system=fields.get("system") or None, raw=raw)

    def approach_of(self, row: str) -> str:
        """The installed approach a row of the table runs: its own name, or ``plugins.<row>.approach``."""
        return self._bases.get(row, row)

    def prompt_name(self, row: str) -> str | None:
        """The name of the task.prompts entry a row asks with, or None (task.prompt, maybe overridden)."""
        return self._prompt_names.get(row)

    @property
    def training_seeds(self) -> list[int]:
        """The seeds each approach trains with: ``seeds``, else ``seed``."""
        return list(self.seeds) if self.seeds else [self.seed]

    @property
    def where(self) -> str:
        return str(self.path) if self.path else self.name


def spec_search_path() -> list[Path]:
    """Where ``--spec NAME`` is looked for: ./specs, then the specs shipped with harness."""
    shipped = Path(str(resources.files("harness_specs")))
    return [Path("specs"), shipped]


def find_spec(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml"} or path.exists():
        if not path.is_file():
            raise UserError("no such spec file", where=str(path))
        return path
    for folder in spec_search_path():
        for suffix in (".yaml", ".yml"):
            candidate = folder / f"{name_or_path}{suffix}"
            if candidate.is_file():
                return candidate
    known = sorted({p.stem for folder in spec_search_path() if folder.is_dir() for p in folder.glob("*.y*ml")})
    raise UserError(f"unknown spec {name_or_path!r}; known: {', '.join(known) or '(none)'}", where="--spec")


def list_specs() -> list[Path]:
    seen: dict[str, Path] = {}
    for folder in spec_search_path():
        if folder.is_dir():
            for path in sorted(folder.glob("*.y*ml")):
                seen.setdefault(path.stem, path)
    return list(seen.values())


def load_spec(name_or_path: str) -> Spec:
    """Load and validate a spec by name (``agnews``) or path; raise :class:`UserError` on any problem."""
    path = Path(name_or_path)
    if not path.is_dir():  # a directory is read below, so the error says why it cannot be
        path = find_spec(name_or_path)
    try:
        data = path.read_bytes()
        text = data.decode("utf-8")
        twice = _key_given_twice(yaml.compose(text, Loader=yaml.SafeLoader))
        raw = yaml.safe_load(text)
    except OSError as exc:
        raise UserError(f"cannot be read ({exc.strerror})", where=str(path)) from None
    except UnicodeDecodeError as exc:
        raise not_utf8(path, data, exc) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"not valid YAML: {getattr(exc, 'problem', exc)}", where=where) from None
    if twice:
        key, first, second = twice
        raise UserError(
            f"{key}: given twice, on lines {first} and {second} (YAML would keep only the last)", where=str(path)
        )
    if not isinstance(raw, dict):
        raise UserError("a spec must be a YAML mapping", where=str(path))
    try:
        spec = Spec.model_validate(raw)
    except ValidationError as exc:
        raise UserError(_first_error(exc), where=str(path)) from None
    spec.path = path
    return spec


def _key_given_twice(
    node: yaml.Node | None, path: tuple[str, ...] = (), seen_nodes: set[int] | None = None
) -> tuple[str, int, int] | None:
    """The first key given twice in one mapping of a composed YAML document, as ``(dotted key, first line,
    second line)``, or None. YAML's loaders keep the last value without a word; a merge (``<<: *base``) is
    not a repetition: the keys written beside it override what it brings."""
    seen_nodes = set() if seen_nodes is None else seen_nodes
    if node is None or id(node) in seen_nodes:  # an alias repeats a node already walked
        return None
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        lines: dict[str, int] = {}
        for key, value in node.value:
            name = str(key.value) if isinstance(key, yaml.ScalarNode) else None
            if name is not None and key.tag != "tag:yaml.org,2002:merge":
                line = key.start_mark.line + 1
                if name in lines:
                    return ".".join((*path, name)), lines[name], line
                lines[name] = line
            found = _key_given_twice(value, (*path, name or "?"), seen_nodes)
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            found = _key_given_twice(item, (*path, str(index)), seen_nodes)
            if found:
                return found
    return None


def _first_error(exc: ValidationError) -> str:
    loc, message = _error_parts(exc)
    return f"{loc}: {message}" if loc else message


def _error_parts(exc: ValidationError) -> tuple[str, str]:
    # A misspelt key also makes the right key "missing": report the unknown key, which is the cause.
    err = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
    # Unions report a branch name (e.g. 'float', 'literal[...]') in loc; drop it so the key reads cleanly.
    loc = ".".join(str(p) for p in err["loc"] if str(p) not in _UNION_TAGS and not str(p).startswith("literal["))
    if err["type"] == "extra_forbidden":
        return loc, "unknown key"
    return loc, err["msg"].removeprefix("Value error, ")


def resolve_settings(
    approach: str,
    defaults: dict[str, Any],
    spec: Spec,
    overrides: dict[str, str],
    *,
    choices: dict[str, tuple[Any, ...]] | None = None,
    limits: dict[str, tuple[Any, Any]] | None = None,
    secret: tuple[str, ...] = (),
    base_overrides: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Merge an approach's defaults, the spec's ``plugins.<approach>`` section and ``--set`` overrides.

    Every key must be one of the defaults' keys, and values keep the defaults' types (an int is
    accepted for a float; command-line strings are converted). A key in ``choices`` (the approach's
    ``ApproachInfo.choices``) must take one of its allowed values.
    """
    choices = choices or {}
    limits = {**TRAINER_LIMITS, **(limits or {})}
    settings = dict(defaults)

    def accept(key: str, value: Any, where: str) -> None:  # type, choices, range: the spec and --set alike
        try:
            value = _allowed(_checked(approach, defaults, key, value, where=where), choices.get(key), where)
            settings[key] = _in_range(value, limits.get(key), where)
        except UserError:
            if key not in secret:
                raise
            # A secret is never printed back, not even to say what is wrong with it.
            raise UserError(
                f"not a valid {type(defaults[key]).__name__} (a secret: its value is not shown)", where=where
            ) from None

    def set_values(section: str, given: dict[str, str]) -> None:
        for key, text in given.items():
            where = f"--set {section}.{key}"
            if key == "prompt" and key not in defaults:
                raise UserError(
                    f"the prompt is set in the spec: task.prompt, or plugins.{section}.prompt for {section} alone",
                    where=where,
                )
            accept(key, _parse_cli_value(text, defaults.get(key)), where)

    # A row that runs another approach (plugins.<row>.approach) starts from that approach's section and
    # --set values; what the row's own section and --set say comes after.
    base = spec.approach_of(approach)
    layers = [(base, base_overrides or {}), (approach, overrides)] if base != approach else [(approach, overrides)]
    for section, given in layers:
        for key, value in (spec.plugins.get(section) or {}).items():
            accept(key, value, f"{spec.where}: plugins.{section}.{key}")
        set_values(section, given)
    return settings


# What a spec file can make harness do besides reading files and training: run a program on this machine, or
# send the user's key to an address the file chooses. Setting declarations carry no flag for either (setting()
# in harness.approach marks predict, secret and model settings only), so both are found by the names the
# built-in approaches give them: vllm's and vllm-lora's command (and extra_args and env, which change what that
# command runs), openai's base_url with api_key_env. A third-party approach that uses the same names is covered.
COMMAND_SETTING = "command"
COMMAND_PARTS = ("extra_args", "env")
ADDRESS_SETTING = "base_url"
KEY_ENV_SETTING = "api_key_env"


def spec_source(
    spec: Spec,
    row: str,
    key: str,
    overrides: dict[str, str] | None = None,
    base_overrides: dict[str, str] | None = None,
) -> str | None:
    """``plugins.<section>.<key>``, the place in the spec file that gives the value ``row`` runs with, or None
    where the approach's default or a ``--set`` gives it. The layers are :func:`resolve_settings`'s."""
    base = spec.approach_of(row)
    layers = [(base, base_overrides or {}), (row, overrides or {})] if base != row else [(row, overrides or {})]
    source = None
    for section, given in layers:
        if key in (spec.plugins.get(section) or {}):
            source = f"plugins.{section}.{key}"
        if key in given:
            source = None
    return source


def spec_notices(
    spec: Spec,
    row: str,
    settings: dict[str, Any],
    defaults: dict[str, Any],
    *,
    secret: tuple[str, ...] = (),
    overrides: dict[str, str] | None = None,
    base_overrides: dict[str, str] | None = None,
) -> list[str]:
    """One line for each thing the spec file (not the user's ``--set``, not the approach's default) makes
    ``row`` do that reaches outside harness: a command it runs on this machine (with the arguments and
    environment the file adds to it), and the address it sends the user's key to. ``settings`` are the row's
    resolved settings. Secrets are never shown: a command's secret-looking options and env's values are
    hidden as the records hide them, and a key is named by its variable."""
    from harness.redaction import parse_env, redact_value

    def given_by_spec(key: str) -> str | None:
        source = spec_source(spec, row, key, overrides, base_overrides)
        return source if source and settings.get(key) != defaults.get(key) else None

    notices = []
    command = settings.get(COMMAND_SETTING)
    if COMMAND_SETTING in defaults and isinstance(command, str):
        shown = redact_value(COMMAND_SETTING, command)
        source = given_by_spec(COMMAND_SETTING)
        if source:
            notices.append(f"{spec.where}: {source} runs {shown!r} on this machine")
        for key in COMMAND_PARTS:
            source, value = given_by_spec(key), settings.get(key)
            if not source or not isinstance(value, str) or not value.strip():
                continue
            if key == "env":
                what = f"sets {', '.join(parse_env(value)) or repr(value)} in the environment of"
            else:
                what = f"adds {redact_value(key, value)!r} to"
            notices.append(f"{spec.where}: {source} {what} the command {row} runs on this machine ({shown!r})")
    address = settings.get(ADDRESS_SETTING)
    source = given_by_spec(ADDRESS_SETTING) if ADDRESS_SETTING in defaults else None
    if source and isinstance(address, str):
        sent = [f"${settings[KEY_ENV_SETTING]}"] if settings.get(KEY_ENV_SETTING) else []
        # A secret written in the spec file is its author's own; one given with --set is the user's.
        sent += [
            f"the secret setting {key}"
            for key in secret
            if key != KEY_ENV_SETTING
            and settings.get(key)
            and not spec_source(spec, row, key, overrides, base_overrides)
        ]
        if sent:
            notices.append(f"{spec.where}: {source} sends {' and '.join(sent)} to {address}")
    return notices


# The Trainer's settings mean the same in every approach that has them: their ranges are checked up front,
# not when TrainingArguments rejects them after the model has loaded.
TRAINER_LIMITS: dict[str, tuple[Any, Any]] = {
    "per_device_train_batch_size": (1, None),
    "per_device_eval_batch_size": (1, None),
    "gradient_accumulation_steps": (1, None),
    "learning_rate": ((">", 0), None),
    "num_train_epochs": (0, None),
    "weight_decay": (0, None),
    "warmup_steps": (0, None),
    "eval_steps": ((">", 0), None),
    "logging_steps": ((">", 0), None),
    "max_grad_norm": (0, None),
    "max_length": (1, None),
    "predict_batch_size": (0, None),
}


def _in_range(value: Any, limit: tuple[Any, Any] | None, where: str) -> Any:
    """NaN and infinities are never a setting; ``limit`` is ``(low, high)``, a bound ``(">", x)`` excluded."""
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"must be a finite number, got {value}", where=where)
    if limit is None or not isinstance(value, (int, float)) or isinstance(value, bool):
        return value
    low, high = limit
    for bound, below in ((low, True), (high, False)):
        if bound is None:
            continue
        strict, bound = (True, bound[1]) if isinstance(bound, tuple) else (False, bound)
        bad = (value <= bound if strict else value < bound) if below else (value >= bound if strict else value > bound)
        if bad:
            relation = (">" if below else "<") + ("" if strict else "=")
            raise UserError(f"must be {relation} {bound}, got {value}", where=where)
    return value


def _parse_cli_value(text: str, default: Any = None) -> Any:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    # A string setting takes the text as typed: YAML would read "" as null, "on" as true, "{text}" as a
    # mapping and "1.0e-5" as 1e-05. A quoted YAML string is still read as one, so "a\nb" can pass a newline.
    if isinstance(default, str) and not isinstance(value, str):
        return text
    return value


def _allowed(value: Any, allowed: tuple[Any, ...] | None, where: str) -> Any:
    if allowed is not None and value not in allowed:
        raise UserError(f"{value!r} is not one of {', '.join(str(choice) for choice in allowed)}", where=where)
    return value


def _checked(approach: str, defaults: dict[str, Any], key: str, value: Any, *, where: str) -> Any:
    if key == "seed" and key not in defaults:
        raise UserError(
            "the seed is not a plugin setting: the spec's seed: or seeds:, or --seeds; a plugin gets "
            "the run's seed as settings['seed']",
            where=where,
        )
    if key not in defaults:
        raise UserError(f"unknown setting for {approach}; known: {', '.join(sorted(defaults))}", where=where)
    default = defaults[key]
    if default is None:
        return value
    if value is None:
        hint = ' (write "" for an empty string)' if isinstance(default, str) else ""
        raise UserError(f"needs a {type(default).__name__} value{hint}", where=where)
    kind = type(default)
    if kind is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            pass
    elif kind is int and isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    elif kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise UserError(f"expected {kind.__name__}, got {value!r}", where=where)
    return value


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
