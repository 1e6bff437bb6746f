"""The prompt a spec gives: plain or with roles, its placeholders checked, a row's prompt merged over the task's."""

from __future__ import annotations

import string
from typing import Annotated, Any, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, field_validator


class Strict(BaseModel):
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


def checked_template(needs_text: bool):
    def check(value: str | None) -> str | None:
        # "" is how an approach's override removes the task's system message or raw prompt.
        if value is None or (value == "" and not needs_text):
            return value
        problem = template_problem(value, needs_text=needs_text)
        if problem:
            raise ValueError(problem)
        return value

    return check


class PromptSpec(Strict):
    """A prompt with roles. ``system`` and ``user`` are a chat model's messages; ``raw`` is the whole prompt
    for a model without a chat template (seed 002's SeqGPT). A prompt with only ``raw`` is also given to
    chat models, as their user message."""

    system: str | None = Field(None, description="the chat system message; {options} allowed")
    user: str | None = Field(None, description="the chat user message; needs {text}")
    raw: str | None = Field(None, description="the whole prompt for a model without a chat template; needs {text}")

    check_system = field_validator("system")(checked_template(needs_text=False))
    check_user_and_raw = field_validator("user", "raw")(checked_template(needs_text=True))


def prompt_form(value: Any) -> str | None:
    if isinstance(value, str):
        return "prompt-string"
    if isinstance(value, (dict, PromptSpec)):
        return "prompt-mapping"
    return None


# A string is the user template (as before prompts had roles); a mapping gives roles. The discriminator
# validates only the form given, so an error names the real problem instead of one per union branch.
PromptValue = Annotated[
    Union[
        Annotated[Annotated[str, AfterValidator(checked_template(needs_text=True))], Tag("prompt-string")],
        Annotated[PromptSpec, Tag("prompt-mapping")],
    ],
    Discriminator(
        prompt_form,
        custom_error_type="prompt_form",
        custom_error_message="a prompt is a string (the user template) or a mapping of system, user and raw",
    ),
]
PROMPT: TypeAdapter[str | PromptSpec] = TypeAdapter(PromptValue)


def prompt_fields(prompt: str | PromptSpec | None) -> dict[str, str]:
    if prompt is None:
        return {}
    if isinstance(prompt, str):
        return {"user": prompt}
    return prompt.model_dump(exclude_none=True)


def merged_prompt(base: str | PromptSpec | None, override: str | PromptSpec | None) -> dict[str, str]:
    """Field by field: what the override gives replaces the task's; what it leaves out is kept."""
    return {**prompt_fields(base), **prompt_fields(override)}


def prompt_problem(fields: dict[str, str]) -> str | None:
    """What a complete prompt (the task's, or an approach's after merging) lacks, or None."""
    if fields.get("user") is None and fields.get("system"):
        return "a system message needs a user template with {text} too"
    if fields.get("user") is None and not fields.get("raw"):
        return "needs user (a chat model's message) or raw (the whole prompt of a model without a chat template)"
    return None


def listed_once(names: list[str]) -> list[str]:
    """A list of names (labels, fields, metrics) in which each name is one thing: a name listed twice would be
    two labels of one class, a field scored twice, or a column shown twice."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{name!r} is listed twice")
        seen.add(name)
    return names
