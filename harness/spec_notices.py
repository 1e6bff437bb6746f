"""What a spec file makes harness do outside itself: the commands it runs and the addresses it sends a key to."""

from __future__ import annotations

from typing import Any

from harness.spec import Spec

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
    where the approach's default or a ``--set`` gives it. The layers are :func:`harness.settings.resolve_settings`'s."""
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
