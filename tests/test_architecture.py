"""The house as STYLE.md draws it: commands at the package root, the engine below them, the
science below the engine, and no module importing one above it (every import counts, also one
inside a function; ``if TYPE_CHECKING:`` imports do not run and do not count)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "reconattack"
#: what the package root may hold: the commands (``python -m reconattack.<name>``), errors, __init__
COMMANDS = {"run", "profile", "report", "invert"}
ROOT_MODULES = {"__init__", "errors"}
#: top-level parts from the top floor down; a part imports only parts below it (and itself)
FLOORS = [{"run", "profile", "report", "invert"}, {"engine"}, {"threats"}, {"attacks"}, {"data", "metrics"},
          {"models", "losses", "defences"}, {"utils"}, {"errors"}]


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        name = ".".join(path.relative_to(PKG.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """``module -> the reconattack modules it imports`` (dotted names)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                node.body = [ast.Pass()]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                base = node.module
                if node.level:  # relative: from the module's package
                    parts = name.split(".")[: None if path.name == "__init__.py" else -1]
                    base = ".".join(parts[: len(parts) - node.level + 1] + [base])
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target not in (name, "reconattack"):
                    graph[name].add(target)
    return graph


def _part(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def test_the_package_root_holds_the_commands_errors_and_init_only():
    files = {p.stem for p in PKG.glob("*.py")}
    folders = {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert files - COMMANDS <= ROOT_MODULES, sorted(files - COMMANDS - ROOT_MODULES)
    assert COMMANDS <= files | folders
    for name in COMMANDS:  # each runs as `python -m reconattack.<name>`
        path = PKG / f"{name}.py" if name in files else PKG / name / "__main__.py"
        text = path.read_text()
        assert path.name == "__main__.py" or 'if __name__ == "__main__":' in text, name


def test_no_import_cycle():
    graph = import_graph()
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(t):] + [m, t]))
            if t not in state:
                visit(t, stack + [m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_no_part_imports_one_above_it():
    floor = {part: i for i, parts in enumerate(FLOORS) for part in parts}
    graph = import_graph()
    assert {_part(m) for m in graph} - {"reconattack", "__init__"} <= set(floor), "a new part needs a floor"
    upward = [f"{m} -> {t}" for m, targets in graph.items() for t in targets
              if _part(m) in floor and floor[_part(t)] < floor[_part(m)]]
    assert not upward, upward


def test_the_graph_sees_lazy_imports():
    """The checker itself: an import inside a function is an edge."""
    graph = import_graph()
    assert "reconattack.engine.tracking" in graph["reconattack.report.writers"]  # imported in a function
    assert "reconattack.threats.base" in graph["reconattack.threats.avih.threat"]
    assert "reconattack.threats.avih.roles" in graph["reconattack.threats.avih.threat"]  # a relative import
