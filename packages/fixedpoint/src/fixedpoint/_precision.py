"""Fixed-point solves in full precision under mixed-precision training.

Under ``torch.autocast`` a fixed-point iteration whose map runs in bfloat16 stalls at bfloat16's
resolution (a relative residual of about 1e-3, above the usual tolerances), and Anderson's small
least-squares solves lose their accuracy. So :func:`solve`, :func:`implicit` (forward and
backward), :func:`invert_step` and :func:`spectral_radius` switch autocast off while they run
(the map ``f`` included) and bring half-precision states up to float32 / complex64. Outside
autocast nothing changes.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import torch
from torch import Tensor

__all__ = ["compiled_eagerly", "in_full_precision"]

_HALF = {
    torch.float16: torch.float32,
    torch.bfloat16: torch.float32,
    torch.complex32: torch.complex64,
}
F = TypeVar("F", bound=Callable[..., Any])


def _active(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (devices without autocast, e.g. meta: no)."""
    return bool(
        torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)
    )


def _tensors(value: Any) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, tuple):
        return [t for t in value if isinstance(t, Tensor)]
    return []


def _upcast(value: Any) -> Any:
    """Return a half-precision tensor (or a tuple state of them) as float32 / complex64."""
    if isinstance(value, Tensor):
        return value.to(_HALF[value.dtype]) if value.dtype in _HALF else value
    if isinstance(value, tuple) and any(isinstance(t, Tensor) for t in value):
        return type(value)(_upcast(t) for t in value) if type(value) is tuple else value
    return value


@contextlib.contextmanager
def _autocast_off(device_types: set[str]) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for device_type in sorted(device_types):
            if _active(device_type):
                stack.enter_context(torch.autocast(device_type, enabled=False))
        yield


def in_full_precision(fn: F) -> F:
    """Decorate ``fn`` to run without autocast, its half-precision tensor arguments upcast."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        tensors = [t for a in (*args, *kwargs.values()) for t in _tensors(a)]
        types = {"cpu", *(t.device.type for t in tensors)}
        if not any(_active(d) for d in types):
            return fn(*args, **kwargs)
        with _autocast_off(types):
            return fn(*(_upcast(a) for a in args), **{k: _upcast(v) for k, v in kwargs.items()})

    return wrapper  # type: ignore[return-value]


def compiled_eagerly(fn: F) -> F:
    """Return ``torch.compiler.disable(fn)``, typed as ``fn`` (torch's annotation says ``Any``).

    ``torch.compile`` then breaks its graph at ``fn`` and runs it eagerly.
    """
    return cast(F, torch.compiler.disable(fn))
