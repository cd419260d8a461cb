"""Versions agree: each package's version, its CHANGELOG's newest heading and its siblings' ranges.

Every package writes its version once, in ``src/<name>/__init__.py`` (hatch reads it for the
wheel). Its CHANGELOG's newest ``## <version>`` heading must be that version, and every sibling
requirement in every pyproject (``memroll-physops>=0.2,<0.3``) must admit the sibling's current
version, or the wheels of one release would not install together. New packages under
``packages/`` are picked up without editing this file.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = sorted(p.parent for p in (ROOT / "packages").glob("*/pyproject.toml"))


def _project(folder: Path) -> dict:
    return tomllib.loads((folder / "pyproject.toml").read_text())["project"]


def _version(folder: Path) -> str:
    inits = sorted((folder / "src").glob("*/__init__.py"))
    assert len(inits) == 1, f"{folder}: expected one package under src/, found {inits}"
    match = re.search(r'^__version__ = "([^"]+)"', inits[0].read_text(), re.MULTILINE)
    assert match, f'{inits[0]}: no __version__ = "..." line (hatch reads the version there)'
    return match.group(1)


VERSIONS = {canonicalize_name(_project(f)["name"]): _version(f) for f in FOLDERS}


def test_every_package_found():
    assert len(FOLDERS) >= 5, FOLDERS
    for folder in FOLDERS:
        assert "version" in _project(folder).get("dynamic", []), folder
        Version(_version(folder))  # a valid PEP 440 version


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_changelog_newest_heading_is_the_version(folder):
    changelog = (folder / "CHANGELOG.md").read_text()
    headings = re.findall(r"^## (\S+)", changelog, re.MULTILINE)
    assert headings, f"{folder.name}/CHANGELOG.md has no '## <version>' heading"
    assert headings[0] == _version(folder), (
        f"{folder.name}: __init__.py says {_version(folder)}, CHANGELOG.md's newest heading is "
        f"{headings[0]}"
    )


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_sibling_ranges_admit_the_current_versions(folder):
    for text in _project(folder).get("dependencies", []):
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        if name not in VERSIONS:
            continue  # a third-party dependency
        assert str(requirement.specifier), f"{folder.name}: {text!r} has no version range"
        assert requirement.specifier.contains(VERSIONS[name], prereleases=True), (
            f"{folder.name}: {text!r} does not admit {name} {VERSIONS[name]}"
        )
