"""Validation of the arguments of every public entry point (one copy, one wording).

Every message names what was received and what was expected; a hint says how to fix it. Booleans
are refused where integers or numbers are expected (``True`` is an ``int`` in Python).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from torch import Tensor

ON_FAILURE = ("warn", "raise", "ignore")
STOP_MODES = ("rel", "abs")
_STOP_MODE_MEANING = {"rel": "||f(z) - z|| / ||f(z)||", "abs": "||f(z) - z||"}


def _suffix(hint: str | None) -> str:
    return f"; {hint}." if hint else "."


def positive_int(name: str, value: object, *, minimum: int = 1, hint: str | None = None) -> int:
    """Return ``value`` if it is an integer ``>= minimum`` (not a bool), else raise.

    Raises
    ------
    ValueError
        ``"<name> must be an integer >= <minimum>, got <value>."``
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}{_suffix(hint)}")
    return value


def nonnegative_int(name: str, value: object, *, hint: str | None = None) -> int:
    """Return ``value`` if it is an integer ``>= 0`` (not a bool), else raise ``ValueError``."""
    return positive_int(name, value, minimum=0, hint=hint)


def finite_number(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    hint: str | None = None,
) -> float:
    """Return ``value`` as a float if it is a finite real number within the bounds, else raise.

    ``low`` is inclusive unless ``low_open``; ``high`` is inclusive.

    Raises
    ------
    ValueError
        ``"<name> must be a finite number >= <low>, got <value>."`` (no upper bound) or
        ``"<name> must be a number in (<low>, <high>], got <value>."`` (both bounds).
    """
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low  # type: ignore[operator]
    if ok and high is not None:
        ok = value <= high  # type: ignore[operator]
    if not ok:
        if low is not None and high is not None:
            expected = f"a number in {'(' if low_open else '['}{low:g}, {high:g}]"
        elif low is not None:
            expected = f"a finite number {'>' if low_open else '>='} {low:g}"
        elif high is not None:
            expected = f"a finite number <= {high:g}"
        else:
            expected = "a finite number"
        raise ValueError(f"{name} must be {expected}, got {value!r}{_suffix(hint)}")
    return float(value)  # type: ignore[arg-type]


def one_of(
    name: str,
    value: object,
    choices: Sequence[str],
    *,
    meanings: Mapping[str, str] | None = None,
    hint: str | None = None,
) -> str:
    """Return ``value`` if it is one of ``choices``, else raise ``ValueError`` listing them.

    With ``meanings`` the message explains every choice: ``"stop_mode must be 'rel' (...) or
    'abs' (...), got 'relative'."``; without, ``"<name> must be one of 'a', 'b', got 'c'."``.
    """
    if isinstance(value, str) and value in choices:
        return value
    if meanings:
        listed = [f"{c!r} ({meanings[c]})" for c in choices]
        expected = ", ".join(listed[:-1]) + " or " + listed[-1]
    else:
        expected = "one of " + ", ".join(map(repr, choices))
    raise ValueError(f"{name} must be {expected}, got {value!r}{_suffix(hint)}")


def boolean(name: str, value: object) -> bool:
    """Return ``value`` if it is ``True`` or ``False``, else raise ``TypeError``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}.")
    return value


def fraction(name: str, value: object) -> float:
    """Check a damping or mixing factor in ``(0, 1]`` (``"<name> must be a number in (0, 1]"``)."""
    return finite_number(name, value, low=0.0, high=1.0, low_open=True, hint="1 means no damping")


def solver_settings(tol: object, max_iter: object, stop_mode: object, on_failure: object) -> None:
    """Validate the arguments every solver takes (``tol``, ``max_iter``, ``stop_mode``, policy)."""
    finite_number(
        "tol",
        tol,
        low=0.0,
        hint="for example tol=1e-4 (relative) or tol=1e-6 with stop_mode='abs'",
    )
    positive_int("max_iter", max_iter)
    one_of("stop_mode", stop_mode, STOP_MODES, meanings=_STOP_MODE_MEANING)
    one_of("on_failure", on_failure, ON_FAILURE)


def tensor_params(params: tuple[object, ...]) -> None:
    """Refuse extra arguments of ``f`` that are not tensors (they belong in a closure)."""
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(
                f"params[{i}] must be a tensor, got {type(p).__name__}; pass other arguments "
                "through a closure: implicit(lambda z, w: f(z, w, option), z0, w)."
            )
