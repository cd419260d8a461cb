"""Full float32 precision where an inverse relies on an exact transpose, whatever the TF32 settings.

On Ampere and later GPUs cuDNN runs float32 convolutions in TF32 (a 10-bit mantissa) by default,
and cuBLAS does the same for matmuls once ``torch.backends.cuda.matmul`` allows it; oneDNN on
CPUs can be told to use bf16 or TF32 for float32 too. An orthogonal channel mixing computed that
way is orthogonal only to about ``1e-3``, so its transpose no longer undoes it (the i-RIM block's
inverse error grew from ``1e-7`` to ``7e-4`` on an H200). :func:`full_precision` switches the
reduced-precision modes off for the duration of a block and restores the user's settings after.

The settings are process-wide, so the switch is reference counted under a lock: the first thread
to enter saves the user's values and the last to leave restores them; meanwhile other threads
compute in full precision too (slower, never less exact). torch >= 2.9 has the per-backend
``fp32_precision`` settings (``"ieee"``, ``"tf32"``, ``"bf16"``, ``"none"`` = inherit from the
parent backend); older torch has ``allow_tf32`` flags. Only the API the running torch has is read
or written (torch refuses to read a legacy flag after a mix of the two APIs), and nothing is
written when the settings already ask for full precision (a few microseconds per block).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["full_precision", "reduced_precision_allowed"]

_REDUCED_DTYPES = (torch.float32, torch.complex64)


@dataclass
class _Knob:
    """One setting: ``getattr(owner, attr)``; ``parents`` resolve ``"none"`` (inherit)."""

    name: str
    owner: object
    attr: str
    exact: object
    parents: tuple[object, ...]
    active: int = 0  # blocks inside full_precision that rely on this setting
    saved: object = None  # the user's value while switched (None: left untouched)

    def read(self) -> object:
        try:
            return getattr(self.owner, self.attr)
        except RuntimeError:  # torch refuses to read a legacy flag after a mix of the APIs
            return None

    def reduced(self) -> bool:
        """Whether the value in force allows a reduced-precision mode."""
        value = self.read()
        for parent in self.parents:
            if value not in ("none", None):
                break
            value = getattr(parent, self.attr, None)
        return value not in (self.exact, "none", None)


_LOCK = threading.Lock()
_KNOBS: dict[tuple[str, bool], tuple[_Knob, ...]] = {}


def _find_knobs(device_type: str, convolutions: bool) -> tuple[_Knob, ...]:
    backends = torch.backends
    cuda, cudnn = getattr(backends, "cuda", None), getattr(backends, "cudnn", None)
    mkldnn = getattr(backends, "mkldnn", None)
    paths = {
        "cuda": [("cuda.matmul", cuda, "matmul"), ("cudnn.conv", cudnn, "conv")],
        "cpu": [("mkldnn.matmul", mkldnn, "matmul"), ("mkldnn.conv", mkldnn, "conv")],
    }.get(device_type, [])
    if not convolutions:
        paths = paths[:1]
    knobs = []
    for name, parent, child in paths:
        owner = getattr(parent, child, None) if parent is not None else None
        if owner is not None and getattr(owner, "fp32_precision", None) is not None:
            knobs.append(_Knob(name, owner, "fp32_precision", "ieee", (parent, backends)))
    if knobs or device_type != "cuda":
        return tuple(knobs)
    # torch < 2.9: the legacy flags
    legacy = [("cuda.matmul", getattr(cuda, "matmul", None)), ("cudnn", cudnn)]
    legacy = legacy[: 2 if convolutions else 1]
    return tuple(_Knob(n, o, "allow_tf32", False, ()) for n, o in legacy if o is not None)


def _knobs(device_type: str, convolutions: bool) -> tuple[_Knob, ...]:
    key = (device_type, convolutions)
    found = _KNOBS.get(key)
    if found is None:
        with _LOCK:
            found = _KNOBS.setdefault(key, _find_knobs(device_type, convolutions))
    return found


def _enter(knobs: tuple[_Knob, ...]) -> None:
    with _LOCK:
        for knob in knobs:
            # count first: a thread on the fast path that sees the switched setting also sees
            # the count, and registers instead of relying on a setting about to be restored
            knob.active += 1
            if knob.active == 1 and knob.reduced():
                knob.saved = knob.read()
                setattr(knob.owner, knob.attr, knob.exact)


def _leave(knobs: tuple[_Knob, ...]) -> None:
    with _LOCK:
        for knob in knobs:
            knob.active -= 1
            if knob.active == 0 and knob.saved is not None:
                setattr(knob.owner, knob.attr, knob.saved)
                knob.saved = None


def _device_type(where: Tensor | torch.device | str) -> tuple[str, bool]:
    """Return ``where``'s device type and whether its dtype can run in reduced precision."""
    if isinstance(where, Tensor):
        return where.device.type, where.dtype in _REDUCED_DTYPES
    return torch.device(where).type, True


@contextmanager
def full_precision(
    where: Tensor | torch.device | str, *, convolutions: bool = True
) -> Iterator[None]:
    """Compute float32 matmuls (and convolutions) in full precision inside the block.

    Switches TF32 (CUDA: ``torch.backends.cuda.matmul`` and ``torch.backends.cudnn.conv``) and
    oneDNN's bf16/TF32 modes (CPU: ``torch.backends.mkldnn``) off while the block runs on
    ``where``'s device, then restores the previous settings. Thread-safe: nested and concurrent
    blocks restore the user's settings once, when the last one leaves. A tensor of another dtype
    than float32/complex64, or settings that already ask for full precision, leave everything
    untouched.

    Parameters
    ----------
    where : Tensor or torch.device or str
        A tensor (its device and dtype decide) or a device.
    convolutions : bool
        Also switch the convolution settings (default); ``False``: matmuls only.

    Examples
    --------
    Inside a layer whose inverse relies on ``U^T U = I``:

    >>> with revlayers.full_precision(x, convolutions=False):  # doctest: +SKIP
    ...     y = torch.matmul(u, x.flatten(2))
    """
    device_type, reducible = _device_type(where)
    knobs = _knobs(device_type, convolutions) if reducible else ()
    # fast path: nothing reduced and no other block switched anything (checked without the
    # lock; a block that switches a setting counts itself first, under the lock)
    if not any(k.active or k.reduced() for k in knobs):
        yield
        return
    _enter(knobs)
    try:
        yield
    finally:
        _leave(knobs)


def reduced_precision_allowed(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether float32 matmuls or convolutions on ``device`` may run in TF32 (or bf16) now.

    Parameters
    ----------
    dtype : torch.dtype
        The dtype of the computation (only float32 and complex64 are affected).
    device : torch.device
        Where it runs.

    Returns
    -------
    bool
        True when a reduced-precision mode is allowed for that dtype on that device.
    """
    if dtype not in _REDUCED_DTYPES:
        return False
    # while a block has switched a setting, the user's own value is the saved one
    return any(k.saved is not None or k.reduced() for k in _knobs(device.type, True))
