"""``harness grid``: approaches x settings x seeds x specs as runs, one comparison per spec.

``--set a.learning_rate=1e-5,2e-5`` gives approach ``a`` one row per value (``a@learning_rate=1e-5``, ...); several
multi-valued settings of one approach give the cross product; a value that holds a comma writes it ``\\,``.
Every row runs once per seed. Locally the runs go one after another with compare's process-per-unit launcher;
with ``--executor ray`` each unit is a Ray task (:mod:`harness.ray_executor`) and ``--parallel`` runs go at once.
Runs already in the store are reused, so a grid that was interrupted resumes where it stopped, and a second
identical grid trains nothing.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import replace
from typing import Any

from harness.errors import UserError


def split_values(text: str) -> list[str]:
    """``1e-5,2e-5`` -> two values; ``a\\,b`` stays one value ``a,b``."""
    return [part.replace("\\,", ",") for part in re.split(r"(?<!\\),", text)]


def variants(items: list[str]) -> tuple[dict[str, dict[str, str]], dict[str, list[dict[str, str]]]]:
    """``--set`` items as the settings every row of an approach shares and, per approach, the combinations of
    its multi-valued settings (an empty list: one row with the shared settings)."""
    shared: dict[str, dict[str, str]] = {}
    multi: dict[str, dict[str, list[str]]] = {}
    for item in items:
        target, sep, value = item.partition("=")
        approach, dot, key = target.partition(".")
        if not sep or not dot or not approach or not key:
            raise UserError(f"expected PLUGIN.KEY=VALUE[,VALUE...], got {item!r}", where="--set")
        values = split_values(value)
        if len(values) != len(set(values)):
            raise UserError(f"the values of {target} repeat: {value!r}", where="--set")
        if len(values) == 1:
            shared.setdefault(approach, {})[key] = values[0]
        else:
            multi.setdefault(approach, {})[key] = values
    combos = {
        approach: [dict(zip(keys.keys(), chosen)) for chosen in itertools.product(*keys.values())]
        for approach, keys in multi.items()
    }
    return shared, combos


def row_name(approach: str, combo: dict[str, str]) -> str:
    return approach + "".join(f"@{key}={value}" for key, value in combo.items())


def grid_plans(plugins: Any, spec: Any, approaches: list[str], items: list[str]) -> dict[str, Any]:
    """One plan per approach and combination of its multi-valued settings, named ``approach@key=value``."""
    from harness.planning import plan_settings

    shared, combos = variants(items)
    plans: dict[str, Any] = {}
    for approach in approaches:
        typed: dict[str, str] = {}  # the row's resolved settings -> its name: 1e-5 and 0.00001 are one value
        for combo in combos.get(approach) or [{}]:
            overrides = {**shared, approach: {**shared.get(approach, {}), **combo}}
            plan = plan_settings(plugins, spec, approaches, overrides)[approach]
            name = row_name(approach, combo)
            same = typed.setdefault(json.dumps(plan.settings, sort_keys=True, default=str), name)
            if same != name:
                raise UserError(
                    f"{same} and {name} are the same settings once read as their types: give each value once",
                    where="--set",
                )
            plans[name] = replace(plan, row=name, prompt_row=plan.prompt_row or plan.trainer) if combo else plan
    unknown = sorted(set(combos) - set(approaches))
    if unknown:
        raise UserError(f"{unknown[0]!r} is not among --plugins ({', '.join(approaches)})", where="--set")
    return plans
