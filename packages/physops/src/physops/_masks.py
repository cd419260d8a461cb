"""Cartesian k-space sampling masks: fastMRI 1D masks and the conventions every mask follows.

Every generator here is

* **seeded**: the same ``seed`` gives the same mask on every platform (numpy's PCG64 stream);
* **batched**: ``batch_size=B`` returns ``B`` different masks stacked on a leading dimension, mask
  ``i`` seeded by ``(seed, i)`` so sample ``i`` does not depend on ``B``;
* **shape-exact**: the returned mask has exactly the requested k-space shape (``(H, W)`` or
  ``(T, H, W)``), ``float32`` with values in ``{0, 1}``, so it multiplies complex k-space directly
  and collates with the default ``DataLoader`` collate.

Axis convention (fastMRI's): the phase-encode direction that 1D masks undersample is the LAST
axis (``W``, k-space columns); rows (``H``) are the fully sampled readout.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch

from physops._validate import finite_number, positive_int

__all__ = ["MaskResult", "equispaced_mask_1d", "random_mask_1d"]


class MaskResult(NamedTuple):
    """A sampling mask and its number of fully sampled low frequencies (fastMRI's pair).

    Unpacks like fastMRI's ``mask, num_low_frequencies = mask_func(shape, seed=...)``.

    Attributes
    ----------
    mask : Tensor
        ``float32`` in ``{0, 1}``, shape ``shape`` or ``(batch_size, *shape)``.
    num_low_frequencies : int or Tensor
        The width of the fully sampled centre along the undersampled axis: an ``int`` for a single
        mask, an ``int64`` tensor of shape ``(batch_size,)`` for a batch.
    """

    mask: torch.Tensor
    num_low_frequencies: int | torch.Tensor


# --------------------------------------------------------------------------------------------
# validation and batching, shared with the 2D masks (physops._masks_2d)
# --------------------------------------------------------------------------------------------


def check_shape(shape: Sequence[int], ndims: tuple[int, ...], func: str) -> tuple[int, ...]:
    if isinstance(shape, torch.Size):
        shape = tuple(shape)
    if not isinstance(shape, Sequence) or isinstance(shape, str):
        raise TypeError(
            f"{func} expects shape as a tuple of ints, got {type(shape).__name__}: "
            f"pass the k-space image shape, e.g. (320, 256)."
        )
    if len(shape) not in ndims:
        wanted = " or ".join(f"{n} dims" for n in ndims)
        raise ValueError(
            f"{func} supports k-space shapes of {wanted}, got shape {tuple(shape)} with "
            f"{len(shape)} dims: pass the trailing image shape only (no batch or coil axis), "
            f"and use batch_size= for several masks."
        )
    out = []
    for s in shape:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1:
            raise ValueError(f"{func} expects positive integer sizes, got shape {tuple(shape)}.")
        out.append(int(s))
    return tuple(out)


def check_acceleration(acceleration: float, func: str) -> float:
    return finite_number(
        acceleration,
        "acceleration",
        func,
        low=1.0,
        type_template="{who} expects a real {name}, got {value}.",
        template=(
            "{who} expects an acceleration >= 1 (the ratio of k-space size to samples), got "
            "{value!r}: R = 1 is fully sampled, R = 4 keeps a quarter of k-space."
        ),
    )


def _check_fraction(center_fraction: float, func: str) -> float:
    return finite_number(
        center_fraction,
        "center_fraction",
        func,
        low=0.0,
        high=1.0,
        hint=" (the share of columns fully sampled at the centre)",
    )


def check_batch(batch_size: int | None, func: str) -> None:
    if batch_size is not None:
        positive_int(
            batch_size,
            "batch_size",
            func,
            template="{who} expects {name} None or a positive int, got {value!r}.",
        )


def mask_rng(seed: int | None, index: int | None) -> np.random.Generator:
    """Return a numpy Generator for mask ``index`` (``seed=None``: seeded from torch's RNG)."""
    if seed is None:
        # follow torch's global seed so torch.manual_seed makes masks reproducible too
        seed = int(torch.randint(0, 2**62, (1,)).item())
    return np.random.default_rng([seed] if index is None else [seed, index])


def _as_list(value: float | Sequence[float]) -> list[float]:
    if isinstance(value, Sequence):
        return [float(v) for v in value]
    return [float(value)]


def batched_masks(
    one: object, batch_size: int | None, seed: int | None
) -> tuple[list[np.ndarray], list[int]]:
    masks: list[np.ndarray] = []
    lows: list[int] = []
    indices: list[int | None] = [None] if batch_size is None else list(range(batch_size))
    for index in indices:
        mask, low = one(mask_rng(seed, index))  # type: ignore[operator]
        masks.append(mask)
        lows.append(low)
    return masks, lows


def mask_result(masks: list[np.ndarray], lows: list[int], batch_size: int | None) -> MaskResult:
    if batch_size is None:
        return MaskResult(torch.from_numpy(np.ascontiguousarray(masks[0], np.float32)), lows[0])
    stacked = torch.from_numpy(np.ascontiguousarray(np.stack(masks), np.float32))
    return MaskResult(stacked, torch.tensor(lows, dtype=torch.int64))


# --------------------------------------------------------------------------------------------
# fastMRI 1D masks
# --------------------------------------------------------------------------------------------


def _center_columns(num_cols: int, num_low: int) -> slice:
    # fastMRI places the centre block at pad = (num_cols - num_low + 1) // 2
    pad = (num_cols - num_low + 1) // 2
    return slice(pad, pad + num_low)


def _choose(
    rng: np.random.Generator, fractions: list[float], accelerations: list[float]
) -> tuple[float, float]:
    choice = int(rng.integers(len(fractions))) if len(fractions) > 1 else 0
    return fractions[choice], accelerations[choice]


def _check_lists(
    center_fractions: float | Sequence[float],
    accelerations: float | Sequence[float],
    func: str,
) -> tuple[list[float], list[float]]:
    fractions = [_check_fraction(f, func) for f in _as_list(center_fractions)]
    accels = [check_acceleration(a, func) for a in _as_list(accelerations)]
    if len(fractions) != len(accels) or not fractions:
        raise ValueError(
            f"{func} expects as many center_fractions as accelerations (one pair is drawn per "
            f"mask), got {len(fractions)} and {len(accels)}."
        )
    for fraction, accel in zip(fractions, accels):
        if fraction > 1.0 / accel:
            raise ValueError(
                f"{func}: center_fraction {fraction} samples more than the 1/{accel:g} = "
                f"{1 / accel:.4g} of columns that acceleration {accel:g} allows: lower the "
                f"center fraction or the acceleration."
            )
    return fractions, accels


ColumnRule = Callable[[np.random.Generator, int, int, float], np.ndarray]


def _mask_1d(
    func: str,
    shape: Sequence[int],
    center_fractions: float | Sequence[float],
    accelerations: float | Sequence[float],
    seed: int | None,
    batch_size: int | None,
    columns: ColumnRule,
) -> MaskResult:
    """Masks whose sampled columns ``columns(rng, num_cols, num_low, accel)`` picks, plus a centre.

    Shared by the fastMRI 1D masks: checks the arguments, draws one ``(fraction, acceleration)``
    pair per mask, fully samples the ``round(W * fraction)`` central columns and broadcasts the
    columns over the rows.
    """
    shape = check_shape(shape, (2,), func)
    fractions, accels = _check_lists(center_fractions, accelerations, func)
    check_batch(batch_size, func)
    num_cols = shape[-1]

    def one(rng: np.random.Generator) -> tuple[np.ndarray, int]:
        fraction, accel = _choose(rng, fractions, accels)
        num_low = round(num_cols * fraction)
        cols = columns(rng, num_cols, num_low, accel)
        cols[_center_columns(num_cols, num_low)] = True
        return np.broadcast_to(cols, shape), num_low

    return mask_result(*batched_masks(one, batch_size, seed), batch_size)


def random_mask_1d(
    shape: Sequence[int],
    center_fractions: float | Sequence[float],
    accelerations: float | Sequence[float],
    *,
    seed: int | None = None,
    batch_size: int | None = None,
) -> MaskResult:
    """Make fastMRI's random 1D Cartesian mask (``RandomMaskFunc``): random columns, full centre.

    For ``W = shape[-1]`` columns, a pair ``(f, R)`` is drawn from the given lists (uniformly, one
    draw per mask), ``n_low = round(W f)`` central columns are fully sampled, and every other
    column is kept independently with probability ``p = (W / R - n_low) / (W - n_low)``, so the
    expected acceleration is ``R``.

    Parameters
    ----------
    shape : tuple of int
        K-space image shape ``(H, W)``; columns (the last axis) are undersampled.
    center_fractions, accelerations : float or sequence of float
        Paired lists as in fastMRI (for example ``[0.08, 0.04]`` with ``[4, 8]``).
    seed : int, optional
        Reproducible masks; ``None`` follows torch's global RNG.
    batch_size : int, optional
        Return ``batch_size`` different masks, shape ``(batch_size, H, W)``.

    Returns
    -------
    MaskResult
        ``(mask, num_low_frequencies)``.
    """

    def columns(rng: np.random.Generator, num_cols: int, num_low: int, accel: float) -> np.ndarray:
        prob = (num_cols / accel - num_low) / max(num_cols - num_low, 1)
        return rng.uniform(size=num_cols) < prob

    return _mask_1d(
        "random_mask_1d", shape, center_fractions, accelerations, seed, batch_size, columns
    )


def equispaced_mask_1d(
    shape: Sequence[int],
    center_fractions: float | Sequence[float],
    accelerations: float | Sequence[float],
    *,
    match_acceleration: bool = True,
    seed: int | None = None,
    batch_size: int | None = None,
) -> MaskResult:
    """Make fastMRI's equispaced 1D Cartesian mask: every ``R``-th column plus a full centre.

    With ``match_acceleration=True`` (fastMRI's ``EquispacedMaskFractionFunc``) the spacing is
    widened to ``R' = R (n_low - W) / (n_low R - W)`` so that centre plus equispaced columns keep
    about ``W / R`` columns in all; with ``False`` (fastMRI's ``EquispacedMaskFunc``) every
    ``R``-th column is kept from a random offset and the centre comes on top. The offset is drawn
    per mask in ``[0, round(R'))``.

    Parameters and return value as in :func:`random_mask_1d`.
    """

    def columns(rng: np.random.Generator, num_cols: int, num_low: int, accel: float) -> np.ndarray:
        cols = np.zeros(num_cols, dtype=bool)
        if match_acceleration:
            denominator = num_low * accel - num_cols
            step = accel * (num_low - num_cols) / denominator if denominator != 0 else accel
            step = max(step, 1.0)
            offset = int(rng.integers(0, max(round(step), 1)))
            picks = np.around(np.arange(offset, num_cols - 1, step)).astype(np.int64)
            cols[picks[picks < num_cols]] = True
        else:
            step_int = max(round(accel), 1)
            offset = int(rng.integers(0, step_int))
            cols[offset::step_int] = True
        return cols

    return _mask_1d(
        "equispaced_mask_1d", shape, center_fractions, accelerations, seed, batch_size, columns
    )
