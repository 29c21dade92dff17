"""The package has no import cycles: every `import` inside blo_mixup (those inside functions too) is read
from the source, and the module graph must be acyclic. A cycle means two modules that cannot be read,
tested or moved apart; this test names it."""

import ast
from pathlib import Path

import blo_mixup

ROOT = Path(blo_mixup.__file__).parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The package modules that `path` imports (a `from X import name` of a submodule counts that submodule)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
    files = [p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts]
    known = {module_name(p) for p in files}
    return {module_name(p): imported_modules(p, known) for p in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None (depth-first search, colours)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_finds_a_cycle_when_there_is_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_reads_relative_imports():
    graph = import_graph()
    assert "blo_mixup.blo.hypergradients" in graph["blo_mixup.blo.engine"]  # from .hypergradients import ...
    assert "blo_mixup.errors" in graph["blo_mixup.blo.mixup"]  # from ..errors import ...
    assert "blo_mixup.options" in graph["blo_mixup.compare"]  # inside a function


def test_package_has_no_import_cycle():
    # Packages' __init__ files import their modules to register them (methods/__init__.py); a module
    # reaching its own package's __init__ back is how Python packages work, not a cycle between ideas.
    graph = {m: {d for d in deps if not (m.startswith(d + ".") and d in graph_packages())}
             for m, deps in import_graph().items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def graph_packages() -> set[str]:
    return {module_name(p) for p in ROOT.rglob("__init__.py")}
