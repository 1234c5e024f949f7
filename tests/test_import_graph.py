"""The package's modules import each other without cycles, at any depth.

A cycle means two modules that cannot be understood, tested or loaded one without the other, and an import order
that works by luck (a function-level import defers the failure, it does not remove the cycle). So the graph here
is built from the source with :mod:`ast`, not from what an interpreter happened to load, and it holds every import
statement wherever it stands: at module level, inside functions and methods, under ``if TYPE_CHECKING:``.

The edges, for a module ``m`` (a package stands for its ``__init__.py``):

- ``import a.b.c`` and ``from a.b import c`` (relative imports resolved against ``m``'s package) give an edge to
  the module named (``a.b.c``; for ``from a.b import c``, ``a.b.c`` when it is a submodule, else ``a.b``, whose
  ``__init__`` defines or re-exports ``c``).
- Importing a module runs the ``__init__`` of each package above it first, so an edge also goes to each of those
  packages, except the packages that contain ``m`` itself. Those are being initialised already when ``m`` runs
  (Python initialises a package before its submodules, whatever they import), so counting them would make every
  package that re-exports a submodule a cycle with it. Equally, a package's ``__init__`` importing its own
  submodules (its re-exports) is an ordinary edge from the package to them: ``inference/__init__`` depends on
  ``inference.segmenter``, and ``inference.segmenter`` must therefore not depend on a module that imports the
  ``inference`` package from outside it.
- Imports of names computed at run time (``importlib.import_module(f"...")``: the command line's sub-commands, the
  lazy attributes of ``mseg_semantic/__init__``) are not seen; they run when a command or an attribute is used,
  after every module they could reach has loaded.
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

PACKAGE = "mseg_semantic"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE


def package_modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name, for its ``__init__.py``)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """The package modules one import statement names (before the parent packages are added)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join([*base, *([node.module] if node.module else [])])
    else:
        source = node.module or ""
    named = set()
    for alias in node.names:
        submodule = f"{source}.{alias.name}"
        named.add(submodule if submodule in modules else source)
    return named


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the package modules it imports (see the module docstring for what counts as an edge)."""
    paths = package_modules(root)
    modules = set(paths)
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        is_package = path.name == "__init__.py"
        own_packages = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1 + is_package)}
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in _imported(node, module, is_package, modules):
                parts = target.split(".")
                for i in range(1, len(parts) + 1):
                    name = ".".join(parts[:i])
                    if name in modules and name not in own_packages:
                        edges.add(name)
        edges.discard(module)
        graph[module] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as one cycle through it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_through(graph, set(component)) for component in components]


def _cycle_through(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """One shortest cycle from the component's first module back to it (breadth first, inside the component)."""
    start = min(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for successor in sorted(graph[node] & component):
                if successor == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if successor not in parents:
                    parents[successor] = node
                    following.append(successor)
        frontier = following
    return sorted(component)


def test_graph_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The parser resolves absolute, relative, ``from pkg import submodule`` and function-level imports, adds the
    packages above a foreign module, and reports a cycle with its path."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg.sub import a\n")
    (pkg / "sub" / "__init__.py").write_text("from . import a\n")
    (pkg / "sub" / "a.py").write_text("def f():\n    from ..other import thing\n")
    (pkg / "sub" / "b.py").write_text("import pkg.sub.a\n")
    (pkg / "other.py").write_text("if False:\n    from pkg.sub import b\n")
    graph = import_graph(pkg)
    assert graph["pkg"] == {"pkg.sub", "pkg.sub.a"}
    assert graph["pkg.sub"] == {"pkg.sub.a"}
    assert graph["pkg.sub.a"] == {"pkg.other"}
    assert graph["pkg.sub.b"] == {"pkg.sub.a"}  # its own packages pkg and pkg.sub are not edges
    assert graph["pkg.other"] == {"pkg.sub", "pkg.sub.b"}  # a foreign package's __init__ runs first
    cycles = find_cycles(graph)
    assert len(cycles) == 1
    cycle = cycles[0]
    assert cycle[0] == cycle[-1] and all(b in graph[a] for a, b in itertools.pairwise(cycle))


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert len(graph) > 80 and "mseg_semantic.inference.segmenter" in graph  # the whole package was read
    cycles = find_cycles(graph)
    listing = "\n".join(" -> ".join(cycle) for cycle in cycles)
    assert not cycles, f"{len(cycles)} import cycle(s) (one path shown per group of modules):\n{listing}"
