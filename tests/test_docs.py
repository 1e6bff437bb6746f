"""The docs stay true: every hook documented with its signature, the README's commands are CI's."""

from __future__ import annotations

import inspect
import re

from conftest import ROOT
from harness import hookspecs
from harness.plugins import load_plugins


def hook_signatures() -> dict[str, str]:
    pm = load_plugins(entry_points=False).pm
    names = [name for name in dir(pm.hook) if name.startswith("harness_")]
    assert len(names) >= 8
    return {name: f"{name}({', '.join(inspect.signature(getattr(hookspecs, name)).parameters)})" for name in names}


def test_every_hook_is_documented_with_its_signature():
    docs = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    headings = set(re.findall(r"^### (harness_\w+\(.*\))$", docs, re.M))
    assert headings == set(hook_signatures().values())


def test_every_hook_has_a_full_docstring():
    for name in hook_signatures():
        doc = inspect.getdoc(getattr(hookspecs, name))
        assert doc and doc.splitlines()[0].endswith("."), name
        for param in inspect.signature(getattr(hookspecs, name)).parameters:
            assert f":param {param}:" in doc, (name, param)


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- test-command -->\n```\n(.+?)\n```", readme, re.S)
    assert match, "README has no marked test command"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert match.group(1).strip() in ci
