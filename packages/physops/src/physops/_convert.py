"""Converters between native complex tensors and the real layouts networks and datasets use.

==========================  ======================  ====================================
function                    from                    to
==========================  ======================  ====================================
``complex_to_channels(x)``  complex ``(B, *s)``     real ``(B, 2, *s)`` (deepinv layout)
``channels_to_complex(x)``  real ``(B, 2, *s)``     complex ``(B, *s)``
``complex_to_last_dim(x)``  complex ``(*s)``        real ``(*s, 2)`` (fastMRI, DIRECT)
``last_dim_to_complex(x)``  real ``(*s, 2)``        complex ``(*s)``
==========================  ======================  ====================================

Channel 0 is the real part and channel 1 the imaginary part; precision is kept (complex64 <->
float32, complex128 <-> float64). All four are differentiable and exact inverses of each other.
``complex_to_channels`` and ``complex_to_last_dim`` return views where possible (no copy).
"""

from __future__ import annotations

import torch
from torch import Tensor

from physops._validate import tensor

__all__ = [
    "channels_to_complex",
    "complex_to_channels",
    "complex_to_last_dim",
    "last_dim_to_complex",
]


def _require_complex(x: Tensor, who: str, expected: str) -> None:
    if not x.is_complex():
        raise TypeError(
            f"{who} expects a complex tensor{expected}, got {x.dtype} of shape "
            f"{tuple(x.shape)}: convert a real image with x.to(torch.complex64)."
        )


def _require_real(x: Tensor, who: str, expected: str) -> None:
    if not x.is_floating_point():
        raise TypeError(
            f"{who} expects a real floating tensor{expected}, got {x.dtype} of shape "
            f"{tuple(x.shape)}."
        )


def complex_to_channels(x: Tensor) -> Tensor:
    """Complex ``(B, *s)`` -> real ``(B, 2, *s)``: real and imaginary parts as two channels.

    For ``s = (H, W)`` this is the ``(B, 2, H, W)`` input of a 2D CNN; for 2D+time
    ``(B, T, H, W)`` becomes ``(B, 2, T, H, W)`` (a 3D CNN's input). Returns a view.
    """
    x = tensor(x, "complex_to_channels")
    _require_complex(x, "complex_to_channels", " of shape (B, *image_shape)")
    if x.ndim < 1:
        raise ValueError("complex_to_channels expects a batch dimension, got a 0-dim tensor.")
    return torch.view_as_real(x.resolve_conj()).movedim(-1, 1)


def channels_to_complex(x: Tensor) -> Tensor:
    """Real ``(B, 2, *s)`` -> complex ``(B, *s)``: inverse of :func:`complex_to_channels`."""
    x = tensor(x, "channels_to_complex")
    _require_real(x, "channels_to_complex", " of shape (B, 2, *image_shape)")
    if x.ndim < 2 or x.shape[1] != 2:
        raise ValueError(
            "channels_to_complex expects (B, 2, *image_shape) with real and imaginary parts in "
            f"channel 1, got shape {tuple(x.shape)}: a network predicting complex images needs 2 "
            "output channels."
        )
    return torch.view_as_complex(x.movedim(1, -1).contiguous())


def complex_to_last_dim(x: Tensor) -> Tensor:
    """Complex ``(*s)`` -> real ``(*s, 2)`` (fastMRI's layout). Returns a view."""
    x = tensor(x, "complex_to_last_dim")
    _require_complex(x, "complex_to_last_dim", "")
    return torch.view_as_real(x.resolve_conj())


def last_dim_to_complex(x: Tensor) -> Tensor:
    """Real ``(*s, 2)`` -> complex ``(*s)``: inverse of :func:`complex_to_last_dim`."""
    x = tensor(x, "last_dim_to_complex")
    _require_real(x, "last_dim_to_complex", " of shape (..., 2)")
    if x.ndim < 1 or x.shape[-1] != 2:
        raise ValueError(
            "last_dim_to_complex expects real and imaginary parts in a last dimension of size 2, "
            f"got shape {tuple(x.shape)}."
        )
    if x.stride(-1) != 1 or any(s % 2 for s in x.stride()[:-1]) or x.storage_offset() % 2:
        x = x.contiguous()
    return torch.view_as_complex(x)
