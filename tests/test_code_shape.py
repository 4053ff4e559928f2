"""The package's shape: every function fits on a screen, and no module imports another in a cycle.

Both checks read the source with `ast` only; nothing is imported or run.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "paddle_asr"
MAX_FUNCTION_LINES = 80


def _sources() -> dict[str, tuple[Path, ast.Module]]:
    """Module name -> (file, syntax tree) for every `paddle_asr/**/*.py`."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = (path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return modules


def _qualified_functions(tree: ast.AST, prefix: str = "") -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Every function, method and nested function, named by its enclosing classes and functions."""
    found = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = f"{prefix}{node.name}"
            if not isinstance(node, ast.ClassDef):
                found.append((name, node))
            found += _qualified_functions(node, f"{name}.")
        else:
            found += _qualified_functions(node, prefix)
    return found


def test_no_function_is_longer_than_80_lines():
    too_long = []
    for path, tree in _sources().values():
        for name, node in _qualified_functions(tree):
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                too_long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {name}: {lines} lines")
    assert not too_long, (f"{len(too_long)} function(s) longer than {MAX_FUNCTION_LINES} lines; split them "
                          "where a name explains a part better than a comment:\n  " + "\n  ".join(too_long))


def _imported_modules(module: str, is_package: bool, tree: ast.Module, known: set[str]) -> list[tuple[str, int]]:
    """(paddle_asr module, line) for every import statement anywhere in the module, functions included.

    ``from a.b import c`` imports the module a.b.c when that is a file, else a.b; the packages a
    and a.b that Python initialises on the way are not counted."""
    edges = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            # `import a.b.c` of something that is not a module file: its nearest enclosing module.
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target:
                edges.append((target, node.lineno))
    return edges


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; the components in no particular order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def test_no_module_imports_another_in_a_cycle():
    sources = _sources()
    known = set(sources)
    graph: dict[str, set[str]] = {name: set() for name in sources}
    where: dict[tuple[str, str], int] = {}
    for name, (path, tree) in sources.items():
        for target, line in _imported_modules(name, path.name == "__init__.py", tree, known):
            graph[name].add(target)
            where.setdefault((name, target), line)
    cycles = [c for c in _strongly_connected(graph) if len(c) > 1 or c[0] in graph[c[0]]]
    report = []
    for component in sorted(cycles):
        members = set(component)
        edges = [f"{a} -> {b} ({sources[a][0].relative_to(PACKAGE.parent)}:{where[a, b]})"
                 for a in component for b in sorted(graph[a] & members)]
        report.append(f"cycle among {', '.join(component)}:\n    " + "\n    ".join(edges))
    assert not cycles, (f"{len(cycles)} import cycle(s) among paddle_asr modules (imports inside functions "
                        "count too); break each by moving the shared code down a level:\n  " + "\n  ".join(report))


def test_the_cycle_finder_finds_cycles_and_only_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d"}, "e": {"a"}, "f": set()}
    components = _strongly_connected(graph)
    assert sorted(components) == [["a", "b", "c"], ["d"], ["e"], ["f"]]
    tree = ast.parse("from paddle_asr.x import y, z\nimport paddle_asr.x.w.v\ndef f():\n    from . import y\n")
    known = {"paddle_asr.x", "paddle_asr.x.y", "paddle_asr.x.w", "paddle_asr.q"}
    assert _imported_modules("paddle_asr.x.q", False, tree, known) == [
        ("paddle_asr.x.y", 1), ("paddle_asr.x", 1), ("paddle_asr.x.w", 2), ("paddle_asr.x.y", 4)]
