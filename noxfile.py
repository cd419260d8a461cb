"""Sessions for the memroll monorepo.

``python3 -m nox`` runs every default session: one test session per package (the package installed
alone, with only the siblings its pyproject names: the five libraries and the ``memroll``
application), ``integration``, ``lint`` and ``typecheck``. ``demo`` (``memroll demo``) and
``bench`` are slow and run only when named: ``python3 -m nox -s demo``.

Torch: every session installs ``torch==2.13.0`` first (the CPU wheel this project's machines carry
on disk) and then pins the installed version as a constraint for every later install, so no
dependency can pull another torch from the registry. Machines with their own torch set
``MEMROLL_TORCH`` to another requirement (for example ``MEMROLL_TORCH="torch==2.11.0"``).

New packages under ``packages/`` are picked up without editing this file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import nox

nox.needs_version = ">=2025.2.9"
# pip/virtualenv, not uv: uv does not read pip's configuration, which points at the local wheels.
nox.options.default_venv_backend = "virtualenv"
nox.options.error_on_missing_interpreters = True

ROOT = Path(__file__).resolve().parent
TORCH = os.environ.get("MEMROLL_TORCH", "torch==2.13.0")


def _pyproject(folder: Path) -> dict:
    return nox.project.load_toml(folder / "pyproject.toml")


PACKAGE_DIRS = {
    p.name: p for p in sorted((ROOT / "packages").iterdir()) if (p / "pyproject.toml").is_file()
}
PACKAGES = list(PACKAGE_DIRS)
# distribution name (memroll-physops) -> folder name (physops)
DIST_TO_PACKAGE = {_pyproject(p)["project"]["name"]: name for name, p in PACKAGE_DIRS.items()}


def _requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return match.group(1).lower().replace("_", "-") if match else ""


def _siblings(package: str) -> list[str]:
    """The sibling packages ``package`` depends on, dependencies first (transitively)."""
    order: list[str] = []

    def visit(name: str) -> None:
        for req in _pyproject(PACKAGE_DIRS[name])["project"].get("dependencies", []):
            sibling = DIST_TO_PACKAGE.get(_requirement_name(req))
            if sibling is not None and sibling not in order:
                visit(sibling)
                order.append(sibling)

    visit(package)
    return order


def _install_torch(session: nox.Session) -> list[str]:
    """Install torch first; return pip arguments that pin it for every later install."""
    session.install(*TORCH.split())
    version = (
        session.run("python", "-c", "import torch; print(torch.__version__)", silent=True)
        .strip()
        .splitlines()[-1]
    )
    constraints = Path(session.create_tmp()) / "torch-constraint.txt"
    constraints.write_text(f"torch=={version}\n")
    return ["-c", str(constraints)]


def _install_packages(
    session: nox.Session, packages: list[str], groups: tuple[str, ...] = ("test",)
) -> None:
    pin = _install_torch(session)
    needed: list[str] = []
    for name in packages:
        for sibling in [*_siblings(name), name]:
            if sibling not in needed:
                needed.append(sibling)
    session.install(*pin, *(str(PACKAGE_DIRS[name]) for name in needed))
    extras: list[str] = []
    for name in packages:
        pyproject = _pyproject(PACKAGE_DIRS[name])
        for group in groups:
            if group in pyproject.get("dependency-groups", {}):
                extras += nox.project.dependency_groups(pyproject, group)
    if extras:
        session.install(*pin, *extras)


@nox.session
@nox.parametrize("package", PACKAGES, ids=PACKAGES)
def tests(session: nox.Session, package: str) -> None:
    """One package installed alone (with the siblings it names) and its own tests."""
    _install_packages(session, [package])
    session.run("pytest", str(PACKAGE_DIRS[package] / "tests"), *session.posargs)


@nox.session
def integration(session: nox.Session) -> None:
    """All packages together, tested as users compose them."""
    _install_packages(session, PACKAGES)
    integration_dir = ROOT / "integration_tests"
    pyproject = integration_dir / "pyproject.toml"
    if pyproject.is_file():
        session.install(*nox.project.dependency_groups(_pyproject(integration_dir), "test"))
    session.run("pytest", str(integration_dir), *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint rules and formatting."""
    session.install("ruff==0.17.6")  # pinned: new ruff releases add rules and formatting changes
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy over every package's sources, against the real torch."""
    _install_packages(session, PACKAGES, groups=("typecheck",))
    session.install("mypy==2.4.1")
    paths = os.pathsep.join(str(p / "src") for p in PACKAGE_DIRS.values())
    session.run(
        "mypy", *(arg for name in PACKAGES for arg in ("-p", name)), env={"MYPYPATH": paths}
    )


@nox.session(default=False)
def demo(session: nox.Session) -> None:
    """The main job: train a small MoDL with every memory strategy and compare them.

    ``memroll demo`` of the application (packages/memroll) with every library installed.
    """
    _install_packages(session, PACKAGES, groups=("demo",))
    session.run("memroll", "demo", *session.posargs)


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Benchmarks of every package (slow; writes Markdown reports and plots).

    Each package's ``benchmarks/run.py``: the base packages' own benchmarks, and ``memroll
    bench`` (packages/memroll/benchmarks/run.py), the papers' tables with the unrolled models.
    """
    _install_packages(session, PACKAGES, groups=("bench",))
    env = {"MALLOC_MMAP_THRESHOLD_": "65536"}
    for name, folder in PACKAGE_DIRS.items():
        script = folder / "benchmarks" / "run.py"
        if script.is_file():
            session.log(f"benchmark of {name}")
            session.run("python", str(script), *session.posargs, env=env)
