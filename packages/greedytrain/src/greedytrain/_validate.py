"""Argument checks shared by every public entry point of greedytrain (one copy of each).

Each check raises ``TypeError`` (wrong kind of value) or ``ValueError`` (right kind, bad value)
with one line naming the argument, what was expected and what was received. Booleans are refused
where an integer or a number is expected (``modules=True`` is always a mistake).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "as_devices",
    "as_stages",
    "callable_or_none",
    "integer",
    "known_name",
    "number",
]


def integer(
    value: object,
    name: str,
    *,
    low: int | None = None,
    high: int | None = None,
    expected: str | None = None,
    type_expected: str | None = None,
) -> int:
    """Return ``value`` as an ``int`` within ``[low, high]``.

    Parameters
    ----------
    value
        What the caller passed.
    name
        The argument, as the message should call it.
    low, high
        Inclusive bounds (``None``: unbounded).
    expected
        The phrase for an out-of-range value (default ``"an int >= {low}"`` or similar).
    type_expected
        The phrase for a value that is not an integer (default: ``expected``).

    Returns
    -------
    int
        The value.

    Raises
    ------
    TypeError
        ``"{name} must be {type_expected}, got {value!r}"`` for a bool, float or non-number.
    ValueError
        ``"{name} must be {expected}, got {value!r}"`` outside the bounds.
    """
    if expected is None:
        if low is not None and high is not None:
            expected = f"an int in [{low}, {high}]"
        else:
            expected = "an int" if low is None else f"an int >= {low}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {type_expected or expected}, got {value!r}")
    result = int(value)
    if (low is not None and result < low) or (high is not None and result > high):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return result


def number(
    value: object,
    name: str,
    *,
    low: float | None = None,
    low_open: bool = False,
    expected: str | None = None,
    type_expected: str = "a number",
) -> float:
    """Return ``value`` as a finite ``float`` at or above ``low`` (above, with ``low_open``).

    Raises ``TypeError("{name} must be {type_expected}, got {value!r}")`` for a bool or a
    non-number and ``ValueError("{name} must be {expected}, got {value!r}")`` for NaN, an
    infinity or a value below the bound.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {type_expected}, got {value!r}")
    if expected is None:
        bound = "" if low is None else f" {'>' if low_open else '>='} {low:g}"
        expected = f"a finite number{bound}"
    below = low is not None and (value <= low if low_open else value < low)
    if not math.isfinite(value) or below:
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return float(value)


def known_name(value: object, name: str, names: Sequence[str], extra: str = "") -> str:
    """Return ``value`` if it is one of ``names``.

    Raises ``ValueError("unknown {name} {value!r}; valid names: 'a', 'b'{extra}")`` otherwise.
    """
    if not isinstance(value, str) or value not in names:
        raise ValueError(
            f"unknown {name} {value!r}; valid names: {', '.join(map(repr, names))}{extra}"
        )
    return value


def callable_or_none(value: object, name: str, signature: str) -> Any:
    """Return ``value`` if it is callable or None, else raise ``TypeError`` naming ``signature``."""
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be callable ({signature}), got {value!r}")
    return value


def as_stages(stages: object) -> list[nn.Module]:
    """Return the stages as a list, refusing anything that is not a sequence of ``nn.Module``."""
    if isinstance(stages, nn.Module) and not isinstance(stages, nn.ModuleList | nn.Sequential):
        raise TypeError(
            f"stages must be a list of nn.Module stages, got a single {type(stages).__name__}: "
            "pass [stage_0, ..., stage_{N-1}] (an nn.ModuleList or nn.Sequential also works)"
        )
    if not isinstance(stages, Iterable) or isinstance(stages, str | bytes | Tensor):
        raise TypeError(f"stages must be a list of nn.Module stages, got {type(stages).__name__}")
    listed = list(stages)
    for i, stage in enumerate(listed):
        if not isinstance(stage, nn.Module):
            raise TypeError(
                f"stage {i} is a {type(stage).__name__}, not an nn.Module; every stage must be an "
                "nn.Module called as stage(state, context) -> state"
            )
    return listed


def _device(entry: object) -> torch.device:
    try:
        device = torch.device(entry)  # type: ignore[call-overload]
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"devices holds {entry!r}, which is not a torch device: {error}") from None
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise ValueError(
            f"devices holds {entry!r} but CUDA is not available; use devices=None or 'cpu'"
        )
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise ValueError(
            f"devices holds {entry!r} but only {torch.cuda.device_count()} CUDA device(s) exist"
        )
    return torch.device("cuda", index)


def as_devices(devices: object) -> list[torch.device] | None:
    """Return ``devices`` (one device or a sequence of them) as a list, or None for None."""
    if devices is None:
        return None
    if isinstance(devices, str | torch.device | int):
        devices = [devices]
    if not isinstance(devices, Iterable):
        raise TypeError(f"devices must be a device or a list of devices, got {devices!r}")
    parsed = [_device(entry) for entry in devices]
    if not parsed:
        raise ValueError("devices is empty: pass None (stay where the stages are) or >= 1 device")
    return parsed
