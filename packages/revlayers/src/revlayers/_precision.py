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
``fp32_precision`` settings (``"ieee"``, ``"tf32"``, ``"bf16"``, ``"none"`` = inherit); older
torch has ``allow_tf32`` flags. Only the API the running torch has is read or written (torch
refuses to read a legacy flag after a mix of the two APIs), and nothing is touched when the
settings already ask for full precision.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

__all__ = ["full_precision", "reduced_precision_allowed"]

_LOCK = threading.Lock()
# key -> [number of active blocks, saved value (None: left untouched)]
_ACTIVE: dict[str, list[object]] = {}
_REDUCED_DTYPES = (torch.float32, torch.complex64)


def _backend(path: str) -> object | None:
    """Return ``torch.backends.<path>`` (``None`` where this torch lacks it)."""
    obj: object = torch.backends
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _read(path: str, attr: str) -> object | None:
    obj = _backend(path)
    if obj is None:
        return None
    try:
        return getattr(obj, attr, None)
    except RuntimeError:  # torch refuses to read a legacy flag after a mix of the two APIs
        return None


def _knobs(device_type: str) -> list[tuple[str, str, object]]:
    """``(backend path, attribute, full-precision value)`` of the settings that apply."""
    paths = {"cuda": ("cuda.matmul", "cudnn.conv"), "cpu": ("mkldnn.matmul", "mkldnn.conv")}
    out: list[tuple[str, str, object]] = []
    for path in paths.get(device_type, ()):
        if _read(path, "fp32_precision") is not None:
            out.append((path, "fp32_precision", "ieee"))
    if out or device_type != "cuda":
        return out
    # torch < 2.9: the legacy flags
    return [(p, "allow_tf32", False) for p in ("cuda.matmul", "cudnn") if _backend(p) is not None]


def _effective(path: str, attr: str) -> object | None:
    """Return the value in force (``fp32_precision="none"`` inherits from the parent)."""
    value = _read(path, attr)
    parts = path.split(".")
    while attr == "fp32_precision" and value in ("none", None) and parts:
        parts = parts[:-1]
        value = _read(".".join(parts), attr) if parts else getattr(torch.backends, attr, None)
    return value


def _enter(knobs: list[tuple[str, str, object]]) -> None:
    with _LOCK:
        for path, attr, exact in knobs:
            key = f"{path}.{attr}"
            slot = _ACTIVE.setdefault(key, [0, None])
            if slot[0] == 0:
                current = _read(path, attr)
                changed = _effective(path, attr) not in (exact, "none", None)
                slot[1] = current if changed else None
                if changed:
                    setattr(_backend(path), attr, exact)
            slot[0] = int(slot[0]) + 1  # type: ignore[call-overload]


def _leave(knobs: list[tuple[str, str, object]]) -> None:
    with _LOCK:
        for path, attr, _ in knobs:
            slot = _ACTIVE[f"{path}.{attr}"]
            slot[0] = int(slot[0]) - 1  # type: ignore[call-overload]
            if slot[0] == 0 and slot[1] is not None:
                setattr(_backend(path), attr, slot[1])
                slot[1] = None


def _device_type(where: Tensor | torch.device | str) -> tuple[str, bool]:
    """Return ``where``'s device type and whether its dtype can run in reduced precision."""
    if isinstance(where, Tensor):
        return where.device.type, where.dtype in _REDUCED_DTYPES
    return torch.device(where).type, True


@contextmanager
def full_precision(where: Tensor | torch.device | str) -> Iterator[None]:
    """Compute float32 matmuls and convolutions in full precision inside the block.

    Switches TF32 (CUDA: ``torch.backends.cuda.matmul`` and ``torch.backends.cudnn.conv``) and
    oneDNN's bf16/TF32 modes (CPU) off while the block runs on ``where``'s device, then restores
    the previous settings. Thread-safe: nested and concurrent blocks restore the user's settings
    once, when the last one leaves. A tensor of another dtype than float32/complex64, or settings
    that already ask for full precision, leave everything untouched (no cost).

    Parameters
    ----------
    where : Tensor or torch.device or str
        A tensor (its device and dtype decide) or a device.

    Examples
    --------
    Inside a layer whose inverse relies on ``U^T U = I``:

    >>> with revlayers.full_precision(x):  # doctest: +SKIP
    ...     y = torch.matmul(u, x.flatten(2))
    """
    device_type, reducible = _device_type(where)
    knobs = _knobs(device_type) if reducible else []
    if not knobs:
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
    for path, attr, exact in _knobs(device.type):
        value = _effective(path, attr)
        if value not in (exact, "none", None):
            return True
    return False
