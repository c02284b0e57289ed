"""The package's layout holds: no import cycle, forms never reach graph passes, package ``__init__`` files only
re-export. Imports inside functions count (an AST scan, as ``import_cycles.py`` does)."""

from __future__ import annotations

import ast
from pathlib import Path

import convslim

PACKAGE = Path(convslim.__file__).parent


def _modules() -> dict[str, Path]:
    found = {}
    for file in PACKAGE.rglob("*.py"):
        parts = file.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    return found


def _imports(name: str, file: Path, modules: dict[str, Path]) -> set[str]:
    """The convslim modules ``name`` imports anywhere in its file (the longest known prefix of each target)."""
    out = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = name.split(".")
            if node.level:
                base = base[: len(base) - node.level + (file.name == "__init__.py")]
            module = ".".join(base + [node.module] if node.level else [node.module or ""]).strip(".")
            targets = [module] + [f"{module}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target.startswith("convslim") and target != name:
                out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, file, modules) for name, file in modules.items()}


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_forms_import_nothing_from_the_graph_passes_at_any_depth():
    graph = _graph()
    for form_module in (m for m in graph if m.startswith("convslim.convert")):
        reached = {m for m in _reachable(graph, form_module) if m.startswith("convslim.passes")}
        assert not reached, f"{form_module} reaches {sorted(reached)}"


def test_no_module_imports_itself_through_others():
    graph = _graph()
    # a package's __init__ runs when one of its submodules is imported, so an edge into a submodule's own
    # package is not a cycle by itself
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    cycles = [m for m in graph if m in _reachable(graph, m)]
    assert not cycles, f"modules on an import cycle: {sorted(cycles)}"


def test_package_init_files_only_re_export():
    for init in PACKAGE.rglob("__init__.py"):
        tree = ast.parse(init.read_text())
        defined = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        assert not defined, f"{init.relative_to(PACKAGE.parent)} defines {defined}; give them a module"
