"""No import circles in harness/ (issue 35): a module never imports, at its top or inside a function, a module
that imports it back, directly or through others. Read from the source (ast), so an import inside a function
counts as much as one at the top: a circle hidden in a function is still two modules that need each other."""

from __future__ import annotations

import ast

from conftest import ROOT

PACKAGE = "harness"


def module_name(path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path, modules: set[str]) -> set[str]:
    """The harness modules ``path`` imports: ``from harness import x`` is harness.x where x is a module, else the
    package itself."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in modules:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = sorted((ROOT / PACKAGE).rglob("*.py"))
    modules = {module_name(path) for path in paths}
    return {module_name(path): imports_of(path, modules) - {module_name(path)} for path in paths}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_circle_finder_finds_a_circle_through_three_modules():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_module_of_harness_imports_one_that_imports_it_back():
    graph = import_graph()
    assert len(graph) > 20 and "harness.store" in graph["harness.runner"]
    assert circles(graph) == []


def test_the_driver_learns_there_is_no_gpu_without_importing_a_cpu_build_of_torch():
    """A CPU build of torch (version ``+cpu``) can see no GPU: the identity's device is read from its metadata, so a
    comparison whose approaches never need torch does not import it in the driver."""
    import subprocess
    import sys
    from importlib.metadata import version

    import pytest

    if not version("torch").endswith("+cpu"):
        pytest.skip("torch here is not a CPU build")
    code = (
        "import sys; from harness.identity import accelerator, gpu_name; "
        "print(accelerator(), gpu_name(), 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["cpu", "None", "False"]


def test_the_driver_reads_the_cpus_bf16_units_as_torch_does_without_importing_it():
    """The training identity's ``cpu_bf16`` comes from the CPU's flags, and agrees with torch's oneDNN."""
    import subprocess
    import sys

    code = "import sys; from harness.identity import cpu_bf16; print(cpu_bf16(), 'torch' in sys.modules)"
    answer = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    from harness.models import cpu_has_bf16

    assert answer == [str(cpu_has_bf16()), "False"]
