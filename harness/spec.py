"""Benchmark specs: YAML files validated on load, so a typo is a one-line error naming file and key."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from harness.errors import UserError, not_utf8
from harness.prompt_spec import (
    PROMPT,
    PromptSpec,
    PromptValue,
    Strict,
    listed_once,
    merged_prompt,
    prompt_fields,
    prompt_problem,
)
from harness.types import Prompt, Task

_UNION_TAGS = {"prompt-string", "prompt-mapping", "float", "int"}


class TaskSpec(Strict):
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

    _unique_names = field_validator("labels", "fields", "option_labels")(listed_once)

    @model_validator(mode="after")
    def _labels_for_classification(self) -> TaskSpec:
        if self.type == "classification" and len(self.labels) < 2:
            raise ValueError("a classification task needs at least two labels")
        if self.option_labels and len(self.option_labels) != len(self.labels):
            raise ValueError("option_labels must have one entry per label")
        if self.type == "extraction" and not self.fields:
            raise ValueError("an extraction task needs its field names")
        return self


class DatasetSpec(Strict):
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
    limit_train: int | None = Field(
        None,
        gt=0,
        description="a stratified sample of N training examples (before validation is held out); "
        "--limit-train replaces it",
    )
    limit_test: int | None = Field(
        None, gt=0, description="a stratified sample of N test examples; --limit-test replaces it"
    )

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
# digits, '.', '_' and '-' as in a run id (harness.store.layout.RUN_ID), no '..', and short enough for a file name.
SPEC_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")


class Spec(Strict):
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

    _unique_metrics = field_validator("metrics")(listed_once)

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
        problem = self.task.prompt is not None and prompt_problem(prompt_fields(self.task.prompt))
        if problem:
            raise ValueError(f"task.prompt: {problem}")
        for name, prompt in self.task.prompts.items():
            problem = prompt_problem(prompt_fields(prompt))
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
                named = prompt_fields(self.task.prompts[value])
                self._prompts[approach] = PromptSpec.model_construct(
                    system=named.get("system", ""), user=named.get("user"), raw=named.get("raw", "")
                )
                self._prompt_names[approach] = value
                continue
            if isinstance(value, str) and "{" not in value and self.task.prompts:
                raise ValueError(f"{where}: {value!r} is not one of task.prompts ({', '.join(self.task.prompts)})")
            try:
                override = PROMPT.validate_python(value)
            except ValidationError as exc:
                loc, message = _error_parts(exc)
                raise ValueError(f"{where}{'.' + loc if loc else ''}: {message}") from None
            problem = prompt_problem(merged_prompt(self.task.prompt, override))
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
        fields = merged_prompt(self.task.prompt, override)
        if not fields:
            return None
        # "" in an override removes the task's system message or raw prompt; a raw-only prompt is what a
        # chat model gets as its user message too (validation guarantees user or raw is there).
        raw = fields.get("raw") or None
        user = fields.get("user") or raw
        assert user is not None, "a spec's prompt has user or raw: validated on load"
        return Prompt(user=user, system=fields.get("system") or None, raw=raw)

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
