"""The project's modules import one another in one direction: no import cycle, counting the
imports placed inside functions (an import moved into a function to dodge a cycle is still the
cycle). The one loop allowed is the op registry's own: ``compiler/ops/__init__.py`` loads its
family modules, which import the package for ``register`` and the shared helpers."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
#: The folders that are the subpackages of ``cnnc`` (pyproject's package-dir).
PACKAGES = ("compiler", "dsl", "runtime", "zoo")
#: Packages whose ``__init__`` may import its own modules while they import it.
REGISTRY_LOOPS = ("cnnc.compiler.ops",)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["cnnc", *parts])


def project_modules() -> dict[str, Path]:
    modules = {"cnnc": ROOT / "__init__.py"}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            modules[module_name(path)] = path
    return modules


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``path`` imports anywhere in its body (functions included)."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # ``from pkg import name``: the submodule pkg.name where there is one, else pkg
            targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in known else stem
                       for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # ``import cnnc.x.y`` names cnnc.x.y
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> nx.DiGraph:
    modules = project_modules()
    graph = nx.DiGraph()
    for name, path in modules.items():
        graph.add_node(name)
        for target in imported_modules(name, path, set(modules)):
            graph.add_edge(name, target)
    return graph


def forbidden_cycles(graph: nx.DiGraph) -> list[list[str]]:
    """The import cycles other than a registry package and its family modules importing each
    other (a cycle through any other module, or among the families themselves, counts)."""
    found = []
    for members in nx.strongly_connected_components(graph):
        if len(members) < 2:
            continue
        loop = next((p for p in REGISTRY_LOOPS
                     if members <= {p} | {m for m in members if m.startswith(p + ".")}), None)
        if loop is not None and nx.is_directed_acyclic_graph(graph.subgraph(members - {loop})):
            continue
        found.append(sorted(members))
    return found


def test_the_checker_sees_imports_inside_functions(tmp_path):
    """The checker itself: an import inside a function is an edge like any other."""
    source = "def f():\n    from .plan import Step\n    from ..ops import get_op\n"
    path = ROOT / "compiler" / "lower" / "probe.py"
    probe = tmp_path / "probe.py"
    probe.write_text(source)
    known = {"cnnc.compiler.lower.plan", "cnnc.compiler.ops", "cnnc.compiler.lower"}
    found = imported_modules(module_name(path), probe, known)
    assert found == {"cnnc.compiler.lower.plan", "cnnc.compiler.ops"}


def test_the_checker_allows_only_the_registry_loop():
    graph = nx.DiGraph([("cnnc.compiler.ops", "cnnc.compiler.ops.conv"),
                        ("cnnc.compiler.ops.conv", "cnnc.compiler.ops")])
    assert forbidden_cycles(graph) == []
    graph.add_edges_from([("cnnc.compiler.ops.conv", "cnnc.compiler.kernels.conv"),
                          ("cnnc.compiler.kernels.conv", "cnnc.compiler.ops")])
    assert len(forbidden_cycles(graph)) == 1


def test_no_import_cycles():
    graph = import_graph()
    cycles = forbidden_cycles(graph)
    described = []
    for members in cycles:
        sub = graph.subgraph(members)
        edges = ", ".join(f"{a} -> {b}" for a, b in sorted(sub.edges()))
        described.append(f"{len(members)} modules: {edges}")
    assert not cycles, "import cycles:\n" + "\n".join(described)


def test_the_compiler_never_imports_the_runtime_or_the_front_end():
    graph = import_graph()
    wrong = sorted((a, b) for a, b in graph.edges()
                   if a.startswith("cnnc.compiler") and
                   b.startswith(("cnnc.runtime", "cnnc.dsl")))
    assert not wrong, wrong


def test_kernel_builders_never_import_the_registry_nor_a_backend():
    graph = import_graph()
    wrong = sorted((a, b) for a, b in graph.edges() if a.startswith("cnnc.compiler.kernels")
                   and not b.startswith("cnnc.compiler.kernels")
                   and b not in ("cnnc.compiler.types", "cnnc.compiler.decisions"))
    assert not wrong, wrong
