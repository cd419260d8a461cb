"""Argument checks shared by every public entry point of revlayers (one copy of each).

Each check raises ``TypeError`` (wrong kind of value) or ``ValueError`` (right kind, bad value)
with one sentence, ``"{who} expects {name} to be {expected}, got {value!r}.{hint}"``, the wording
revlayers has always used. Booleans are refused where an integer or a number is expected
(``True`` is an ``int`` in Python, and ``max_iter=True`` is always a mistake). Where a public
message had its own wording, the caller passes ``expected`` (the phrase after the name) and
``hint`` (a sentence appended after the received value).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

__all__ = [
    "boolean",
    "finite_number",
    "integer",
    "nonnegative_int",
    "one_of",
    "positive_int",
]


def _message(who: str, name: str, expected: str, value: object, hint: str) -> str:
    return f"{who} expects {name} {expected}, got {value!r}.{' ' + hint if hint else ''}"


def integer(
    who: str,
    name: str,
    value: object,
    *,
    low: int | None = None,
    high: int | None = None,
    expected: str | None = None,
    hint: str = "",
) -> int:
    """Return ``value`` as an int in ``[low, high]``; a bool, float or other kind: ``TypeError``.

    Parameters
    ----------
    who : str
        The public class or function that received the value.
    name : str
        The argument's name, as the user wrote it.
    value : object
        What the caller passed.
    low, high : int, optional
        Inclusive bounds (``None``: unbounded); outside them ``ValueError``.
    expected : str, optional
        Replaces the phrase after the name (default ``"to be an int >= {low}"``).
    hint : str
        A sentence appended to the message (how to fix it).

    Returns
    -------
    int
        The value.
    """
    phrase = expected or ("to be an int" if low is None else f"to be an int >= {low}")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(_message(who, name, phrase, value, hint))
    if (low is not None and int(value) < low) or (high is not None and int(value) > high):
        raise ValueError(_message(who, name, phrase, value, hint))
    return int(value)


def positive_int(
    who: str, name: str, value: object, *, expected: str | None = None, hint: str = ""
) -> int:
    """Return ``value`` as an ``int >= 1`` (arguments as for :func:`integer`)."""
    return integer(who, name, value, low=1, expected=expected, hint=hint)


def nonnegative_int(
    who: str, name: str, value: object, *, expected: str | None = None, hint: str = ""
) -> int:
    """Return ``value`` as an ``int >= 0`` (arguments as for :func:`integer`)."""
    return integer(who, name, value, low=0, expected=expected, hint=hint)


def _interval(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"a number in ({low:g}, {high:g})"
    if low is not None:
        return f"a finite number > {low:g}"
    if high is not None:
        return f"a finite number < {high:g}"
    return "a finite number"


def finite_number(
    who: str,
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    expected: str | None = None,
    hint: str = "",
) -> float:
    """Return ``value`` as a finite ``float`` in the open interval ``(low, high)``.

    A bool or a non-number raises ``TypeError``; NaN, infinities and values outside the interval
    raise ``ValueError``. Parameters as for :func:`integer`; ``low``/``high`` are exclusive
    bounds (``None``: unbounded).

    Parameters
    ----------
    who, name, value, expected, hint
        As for :func:`integer` (default phrase: ``"to be a finite number > {low}"``, ...).
    low, high : float, optional
        Exclusive bounds.

    Returns
    -------
    float
        The value.
    """
    phrase = expected or "to be " + _interval(low, high)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(_message(who, name, phrase, value, hint))
    number = float(value)
    inside = (low is None or number > low) and (high is None or number < high)
    if not (math.isfinite(number) and inside):
        raise ValueError(_message(who, name, phrase, value, hint))
    return number


def one_of(
    who: str,
    name: str,
    value: object,
    choices: Sequence[object],
    *,
    expected: str | None = None,
    hint: str = "",
) -> object:
    """Return ``value`` if it is one of ``choices`` (compared with ``==``), else ``ValueError``.

    Parameters
    ----------
    who, name, value, hint
        As for :func:`integer`.
    choices : sequence
        The accepted values; the message lists them.
    expected : str, optional
        Replaces the phrase after the name (default ``"to be one of [...]"``).

    Returns
    -------
    object
        The value.
    """
    if not any(value == c and type(value) is type(c) for c in choices):
        phrase = expected or f"to be one of {list(choices)}"
        raise ValueError(_message(who, name, phrase, value, hint))
    return value


def boolean(who: str, name: str, value: object) -> bool:
    """Return ``value`` if it is a ``bool``, else raise ``TypeError``.

    Parameters
    ----------
    who, name, value
        As for :func:`integer`.

    Returns
    -------
    bool
        The value.
    """
    if not isinstance(value, bool):
        raise TypeError(_message(who, name, "to be True or False", value, ""))
    return value
