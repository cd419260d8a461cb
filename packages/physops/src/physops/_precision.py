"""Physics in full precision under mixed-precision training.

``torch.autocast`` runs convolutions and matrix products in bfloat16 or float16, which suits the
learned networks of an unrolled model but not its physics: a blur or a Radon transform in
bfloat16 keeps three significant digits, and CG's inner products lose the orthogonality its
iterations rely on. So every operator method (``forward``, ``adjoint``, ``normal`` of each
:class:`~physops.LinearOperator`, the ptychography model's methods), :func:`physops.cg`,
:func:`physops.least_squares` and :func:`physops.power_iteration` run with autocast switched off,
on inputs brought up to float32 / complex64 when they arrive in half precision (a network's
bfloat16 output). Outside autocast nothing changes, and the check costs a few hundred
nanoseconds per call.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import torch
from torch import Tensor

__all__ = ["autocast_active", "compiled_eagerly", "full_precision", "in_full_precision", "upcast"]

_HALF = {
    torch.float16: torch.float32,
    torch.bfloat16: torch.float32,
    torch.complex32: torch.complex64,
}
F = TypeVar("F", bound=Callable[..., Any])


def autocast_active(device_type: str) -> bool:
    """Whether ``torch.autocast`` is on for ``device_type`` (``"cpu"``, ``"cuda"``, ...).

    Devices without autocast (``"meta"``) never have it on.
    """
    return bool(
        torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)
    )


def upcast(x: Any) -> Any:
    """Return a half-precision tensor as float32 / complex64; anything else unchanged."""
    if isinstance(x, Tensor) and x.dtype in _HALF:
        return x.to(_HALF[x.dtype])
    return x


@contextlib.contextmanager
def full_precision(*tensors: Any) -> Iterator[None]:
    """Switch autocast off on the CPU and on the devices of ``tensors`` inside the block."""
    types = {"cpu", *(t.device.type for t in tensors if isinstance(t, Tensor))}
    with contextlib.ExitStack() as stack:
        for device_type in sorted(types):
            if autocast_active(device_type):
                stack.enter_context(torch.autocast(device_type, enabled=False))
        yield


def in_full_precision(fn: F) -> F:
    """Decorate ``fn`` (a function or method) to run without autocast on upcast tensor arguments.

    A no-op (one check) when autocast is off.
    """
    if getattr(fn, "_physops_full_precision", False):
        return fn

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        tensors = [a for a in args if isinstance(a, Tensor)]
        if not any(autocast_active(t.device.type) for t in tensors) and not autocast_active("cpu"):
            return fn(*args, **kwargs)
        with full_precision(*tensors):
            return fn(*(upcast(a) for a in args), **{k: upcast(v) for k, v in kwargs.items()})

    wrapper._physops_full_precision = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


def compiled_eagerly(fn: F) -> F:
    """Return ``torch.compiler.disable(fn)``, typed as ``fn`` (torch's annotation says ``Any``).

    ``torch.compile`` then breaks its graph at ``fn`` and runs it eagerly.
    """
    return cast(F, torch.compiler.disable(fn))
