"""The house rules: one-way layers (import-linter's contracts in ``.importlinter``), no import
cycle even counting imports inside functions, and ``workbench`` imports at module top.

An import inside a function hides a cycle from every tool that reads module tops; so it is
allowed only where the module is chosen at run time by name (plug-ins), in ``cli.py`` (each
command imports what it needs), and in the few places listed in :data:`ALLOWED_INSIDE`.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "workbench"
# module -> why a workbench import inside one of its functions is right there
ALLOWED_INSIDE = {
    "workbench.cli": "each command imports only what it runs (a `workbench doctor` never loads optuna)",
}
MAX_INSIDE = 5  # workbench imports inside functions outside cli.py, across the package


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, bool, int]]:
    """(imported workbench module, inside a function?, line) for every import of ``name``."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside |= {id(n) for n in ast.walk(node) if n is not node}
    out = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for t in targets:
            if t.split(".")[0] == "workbench" and t in modules:
                out.append((t, id(node) in inside, node.lineno))
    return out


def _graph() -> tuple[dict[str, set[str]], list[tuple[str, str, int]]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    inside = []
    for name, path in modules.items():
        for target, in_function, line in _imports(name, path, modules):
            if target != name:
                graph[name].add(target)
            if in_function:
                inside.append((name, target, line))
    return graph, inside


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the module graph, if any (a package's ``__init__`` importing its own
    submodules to re-export them is not one: the submodule does not need the package)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if t.startswith(m + "."):  # a package re-exporting from its own submodule
                continue
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if state.get(t) is None:
                found = visit(t)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if state.get(m) is None:
            found = visit(m)
            if found:
                return found
    return None


def test_no_import_cycle_even_counting_imports_inside_functions():
    graph, _ = _graph()
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_workbench_imports_sit_at_module_top():
    _, inside = _graph()
    outside_cli = [(m, t, line) for m, t, line in inside if m not in ALLOWED_INSIDE]
    assert len(outside_cli) <= MAX_INSIDE, "\n".join(f"{m}:{line} imports {t} inside a function"
                                                    for m, t, line in outside_cli)


def test_import_linter_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    proc = subprocess.run([str(lint), "--config", str(ROOT / ".importlinter")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
