"""Import boundaries of ``kraken/``, checked from the source with :mod:`ast` (nothing is imported).

The rules (docs/ARCHITECTURE.md draws the same map):

- No import cycle between kraken's modules. An import under ``if TYPE_CHECKING:`` does not
  count (it never runs); an import inside a function does (it runs, only later).
- Shared packages (:data:`SHARED`) never import a component package (:data:`COMPONENTS`):
  shared code is what components are built from, so it cannot depend on one of them.
- A component never imports another component, except through that component's public
  client-facing modules listed in :data:`PUBLIC`: the typed client of its HTTP API, or the
  protocol constants both sides of it must agree on. Everything else in a component is its
  server's internals, free to change without looking at other components.
- Entry points and tooling (:data:`ANYTHING`) may import anything: they assemble the rest.

A new top-level module or package must be placed in one of these sets, on purpose.
"""
from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KRAKEN = ROOT / "kraken"

COMPONENTS = {"agent", "origin", "tracker", "proxy", "buildindex", "testfs"}
SHARED = {
    "core", "http", "store", "registry", "backend", "p2p",
    "config", "log", "metrics", "ring", "tasks", "persisted", "heap",
    # The command line: components import it for their entry point; it finds them by name
    # (importlib), never by an import statement.
    "cli",
}
# The package itself (``python -m kraken``), the developer cluster and tools (configdoc,
# generators) assemble or inspect every component.
ANYTHING = {"", "__main__", "tools", "devcluster"}

# Modules of a component that other components may import: its public, client-facing contract.
PUBLIC = {
    # The typed client of build-index's HTTP API (the proxy and the agent resolve tags with it).
    "kraken.buildindex.client",
    # The clients' ``build_index:`` section (addr, addrs, dns) and its resolution, which the
    # proxy's and the agent's configs embed.
    "kraken.buildindex.hosts",
    # The tag grammar of build-index's API (``repo:tag``, parse_tag): a client (the agent's
    # registry) checks a tag with it before asking; it imports only kraken.core.
    "kraken.buildindex.tags",
    # The typed client of the origin's HTTP API (proxy, build-index, tracker and the agent's
    # fallback use it) and its streamed upload, which the proxy drives directly.
    "kraken.origin.client",
    "kraken.origin.stream",
    # What a tracker's clients must agree on with it (header names), without its server.
    "kraken.tracker.protocol",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(KRAKEN.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement under ``node``, skipping the bodies of ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for sub in child.orelse:
                yield from _import_nodes(ast.Module(body=[sub], type_ignores=[]))
        else:
            yield from _import_nodes(child)


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The kraken modules ``name`` imports: ``from pkg import mod`` names ``pkg.mod`` when that
    is a module, else ``pkg`` itself (its ``__init__`` defines the name)."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names if alias.name.split(".")[0] == "kraken")
            continue
        if node.level:
            base = name.split(".") if is_package else name.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        if target.split(".")[0] != "kraken":
            continue
        for alias in node.names:
            sub = f"{target}.{alias.name}"
            out.add(sub if sub in modules else target)
    out.discard(name)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def top(module: str) -> str:
    """The top-level package or module of ``kraken.x.y`` (``x``); ``""`` for ``kraken`` itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in graph:
                continue
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
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


def test_every_top_level_name_is_classified() -> None:
    names = {top(m) for m in all_modules()}
    unknown = names - COMPONENTS - SHARED - ANYTHING
    assert not unknown, f"place these in COMPONENTS, SHARED or ANYTHING of {__file__}: {sorted(unknown)}"


def test_public_modules_exist() -> None:
    assert set(all_modules()) >= PUBLIC


def test_no_import_cycle() -> None:
    assert cycles(import_graph()) == []


def test_shared_code_never_imports_a_component() -> None:
    bad = [
        f"{name} imports {target}"
        for name, targets in import_graph().items() if top(name) in SHARED
        for target in sorted(targets) if top(target) in COMPONENTS
    ]
    assert bad == []


def test_components_meet_only_through_public_modules() -> None:
    bad = [
        f"{name} imports {target}"
        for name, targets in import_graph().items() if top(name) in COMPONENTS
        for target in sorted(targets)
        if top(target) in COMPONENTS and top(target) != top(name) and target not in PUBLIC
    ]
    assert bad == []


def test_the_checker_sees_relative_imports_and_skips_type_checking(tmp_path: Path) -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "from . import names\n"
        "from .files import write_file\n"
        "if TYPE_CHECKING:\n"
        "    from kraken.agent.server import x\n"
        "def f() -> None:\n"
        "    import kraken.origin.client\n"
    )
    path = tmp_path / "mod.py"
    path.write_text(source)
    modules = {"kraken.http.names": path, "kraken.http.files": path}
    assert imports_of("kraken.http.mod", path, modules) == {
        "kraken.http.names", "kraken.http.files", "kraken.origin.client",
    }


def test_the_cycle_finder_reports_each_cycle_once() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]


def test_public_modules_import_only_shared_code_and_each_other() -> None:
    """Otherwise importing a client would drag its component's server internals along."""
    graph = import_graph()
    bad = [
        f"{name} imports {target}"
        for name in sorted(PUBLIC)
        for target in sorted(graph[name])
        if top(target) not in SHARED and target not in PUBLIC
    ]
    assert bad == []
