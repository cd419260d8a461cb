"""Validation of the arguments of unrolled's public entry points: one copy, used everywhere.

Each helper returns the value (converted where that is the point: ``float(...)``) or raises
``ValueError`` with one line naming the argument, what was expected and what was received.
Booleans are refused where numbers are expected (``True`` is an ``int`` to Python, never an
iteration count to a user).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, TypeVar

__all__ = [
    "SPLITS",
    "check_split",
    "finite_number",
    "int_at_least",
    "nonnegative_int",
    "one_of",
    "positive_int",
    "unknown_name",
]

T = TypeVar("T")

SPLITS = ("train", "val", "test")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def int_at_least(name: str, value: object, low: int, hint: str = "") -> int:
    """``value`` as an integer ``>= low`` (``"{name} must be an integer >= {low}, got ..."``)."""
    if not _is_int(value) or value < low:  # type: ignore[operator]
        raise ValueError(f"{name} must be an integer >= {low}{hint}, got {value!r}")
    return value  # type: ignore[return-value]


def nonnegative_int(name: str, value: object, hint: str = "") -> int:
    """``value`` as an integer ``>= 0``."""
    return int_at_least(name, value, 0, hint)


def positive_int(name: str, value: object, hint: str = "", *, optional: bool = False) -> Any:
    """``value`` as a positive integer (``"{name} must be a positive integer, got 2.5"``).

    With ``optional=True`` ``None`` passes too (and the message says ``or None``).
    """
    if optional and value is None:
        return None
    if not _is_int(value) or value < 1:  # type: ignore[operator]
        alternative = " or None" if optional else ""
        raise ValueError(f"{name} must be a positive integer{alternative}{hint}, got {value!r}")
    return value


def finite_number(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    expected: str | None = None,
    suffix: str = "",
) -> float:
    """``value`` as a finite ``float`` in ``[low, high]`` (``low_open``/``high_open``: strict).

    The message says ``"{name} must be {expected}, got {value!r}{suffix}"``; ``expected``
    defaults to ``"a finite number > 0"``, ``">= 0"``, ``"in (0, 2)"`` ... from the bounds.
    """
    ok = _is_real(value) and math.isfinite(value)  # type: ignore[arg-type]
    if ok and low is not None:
        ok = value > low if low_open else value >= low  # type: ignore[operator]
    if ok and high is not None:
        ok = value < high if high_open else value <= high  # type: ignore[operator]
    if ok:
        return float(value)  # type: ignore[arg-type]
    if expected is None:
        expected = "a finite number" + _range_text(low, high, low_open, high_open)
    raise ValueError(f"{name} must be {expected}, got {value!r}{suffix}")


def _range_text(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        return f" in {left}{low:g}, {high:g}{right}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f" {'<' if high_open else '<='} {high:g}"
    return ""


def one_of(
    name: str, value: T, choices: Sequence[Any], hint: str = "", *, listing: bool = True
) -> T:
    """``value`` if it is one of ``choices``.

    The message lists them (``"{name} must be one of 'a', 'b', got 'c'"``), or with
    ``listing=False`` says them (``"{name} must be 'a', 'b' or 'c', got 'd'"``).
    """
    if isinstance(value, bool) or value not in choices:
        if listing:
            expected = "one of " + ", ".join(map(repr, choices))
        else:
            *first, last = map(repr, choices)
            expected = f"{', '.join(first)} or {last}" if first else last
        raise ValueError(f"{name} must be {expected}{hint}, got {value!r}")
    return value


def boolean(name: str, value: object, hint: str = "") -> bool:
    """``value`` if it is ``True`` or ``False`` (not 0, 1 or a string)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false{hint}, got {value!r}")
    return value


def unknown_name(kind: str, value: object, valid: Sequence[str], plural: str = "") -> ValueError:
    """Return the error of a registry lookup: ``"unknown prior 'x'; valid priors: a, b"``."""
    return ValueError(f"unknown {kind} {value!r}; valid {plural or kind + 's'}: {', '.join(valid)}")


def check_split(split: object) -> str:
    """One of ``"train"``, ``"val"``, ``"test"``."""
    return one_of("split", split, SPLITS)  # type: ignore[return-value]
