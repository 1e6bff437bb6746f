"""``harness plugins`` and ``harness specs``: list the installed approaches and the specs found."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from harness.commands.output import print_listing


def cmd_plugins(args: argparse.Namespace) -> int:
    from harness.plugins import load_plugins

    plugins = load_plugins()
    rows: list[dict[str, Any]] = []
    # Every approach, and the plugins that are not (a module that registers approaches is not a row of its own).
    names = {name for name, _ in plugins.pm.list_name_plugin() if not name.endswith(":approaches")}
    for name in sorted(names | set(plugins.registry)):
        meta = plugins.meta.get(name)
        row: dict[str, Any] = {
            "name": name,
            "version": meta.version if meta else "",
            "package": meta.package if meta else "",
            "builtin": bool(meta and meta.builtin),
            "hooks": plugins.hooks_of(name),
        }
        if name in plugins.approaches():
            try:
                row["task_types"] = list(plugins.describe(name).task_types)
            except Exception as exc:  # list the others; say which one is broken
                print(
                    f"harness: plugin {name!r} cannot describe itself: {type(exc).__name__}: {exc}".splitlines()[0],
                    file=sys.stderr,
                )
                row["task_types"] = []
        rows.append(row)
    print_listing(
        rows,
        args.json,
        ("Name", "Version", "Task types", "Hooks", "Package"),
        lambda row: (
            row["name"],
            row["version"],
            ", ".join(row.get("task_types", [])) or "-",
            ", ".join(h.removeprefix("harness_") for h in row["hooks"]),
            row["package"],
        ),
    )
    return 0


def cmd_specs(args: argparse.Namespace) -> int:
    from harness.spec import list_specs, load_spec

    rows: list[dict[str, Any]] = []
    for path in list_specs():
        spec = load_spec(str(path))
        dataset = spec.dataset.hub or (f"{spec.dataset.train}, {spec.dataset.test}" if spec.dataset.train else "--data")
        rows.append(
            {
                "name": spec.name,
                "path": str(path),
                "task": spec.task.type,
                "dataset": dataset,
                "labels": spec.task.labels,
                "fields": spec.task.fields,
                "plugins": sorted(spec.plugins),
            }
        )
    print_listing(
        rows,
        args.json,
        ("Name", "Task", "Dataset", "Labels / fields", "Plugin settings for"),
        lambda row: (
            row["name"],
            row["task"],
            row["dataset"],
            ", ".join(row["labels"] or row["fields"]),
            ", ".join(row["plugins"]) or "-",
        ),
        ensure_ascii=False,
    )
    return 0
