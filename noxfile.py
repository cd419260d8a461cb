"""Sessions for the memroll monorepo.

``python3 -m nox`` runs every default session: one test session per package (the package installed
alone, with only the siblings its pyproject names: the five libraries and the ``memroll``
application), ``integration``, ``lint``, ``typecheck`` and ``docs``. ``demo`` (``memroll demo``),
``bench`` and ``build`` are slow and run only when named: ``python3 -m nox -s demo``.

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


# --- documentation and release readiness (issue 18) ----------------------------------------------
DOCS = ROOT / "docs"


@nox.session  # default: about 5 minutes on a fresh clone, examples included
def docs(session: nox.Session) -> None:
    """The documentation site, warnings as errors, every gallery example executed.

    The HTML lands in ``docs/_build/html`` (open ``index.html``). Extra arguments go to
    sphinx-build, for example ``-- -D plot_gallery=0`` to skip running the examples.
    """
    _install_packages(session, PACKAGES, groups=())
    session.install("-r", str(DOCS / "requirements.txt"))
    session.run(
        "sphinx-build",
        *("-W", "--keep-going", "-n", "-b", "html"),
        *session.posargs,
        str(DOCS),
        str(DOCS / "_build" / "html"),
        env={"MPLBACKEND": "Agg"},
    )


# what `nox -s build` runs in each package's fresh environment, beyond importing it and running
# its console scripts with --help: data that must be inside the wheels
WHEEL_SMOKE = {
    "physops": "import physops; x = physops.real_anatomy_images('test', image_size=32); "
    "assert x.shape[-2:] == (32, 32), x.shape",
}
SCRIPT_SMOKE = {"memroll": [["configs"]]}  # console script -> extra argument lists to run


def _version(package: str) -> str:
    """The version written once in ``src/<package>/__init__.py`` (what hatch reads)."""
    init = PACKAGE_DIRS[package] / "src" / package / "__init__.py"
    match = re.search(r'^__version__ = "([^"]+)"', init.read_text(), re.MULTILINE)
    if match is None:
        raise ValueError(f"{init}: no __version__ = '...' line")
    return match.group(1)


def _wheel(dist_dir: Path, package: str) -> Path:
    name = _pyproject(PACKAGE_DIRS[package])["project"]["name"].replace("-", "_")
    wheels = sorted(dist_dir.glob(f"{name}-{_version(package)}-*.whl"))
    if len(wheels) != 1:
        raise ValueError(f"expected one wheel of {package} in {dist_dir}, found {wheels}")
    return wheels[0]


def _check_wheel_alone(session: nox.Session, package: str, dist_dir: Path, tmp: Path) -> None:
    """A fresh venv: torch first, then the wheel and its siblings' wheels; import, run, smoke."""
    venv = tmp / f"venv-{package}"
    session.run("python", "-m", "venv", "--clear", str(venv))
    python, pip = str(venv / "bin" / "python"), [str(venv / "bin" / "python"), "-m", "pip"]
    session.run(*pip, "install", "-q", *TORCH.split(), external=True)
    torch_version = session.run(
        python, "-c", "import torch; print(torch.__version__)", silent=True, external=True
    )
    pin = tmp / f"torch-{package}.txt"
    pin.write_text(f"torch=={str(torch_version).strip().splitlines()[-1]}\n")
    # the siblings from the built wheels (named by path, so never from a registry), third-party
    # dependencies from the registry
    wheels = [str(_wheel(dist_dir, name)) for name in [*_siblings(package), package]]
    session.run(*pip, "install", "-q", "-c", str(pin), *wheels, external=True)
    session.run(*pip, "check", external=True)
    dist = _pyproject(PACKAGE_DIRS[package])["project"]["name"]
    session.run(
        python,
        "-c",
        f"import importlib.metadata, {package}; v = importlib.metadata.version({dist!r}); "
        f"assert {package}.__version__ == v, ({package}.__version__, v); "
        f"print({package}.__file__, v)",
        external=True,
    )
    if package in WHEEL_SMOKE:
        session.run(python, "-c", WHEEL_SMOKE[package], external=True)
    for script in _pyproject(PACKAGE_DIRS[package])["project"].get("scripts", {}):
        for args in [["--help"], *SCRIPT_SMOKE.get(script, [])]:
            session.run(str(venv / "bin" / script), *args, external=True)


@nox.session(default=False)
def build(session: nox.Session) -> None:
    """Release readiness: sdist and wheel of every package, metadata checks, and each wheel
    installed alone (with its siblings' wheels) in a fresh venv, imported and smoke-tested.

    The distributions land in ``dist/``. Every package is checked even when one fails; the
    session fails at the end, naming each package that did.
    """
    session.install("build>=1.2", "twine>=6", "check-wheel-contents>=0.6")
    dist_dir = ROOT / "dist"
    if dist_dir.exists():
        for old in dist_dir.iterdir():
            old.unlink()
    for folder in PACKAGE_DIRS.values():
        session.run("python", "-m", "build", "--outdir", str(dist_dir), str(folder))
    built = sorted(str(p) for p in dist_dir.iterdir())
    session.run("twine", "check", "--strict", *built)
    session.run("check-wheel-contents", *(p for p in built if p.endswith(".whl")))
    from nox.command import CommandFailed

    tmp = Path(session.create_tmp())
    failed: list[str] = []
    for name in PACKAGES:
        session.log(f"{name}: its wheel alone in a fresh environment")
        try:
            _check_wheel_alone(session, name, dist_dir, tmp)
        except CommandFailed:
            failed.append(name)
    if failed:
        session.error(f"the wheels of {', '.join(failed)} failed in a fresh environment (above)")
