"""Argument checks shared by every public entry point of physops (one copy of each).

Every check raises ``TypeError`` (wrong kind of value) or ``ValueError`` (right kind, bad value)
with one line naming the function (``who``), the argument, what was expected and what was
received. Booleans are refused where an integer or a number is expected (``True`` is an ``int`` in
Python, and ``max_iter=True`` is always a mistake).

The default sentence is ``"{who}: {name} must be {expected}, got {value!r}{hint}."``. Where a
public message had another wording that users (and tests) rely on, the caller passes
``template``, a format string with the fields ``who``, ``name``, ``expected``, ``value`` and
``hint``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

from torch import Tensor

__all__ = [
    "finite_number",
    "inexact_tensor",
    "integer",
    "known_name",
    "nonnegative_int",
    "one_of",
    "positive_int",
    "tensor",
]

DEFAULT = "{who}: {name} must be {expected}, got {value!r}{hint}."


def _fail(
    error: type[Exception],
    template: str | None,
    who: str,
    name: str,
    expected: str,
    value: object,
    hint: str,
) -> Exception:
    text = (template or DEFAULT).format(
        who=who, name=name, expected=expected, value=value, hint=hint
    )
    return error(text)


def _int_phrase(low: int | None, high: int | None) -> str:
    if high is not None:
        return f"an int in [{low if low is not None else '-inf'}, {high}]"
    if low == 0:
        return "a non-negative integer"
    if low == 1:
        return "a positive integer"
    return "an integer" if low is None else f"an int >= {low}"


def integer(
    value: object,
    name: str,
    who: str,
    *,
    low: int | None = None,
    high: int | None = None,
    expected: str | None = None,
    hint: str = "",
    template: str | None = None,
) -> int:
    """``value`` as an ``int`` within ``[low, high]``.

    A boolean, a float or any other non-integer raises ``TypeError``; an integer outside the
    bounds raises ``ValueError``; both with the same sentence.

    Parameters
    ----------
    value
        What the caller passed.
    name
        The argument's name, as the user wrote it.
    who
        The public function or class that received it.
    low, high
        Inclusive bounds (``None``: unbounded).
    expected
        Replaces the generated phrase (``"a positive integer"``, ``"an int >= 16"``, ...).
    hint
        Appended after the received value (start it with ``": "``).
    template
        Replaces the sentence (see the module notes).

    Returns
    -------
    int
        The value.
    """
    phrase = expected or _int_phrase(low, high)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _fail(TypeError, template, who, name, phrase, value, hint)
    number = int(value)
    if (low is not None and number < low) or (high is not None and number > high):
        raise _fail(ValueError, template, who, name, phrase, value, hint)
    return number


def positive_int(value: object, name: str, who: str, **options: Any) -> int:
    """``value`` as an ``int >= 1`` (see :func:`integer` for ``options``)."""
    return integer(value, name, who, low=1, **options)


def nonnegative_int(value: object, name: str, who: str, **options: Any) -> int:
    """``value`` as an ``int >= 0`` (see :func:`integer` for ``options``)."""
    return integer(value, name, who, low=0, **options)


def _number_phrase(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low == 0 and low_open and high is None:
        return "positive and finite"
    if low is not None and high is not None:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        return f"a finite number in {left}{low:g}, {high:g}{right}"
    if low is not None:
        return f"a finite number {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"a finite number {'<' if high_open else '<='} {high:g}"
    return "a finite number"


def finite_number(
    value: object,
    name: str,
    who: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    expected: str | None = None,
    hint: str = "",
    template: str | None = None,
    type_template: str | None = None,
) -> float:
    """``value`` as a finite ``float`` within its bounds; refuses booleans and non-numbers.

    A value that is not a real number raises ``TypeError`` naming its type
    (``type_template`` rewords it); one outside the bounds, NaN or infinite raises ``ValueError``.
    ``low_open``/``high_open`` make a bound exclusive. Other parameters as :func:`integer`.

    Returns
    -------
    float
        The value.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _fail(
            TypeError,
            type_template or "{who}: {name} must be a real number, got {value}.",
            who,
            name,
            "a real number",
            type(value).__name__,
            hint,
        )
    number = float(value)
    below = low is not None and (number <= low if low_open else number < low)
    above = high is not None and (number >= high if high_open else number > high)
    if not math.isfinite(number) or below or above:
        phrase = expected or _number_phrase(low, high, low_open, high_open)
        raise _fail(ValueError, template, who, name, phrase, value, hint)
    return number


def one_of(value: object, name: str, who: str, choices: Iterable[object]) -> Any:
    """``value`` if it is one of ``choices`` (compared by type too, so ``True`` is not ``1``).

    The message lists the choices: ``"{who}: {name} must be one of [...], got {value!r}."``.
    """
    options = tuple(choices)
    if not any(type(value) is type(c) and value == c for c in options):
        raise ValueError(f"{who}: {name} must be one of {list(options)}, got {value!r}.")
    return value


def known_name(value: object, name: str, who: str, names: Iterable[str]) -> str:
    """``value`` if it is one of the registered ``names`` (methods, modes, boundaries).

    The message reads like a registry's: ``"{who}: unknown {name} {value!r}; valid names are a,
    b."``.
    """
    options = tuple(names)
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{who}: unknown {name} {value!r}; valid names are {', '.join(options)}.")
    return value


def tensor(value: object, who: str, what: str | None = None) -> Tensor:
    """Return ``value`` if it is a tensor, else raise a ``TypeError`` naming its type.

    The message reads ``"{who} expects {what} as a torch.Tensor, got {type}."`` (``"{who}
    expects a torch.Tensor, ..."`` without ``what``).
    """
    if not isinstance(value, Tensor):
        subject = "a torch.Tensor" if what is None else f"{what} as a torch.Tensor"
        raise TypeError(f"{who} expects {subject}, got {type(value).__name__}.")
    return value


def inexact_tensor(
    value: object, who: str, what: str, *, kinds: str = "floating or complex", hint: str = ""
) -> Tensor:
    """``value`` if it is a floating or complex tensor, else a ``TypeError`` naming its dtype.

    The message reads ``"{who} expects a {kinds} {what}, got dtype {dtype}{hint}."``.
    """
    checked = tensor(value, who, what)
    if not (checked.is_floating_point() or checked.is_complex()):
        raise TypeError(f"{who} expects a {kinds} {what}, got dtype {checked.dtype}{hint}.")
    return checked
