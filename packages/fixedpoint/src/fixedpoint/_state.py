"""States of a fixed-point problem: a tensor or a tuple of tensors, and their flat batched view.

Every solver works on one flat tensor of shape ``(batch, n)`` per iterate, so that per-sample norms,
inner products and Anderson's history are single batched operations. :class:`StateSpec` records the
structure of the caller's state (one tensor or a tuple of tensors, each ``(batch, *shape)``) and
converts between the caller's state and the flat view:

=====================  =====================================================================
caller's state         flat view (``StateSpec.flatten``)
=====================  =====================================================================
``Tensor (B, *s)``     ``(B, prod(s))``; a view when the tensor is contiguous
``(T1, T2, ...)``      components flattened and concatenated, ``(B, n1 + n2 + ...)``
complex, ``as_real``   ``torch.view_as_real``: ``(B, 2 * n)`` real entries (re, im interleaved)
=====================  =====================================================================

The flat dtype is complex only when every component is complex and the solver asked for a complex
view (Anderson's Hermitian mixing); otherwise complex components are stored as their real views, so
that a real inner product ``Re <a, b>`` and real mixing coefficients are used.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeAlias, cast

import torch
from torch import Tensor

State: TypeAlias = Tensor | tuple[Tensor, ...]
"""A fixed-point state: one tensor ``(batch, *shape)`` or a tuple of such tensors."""

StateFn: TypeAlias = Callable[[State], State]


def components(state: State) -> tuple[Tensor, ...]:
    """Return the tensors of a state as a tuple (a single tensor gives a 1-tuple)."""
    return state if isinstance(state, tuple) else (state,)


def rebuild(template: State, tensors: Sequence[Tensor]) -> State:
    """Build a state of the same structure as ``template`` from ``tensors``."""
    return tuple(tensors) if isinstance(template, tuple) else tensors[0]


def describe(state: object) -> str:
    """Describe a state (or anything a caller passed instead) in a few words, for messages."""
    if isinstance(state, Tensor):
        dtype = str(state.dtype).removeprefix("torch.")
        return f"Tensor{tuple(state.shape)} {dtype} on {state.device}"
    if isinstance(state, tuple):
        return "(" + ", ".join(describe(t) for t in state) + ")"
    return type(state).__name__


def check_state(state: object, name: str) -> tuple[Tensor, ...]:
    """Validate a state given by the caller; return its components.

    Raises
    ------
    TypeError
        When ``state`` is not a floating or complex tensor or a non-empty tuple of them.
    ValueError
        When a component has no batch dimension, the batch sizes differ, or the components sit on
        different devices.
    """
    if isinstance(state, Tensor):
        parts: tuple[Tensor, ...] = (state,)
    elif isinstance(state, tuple) and state and all(isinstance(t, Tensor) for t in state):
        parts = state
    else:
        raise TypeError(
            f"{name} must be a tensor or a non-empty tuple of tensors, got {describe(state)}; "
            "pass a list of tensors as tuple(...)."
        )
    for i, t in enumerate(parts):
        where = name if len(parts) == 1 and not isinstance(state, tuple) else f"{name}[{i}]"
        if not (t.is_floating_point() or t.is_complex()):
            raise TypeError(
                f"{where} must have a floating or complex dtype, got {t.dtype}; "
                "convert it with .float() (or .to(torch.complex64))."
            )
        if t.dim() == 0:
            raise ValueError(
                f"{where} must have a leading batch dimension, got a 0-dimensional tensor; "
                "use z.reshape(1) (a batch of one scalar) or z.reshape(1, -1)."
            )
    batch = parts[0].shape[0]
    if any(t.shape[0] != batch for t in parts):
        sizes = [t.shape[0] for t in parts]
        raise ValueError(
            f"the components of {name} must share the batch size (dimension 0), got {sizes}; "
            "every tensor of a tuple state is (batch, ...)."
        )
    if any(t.device != parts[0].device for t in parts):
        devices = [str(t.device) for t in parts]
        raise ValueError(
            f"the components of {name} must be on one device, got {devices}; move them with .to()."
        )
    return parts


def batch_norm(x: Tensor) -> Tensor:
    """Euclidean norm of every row of a flat ``(batch, n)`` tensor (``|.|`` for complex entries)."""
    if x.is_complex():  # the complex kernel is several times slower than the real one on its view
        return torch.linalg.vector_norm(torch.view_as_real(x.resolve_conj()), dim=(1, 2))
    return torch.linalg.vector_norm(x, dim=1)


def sample_norm(parts: tuple[Tensor, ...]) -> Tensor:
    """Per-sample Euclidean norm over every entry of every component, shape ``(batch,)``."""
    norms = [batch_norm(t.reshape(t.shape[0], -1)) for t in parts]
    if len(norms) == 1:
        return norms[0]
    return torch.linalg.vector_norm(torch.stack(norms, dim=1), dim=1)


def real_dtype(dtype: torch.dtype) -> torch.dtype:
    """Return the real dtype of the same precision (``complex64 -> float32``)."""
    return dtype.to_real() if dtype.is_complex else dtype


@dataclass(frozen=True)
class _Component:
    shape: torch.Size  # full shape (batch, *s)
    dtype: torch.dtype
    width: int  # entries per sample in the flat view
    as_real: bool  # complex component stored as its real view


def _as_complex(t: Tensor) -> Tensor:
    """``torch.view_as_complex`` of ``(..., 2)`` real data (a copy when no view is possible)."""
    if t.stride(-1) != 1 or t.storage_offset() % 2 or any(s % 2 for s in t.stride()[:-1]):
        t = t.clone(memory_format=torch.contiguous_format)
    return torch.view_as_complex(t)


class StateSpec:
    """Structure of a state and the conversion to and from its flat ``(batch, n)`` view.

    Parameters
    ----------
    z0 : State
        The initial state (validated by :func:`check_state` first).
    complex_view : bool
        Keep complex components complex in the flat view (only possible when every component is
        complex). When false, complex components are stored as real views.
    """

    def __init__(self, z0: State, *, complex_view: bool) -> None:
        parts = components(z0)
        self.is_tuple = isinstance(z0, tuple)
        self.batch = parts[0].shape[0]
        self.device = parts[0].device
        all_complex = all(t.is_complex() for t in parts)
        self.complex_view = complex_view and all_complex
        comps = []
        for t in parts:
            as_real = t.is_complex() and not self.complex_view
            per_sample = math.prod(t.shape[1:])
            comps.append(_Component(t.shape, t.dtype, per_sample * (2 if as_real else 1), as_real))
        self.components = tuple(comps)
        dtypes = [c.dtype if self.complex_view else real_dtype(c.dtype) for c in comps]
        flat = dtypes[0]
        for d in dtypes[1:]:
            flat = torch.promote_types(flat, d)
        self.dtype = flat
        self.width = sum(c.width for c in comps)

    # -- conversions -----------------------------------------------------------------------
    def flatten(self, state: State) -> Tensor:
        """Return the flat ``(batch, n)`` view of ``state`` (a view when possible, else a copy)."""
        parts = components(state)
        flats = []
        for t, c in zip(parts, self.components):
            t = t.resolve_conj()
            if c.as_real:
                t = torch.view_as_real(t)
            flats.append(t.reshape(self.batch, c.width).to(self.dtype))
        return flats[0] if len(flats) == 1 else torch.cat(flats, dim=1)

    def unflatten(self, x: Tensor) -> State:
        """Return the caller's state whose flat view is ``x`` (views when dtypes allow)."""
        out = []
        start = 0
        for c in self.components:
            piece = x[:, start : start + c.width] if len(self.components) > 1 else x
            start += c.width
            if c.as_real:
                piece = _as_complex(piece.to(real_dtype(c.dtype)).reshape(*c.shape, 2))
            else:
                piece = piece.to(c.dtype).reshape(c.shape)
            out.append(piece)
        return tuple(out) if self.is_tuple else out[0]

    def check_output(self, out: object, what: str) -> None:
        """Check that ``out`` (returned by ``what``) has this state's structure, shapes, dtypes.

        Raises
        ------
        TypeError
            On a different structure or dtype.
        ValueError
            On a different shape or device.
        """
        expected = "a tuple of " + str(len(self.components)) if self.is_tuple else "a tensor"
        ok_structure = (
            isinstance(out, tuple)
            and len(out) == len(self.components)
            and all(isinstance(t, Tensor) for t in out)
            if self.is_tuple
            else isinstance(out, Tensor)
        )
        if not ok_structure:
            raise TypeError(
                f"{what} must return a state of the same structure as z0 ({expected}), "
                f"got {describe(out)}."
            )
        for i, (t, c) in enumerate(zip(components(cast(State, out)), self.components)):
            label = f"component {i} of the output of {what}" if self.is_tuple else f"{what}"
            if t.shape != c.shape:
                raise ValueError(
                    f"{label} has shape {tuple(t.shape)}, but the state has shape "
                    f"{tuple(c.shape)}; a fixed-point map must return a state shaped like its "
                    "input."
                )
            if t.dtype != c.dtype:
                raise TypeError(
                    f"{label} has dtype {t.dtype}, but the state has dtype {c.dtype}; "
                    "a fixed-point map must keep the dtype (cast z0 or the output)."
                )
            if t.device != self.device:
                raise ValueError(
                    f"{label} is on {t.device}, but the state is on {self.device}; "
                    "keep the map's output on the state's device."
                )
