"""TOML reading (``tomllib``, ``tomli`` on Python 3.10) and writing of plain data."""

from __future__ import annotations

import json
import math
from types import ModuleType
from typing import Any

__all__ = ["dump_toml", "toml_module"]


def toml_module() -> ModuleType:
    """Return the TOML reader: ``tomllib`` (Python 3.11+) or ``tomli`` (Python 3.10)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef, import-not-found, unused-ignore]
    return tomllib


def _toml_value(value: Any, key: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v, key) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{_toml_key(k)} = {_toml_value(v, key)}" for k, v in value.items())
        return "{" + items + "}"
    raise ValueError(f"{key}: cannot write {value!r} ({type(value).__name__}) to TOML")


def _toml_key(key: str) -> str:
    bare = key.replace("_", "").replace("-", "").isalnum() and key.isascii()
    return key if bare else json.dumps(key)


def _is_table(key: str, value: Any, path: list[str]) -> bool:
    # option values that are dicts (a solver's settings) stay inline inside task/model tables
    return isinstance(value, dict) and (not path or path == ["strategy"])


def dump_toml(data: dict[str, Any], header: str = "") -> str:
    """Plain data (tables, strings, numbers, booleans, lists) as a TOML document.

    Parameters
    ----------
    data:
        The document: top-level tables and the ``strategy`` sub-tables become ``[table]``
        headers; other dict values are written inline.
    header:
        Comment lines written first (each prefixed with ``#``).

    Returns
    -------
    str
        The TOML text, ending with a newline.
    """
    lines = [f"# {line}".rstrip() for line in header.splitlines()]

    def table(node: dict[str, Any], path: list[str]) -> None:
        scalars = {k: v for k, v in node.items() if not _is_table(k, v, path)}
        tables = {k: v for k, v in node.items() if _is_table(k, v, path)}
        if path and (scalars or not tables):
            lines.append("")
            lines.append("[" + ".".join(_toml_key(p) for p in path) + "]")
        for k, v in scalars.items():
            lines.append(f"{_toml_key(k)} = {_toml_value(v, '.'.join([*path, k]))}")
        for k, v in tables.items():
            table(v, [*path, k])

    table(data, [])
    return "\n".join(lines).lstrip("\n") + "\n"
