"""The module conventions of every package, read from the sources (AST only, nothing imported).

For each package under ``packages/*/src``:

* an underscore name never leaves its module: no ``from ._x import _y`` (or ``from pkg._x import
  _y``) between modules, and no import of another package's private module or name;
* no import cycles between the modules of one package, counting the imports inside functions
  (a subpackage's ``__init__`` is a module; importing a package's top-level ``__init__`` from one
  of its modules closes a cycle through it);
* no module over 600 lines;
* a package imports only the packages below it (DESIGN.md): the four base packages no sibling,
  ``unrolled`` the four base packages, ``memroll`` all five.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {p.name: p for p in sorted((ROOT / "packages").glob("*/src/*")) if p.is_dir()}
BASE = ("physops", "revlayers", "fixedpoint", "greedytrain")
ALLOWED = {
    **{name: () for name in BASE},
    "unrolled": BASE,
    "memroll": (*BASE, "unrolled"),
}
MAX_LINES = 600


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


@dataclass(frozen=True)
class Import:
    """One imported name: ``from <module> import <name>`` (``name`` None for ``import x``)."""

    importer: str
    module: str
    name: str | None
    line: int


def _module_name(package: str, path: Path) -> str:
    parts = list(path.relative_to(SOURCES[package].parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(package: str) -> dict[str, Path]:
    return {_module_name(package, p): p for p in sorted(SOURCES[package].rglob("*.py"))}


def _imports(package: str) -> list[Import]:
    out = []
    for module, path in _modules(package).items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                out += [Import(module, alias.name, None, node.lineno) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolve against the importing module's package
                    anchor = module.split(".")
                    anchor = anchor if is_package else anchor[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                out += [Import(module, base, alias.name, node.lineno) for alias in node.names]
    return out


def _all_modules() -> set[str]:
    return {m for package in SOURCES for m in _modules(package)}


def _target(imp: Import, known: set[str]) -> str:
    """The module an import loads: ``pkg.x.name`` when that is a module, else ``pkg.x``."""
    if imp.name is not None and f"{imp.module}.{imp.name}" in known:
        return f"{imp.module}.{imp.name}"
    return imp.module


def _where(package: str, imp: Import) -> str:
    path = _modules(package)[imp.importer].relative_to(ROOT)
    what = imp.module if imp.name is None else f"{imp.module} import {imp.name}"
    return f"{path}:{imp.line} ({what})"


@pytest.mark.parametrize("package", list(SOURCES))
def test_no_underscore_name_leaves_its_module(package: str) -> None:
    known = _all_modules()
    bad = []
    for imp in _imports(package):
        top = imp.module.split(".")[0]
        if top not in SOURCES:
            continue
        target = _target(imp, known)
        private_name = imp.name is not None and _private(imp.name) and target == imp.module
        private_module_of_other = top != package and any(map(_private, target.split(".")))
        if private_name or private_module_of_other:
            bad.append(_where(package, imp))
    assert not bad, "underscore names imported across modules:\n" + "\n".join(bad)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
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


@pytest.mark.parametrize("package", list(SOURCES))
def test_no_import_cycles(package: str) -> None:
    modules = _modules(package)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for imp in _imports(package):
        target = _target(imp, set(modules))
        if target in modules and target != imp.importer:
            graph[imp.importer].add(target)
    cycles = _cycles(graph)
    assert not cycles, f"import cycles in {package}: " + "; ".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize("package", list(SOURCES))
def test_no_module_over_600_lines(package: str) -> None:
    long = {
        str(path.relative_to(ROOT)): n
        for path in _modules(package).values()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


@pytest.mark.parametrize("package", list(SOURCES))
def test_imports_only_the_packages_below(package: str) -> None:
    allowed = {package, *ALLOWED.get(package, ())}
    bad = [
        _where(package, imp)
        for imp in _imports(package)
        if imp.module.split(".")[0] in SOURCES and imp.module.split(".")[0] not in allowed
    ]
    assert not bad, f"{package} may import only {sorted(allowed)}:\n" + "\n".join(bad)


def test_every_package_is_known() -> None:
    assert set(SOURCES) == set(ALLOWED), "a new package needs its place in ALLOWED (DESIGN.md)"
