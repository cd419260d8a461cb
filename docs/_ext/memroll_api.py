"""Sphinx extension: one API reference page per memroll package, generated from its ``__all__``.

Every ``packages/*/pyproject.toml`` of the monorepo is a package; its import name is the folder
under ``src/`` that holds an ``__init__.py``. For each, ``api/<name>.rst`` lists every public
name of ``<name>.__all__`` (but ``__version__``) in autosummary tables grouped by kind, and
autosummary writes one page per name. ``api/index.rst`` lists the packages, dependencies
first. The pages are written when the configuration is read, before Sphinx lists the sources:
a name added to an ``__all__``, or a new package under ``packages/``, appears without editing
the docs.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from sphinx.application import Sphinx

ROOT = Path(__file__).resolve().parents[2]
KINDS = ("Classes", "Exceptions and warnings", "Functions", "Submodules", "Constants")


@dataclass
class Package:
    folder: Path
    name: str  # import name
    dist: str  # PyPI name
    description: str
    sibling_dists: list[str] = field(default_factory=list)


def _requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return match.group(1).lower().replace("_", "-") if match else ""


def discover_packages(root: Path = ROOT) -> list[Package]:
    """Every package of the monorepo, a package after the siblings it depends on."""
    found: dict[str, Package] = {}
    for pyproject in sorted((root / "packages").glob("*/pyproject.toml")):
        project = tomllib.loads(pyproject.read_text())["project"]
        modules = sorted(p.parent.name for p in (pyproject.parent / "src").glob("*/__init__.py"))
        if len(modules) != 1:
            raise RuntimeError(f"{pyproject.parent}: expected one package in src/, got {modules}")
        found[project["name"].lower()] = Package(
            pyproject.parent,
            modules[0],
            project["name"],
            project.get("description", ""),
            [_requirement_name(r) for r in project.get("dependencies", [])],
        )
    for package in found.values():
        package.sibling_dists = [d for d in package.sibling_dists if d in found]

    def depth(package: Package) -> int:
        return 1 + max((depth(found[d]) for d in package.sibling_dists), default=-1)

    return sorted(found.values(), key=lambda p: (depth(p), p.name))


def _kind(value: Any) -> str:
    if inspect.isclass(value):
        return "Exceptions and warnings" if issubclass(value, BaseException) else "Classes"
    if inspect.ismodule(value):
        return "Submodules"
    if callable(value):
        return "Functions"
    return "Constants"


def _package_page(package: Package) -> str:
    module = importlib.import_module(package.name)
    names = [n for n in getattr(module, "__all__", []) if n != "__version__"]
    if not names:
        raise RuntimeError(f"{package.name} has an empty __all__: nothing to document")
    groups: dict[str, list[str]] = {kind: [] for kind in KINDS}
    for name in names:
        groups[_kind(getattr(module, name))].append(name)
    title = f"``{package.name}``"
    version = getattr(module, "__version__", "")
    lines = [
        f".. _api-{package.name}:",
        "",
        title,
        "=" * len(title),
        "",
        f"{package.description}",
        "",
        f"``pip install {package.dist}`` (version {version}). The names below are the package's",
        "``__all__``: its public API.",
        "",
        f".. automodule:: {package.name}",
        "   :no-members:",
        "",
        f".. currentmodule:: {package.name}",
        "",
    ]
    for kind in KINDS:
        if not groups[kind]:
            continue
        lines += [kind, "-" * len(kind), "", ".. autosummary::", "   :toctree: generated/"]
        lines += ["   :nosignatures:", ""]
        lines += [f"   {name}" for name in sorted(groups[kind], key=str.lower)]
        lines.append("")
    return "\n".join(lines)


def _index_page(packages: list[Package]) -> str:
    lines = [
        "API reference",
        "=============",
        "",
        "One page per package, generated from its ``__all__``; a package is listed after the",
        "siblings it depends on. Names not listed there are private and may change.",
        "",
        ".. list-table::",
        "   :header-rows: 1",
        "",
        "   * - package",
        "     - PyPI name",
        "     - what it does",
    ]
    for p in packages:
        lines += [f"   * - :ref:`api-{p.name}`", f"     - ``{p.dist}``", f"     - {p.description}"]
    lines += ["", ".. toctree::", "   :hidden:", ""]
    lines += [f"   {p.name}" for p in packages]
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    # rewrite only on change, so that an incremental build does not redo every page
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)


def generate(app: Sphinx, config: object = None) -> None:
    out = Path(app.srcdir) / "api"
    out.mkdir(exist_ok=True)
    packages = discover_packages()
    for package in packages:
        _write(out / f"{package.name}.rst", _package_page(package))
    _write(out / "index.rst", _index_page(packages))


def setup(app: Sphinx) -> dict[str, Any]:
    # at config-inited, before the environment lists the source files: autosummary generates
    # stubs only for pages that exist when the build starts
    app.connect("config-inited", generate)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
