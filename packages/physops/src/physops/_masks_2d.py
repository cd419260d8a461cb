"""Variable-density Poisson-disc and k-t masks (2D and 2D+time Cartesian undersampling).

They follow the conventions of :mod:`physops._masks` (seeded, batched, shape-exact ``float32``
masks in ``{0, 1}``) and share its validation and batching helpers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from physops._masks import batched_masks, check_acceleration, check_batch, check_shape, mask_result
from physops._validate import finite_number, nonnegative_int

__all__ = ["kt_mask", "poisson_disc_mask"]


# --------------------------------------------------------------------------------------------
# variable-density Poisson disc
# --------------------------------------------------------------------------------------------


def _disc_offsets(max_radius: float, row_stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Grid offsets within ``max_radius``, sorted by distance: (squared distances, flat offsets)."""
    reach = math.ceil(max_radius)
    dy, dx = np.mgrid[-reach : reach + 1, -reach : reach + 1]
    d2 = (dy**2 + dx**2).ravel()
    order = np.argsort(d2, kind="stable")
    return d2[order], (dy.ravel() * row_stride + dx.ravel())[order]


def _poisson_pass(
    radius: np.ndarray, order: np.ndarray, seeded: np.ndarray, allowed: np.ndarray
) -> np.ndarray:
    """One dart-throwing pass over every grid cell in ``order``; returns the accepted cells.

    A cell is accepted when no earlier accepted cell (or seeded cell) excludes it; an accepted cell
    at ``p`` excludes all cells ``q`` with ``|p - q| < radius[p]``. The pass visits each cell once,
    so it always terminates, and the result is maximal: every allowed cell is excluded by some
    accepted cell or accepted itself.
    """
    rows, cols = radius.shape
    reach = math.ceil(min(float(radius.max()), max(rows, cols)))
    stride = cols + 2 * reach
    d2_sorted, offsets = _disc_offsets(reach, stride)
    covered = np.ones((rows + 2 * reach, stride), dtype=bool)  # padding counts as covered
    covered[reach : reach + rows, reach : reach + cols] = ~allowed
    flat = covered.ravel()  # a view: writes go to ``covered``
    accepted = np.zeros(rows * cols, dtype=bool)
    rad_flat = radius.ravel()
    base = (np.arange(rows)[:, None] + reach) * stride + (np.arange(cols)[None, :] + reach)
    base_flat = base.ravel()
    # how many sorted offsets fall strictly inside each cell's radius
    counts = np.searchsorted(d2_sorted, np.minimum(rad_flat, reach + 1) ** 2, side="left")

    def place(cell: int) -> None:
        accepted[cell] = True
        flat[base_flat[cell] + offsets[: counts[cell]]] = True

    for cell in np.flatnonzero(seeded.ravel()):
        place(int(cell))
    for cell in order.tolist():
        if not flat[base_flat[cell]]:
            place(cell)
    return accepted.reshape(rows, cols)


def _fix_count(
    accepted: np.ndarray,
    target: int,
    protected: np.ndarray,
    allowed: np.ndarray,
    density: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Add or remove a few samples (weighted by the intended density) to hit ``target`` exactly."""
    mask = accepted.copy()
    excess = int(mask.sum()) - target
    if excess > 0:  # thin uniformly: keeps the density profile's shape
        candidates = np.flatnonzero((mask & ~protected).ravel())
        drop = rng.choice(candidates, size=excess, replace=False)
        mask.ravel()[drop] = False
    elif excess < 0:  # add samples where the intended density is highest among empty cells
        candidates = np.flatnonzero((~mask & allowed).ravel())
        weights = density.ravel()[candidates]
        add = rng.choice(candidates, size=-excess, replace=False, p=weights / weights.sum())
        mask.ravel()[add] = True
    return mask


def _calibration_box(shape: tuple[int, ...], calibration: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice((n - c + 1) // 2, (n - c + 1) // 2 + c) for n, c in zip(shape, calibration))


def _check_calibration(
    calibration: int | Sequence[int], shape: tuple[int, ...], func: str
) -> tuple[int, ...]:
    expected = f"a non-negative int or {len(shape)} of them"
    values = [calibration] if not isinstance(calibration, Sequence) else list(calibration)
    if len(values) not in (1, len(shape)):
        raise ValueError(f"{func}: calibration must be {expected}, got {calibration!r}.")
    calib = tuple(
        nonnegative_int(c, "calibration", func, expected=expected, hint=f" (in {calibration!r})")
        for c in values
    )
    calib = calib * len(shape) if len(calib) == 1 else calib
    if any(c > n for c, n in zip(calib, shape)):
        raise ValueError(
            f"{func}: calibration region {calib} is larger than the k-space grid {shape}: pass a "
            f"calibration size at most the grid size in each axis."
        )
    return calib


_DITHER = 0.3
_BASE = 0.7


def _poisson_one(
    shape: tuple[int, int],
    acceleration: float,
    calib: tuple[int, int],
    crop_corners: bool,
    density_scale: tuple[float, float],
    rng: np.random.Generator,
    func: str,
) -> np.ndarray:
    rows, cols = shape
    # normalised radial coordinate, 0 at the k-space centre, 1 on the inscribed ellipse
    ky = (np.arange(rows) - rows // 2) / max(rows / 2 * density_scale[0], 0.5)
    kx = (np.arange(cols) - cols // 2) / max(cols / 2 * density_scale[1], 0.5)
    rho = np.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)
    allowed = rho <= 1.0 if crop_corners else np.ones(shape, dtype=bool)
    seeded = np.zeros(shape, dtype=bool)
    seeded[_calibration_box(shape, calib)] = True
    allowed |= seeded
    target = round(rows * cols / acceleration)
    n_calib, n_allowed = int(seeded.sum()), int(allowed.sum())
    if n_calib > target:
        raise ValueError(
            f"{func}: the calibration region {calib} holds {n_calib} samples, more than the "
            f"{target} that acceleration {acceleration:g} allows on a {rows}x{cols} grid: use a "
            f"smaller calibration region or a lower acceleration."
        )
    if n_allowed < target:
        raise ValueError(
            f"{func}: acceleration {acceleration:g} needs {target} samples but crop_corners=True "
            f"leaves only {n_allowed} cells of the {rows}x{cols} grid inside the ellipse: pass "
            f"crop_corners=False or an acceleration >= {rows * cols / n_allowed:.3f}."
        )
    order = rng.permutation(rows * cols)
    order = order[allowed.ravel()[order] & ~seeded.ravel()[order]]

    # A seeded per-cell dither of the radius (factor in [1 - j, 1 + j]) smooths the density: on a
    # grid, distances take few values, so an undithered radius gives density plateaus (rings).
    dither = 1.0 + _DITHER * (2.0 * rng.random(shape) - 1.0)

    def generate(slope: float) -> np.ndarray:
        return _poisson_pass(_BASE * (1.0 + slope * rho) * dither, order, seeded, allowed)

    # Bisection on the slope of the radius profile r(k) = 1 + slope * rho(k): slope 0 samples every
    # allowed cell, a large slope keeps almost only the calibration region. The count is nearly
    # monotone in the slope; a fixed number of steps bounds the time, and _fix_count makes the
    # sample count exact afterwards, so the bisection only has to get close.
    low, high = 0.0, float(max(rows, cols))
    best, best_gap = generate(low), math.inf
    for _ in range(14):
        mid = 0.5 * (low + high)
        trial = generate(mid)
        count = int(trial.sum())
        gap = abs(count - target)
        if gap < best_gap:
            best, best_gap = trial, gap
        if gap <= max(1, target // 200):
            break
        if count > target:
            low = mid
        else:
            high = mid
    density = 1.0 / (1.0 + 0.5 * (low + high) * rho) ** 2
    return _fix_count(best, target, seeded, allowed, density, rng)


def poisson_disc_mask(
    shape: Sequence[int],
    acceleration: float,
    *,
    calibration: int | Sequence[int] = 24,
    crop_corners: bool = True,
    density_scale: float | Sequence[float] = 1.0,
    seed: int | None = None,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Make a 2D variable-density Poisson-disc mask with a fully sampled calibration region.

    For 3D Cartesian imaging (two phase-encode axes, as GLEAM's knee data at R = 4, 12, 16) or
    2D imaging with a 2D pattern. Samples keep a minimum distance that grows with the distance from
    the k-space centre: a sample at ``k`` excludes all cells within ``r(k) = 1 + s ρ(k)`` grid
    cells, with ``ρ`` the elliptical radius (``ρ = 1`` on the ellipse inscribed in the grid, scaled
    by ``density_scale``). Sampling density therefore falls off as ``(1 + s ρ)^-2``.

    Algorithm (ours, not sigpy's ``poisson``, which can miss the requested acceleration and loop
    forever): one dart-throwing pass over every grid cell in a seeded random order accepts a cell
    unless an accepted cell excludes it, so each pass terminates and yields a maximal Poisson-disc
    set; a fixed number (at most 15) of bisection passes choose ``s``; then a handful of samples
    are added or removed, weighted by the intended density, so that the mask holds exactly
    ``round(H W / R)`` samples. The achieved acceleration ``H W / sum(mask)`` therefore equals ``R``
    up to one sample, and the time per mask is bounded by 15 passes over the grid.

    Parameters
    ----------
    shape : (int, int)
        K-space grid ``(H, W)`` (the phase-encode plane).
    acceleration : float
        ``R >= 1``: total cells / sampled cells (the cropped corners count as unsampled).
    calibration : int or (int, int)
        Size of the fully sampled centred calibration box (``0`` for none).
    crop_corners : bool
        Sample only inside the inscribed ellipse, as scanners usually do.
    density_scale : float or (float, float)
        Stretch of the radial coordinate per axis (``> 1`` flattens the density fall-off).
    seed : int, optional
        Reproducible masks; ``None`` follows torch's global RNG.
    batch_size : int, optional
        Return ``batch_size`` different masks stacked as ``(batch_size, H, W)``.

    Returns
    -------
    Tensor
        ``float32`` in ``{0, 1}``, shape ``(H, W)`` or ``(batch_size, H, W)``.
    """
    func = "poisson_disc_mask"
    shape2 = check_shape(shape, (2,), func)
    accel = check_acceleration(acceleration, func)
    calib = _check_calibration(calibration, shape2, func)
    check_batch(batch_size, func)
    scale = [
        finite_number(v, "density_scale", func, low=0, low_open=True)
        for v in (density_scale if isinstance(density_scale, Sequence) else [density_scale])
    ]
    if len(scale) == 1:
        scale = scale * 2
    if len(scale) != 2:
        raise ValueError(f"{func} expects density_scale > 0 (one or two values), got {scale}.")

    def one(rng: np.random.Generator) -> tuple[np.ndarray, int]:
        mask = _poisson_one(
            (shape2[0], shape2[1]),
            accel,
            (calib[0], calib[1]),
            crop_corners,
            (scale[0], scale[1]),
            rng,
            func,
        )
        return mask, calib[-1]

    return mask_result(*batched_masks(one, batch_size, seed), batch_size).mask


def kt_mask(
    shape: Sequence[int],
    acceleration: float,
    *,
    center_lines: int = 8,
    density_scale: float = 1.0,
    seed: int | None = None,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Make a k-t variable-density mask for 2D+time (cine) data: a different line pattern per frame.

    Undersamples the phase-encode axis (the last axis, ``W``) of every frame; the readout axis
    ``H`` is fully sampled. The pattern is a variable-density Poisson disc in the ``(t, k_y)``
    plane (:func:`poisson_disc_mask` on a ``T x W`` grid, no corner cropping, density falling off
    with ``|k_y|`` only), so neighbouring frames sample interleaved lines and every frame keeps the
    ``center_lines`` central lines. The achieved acceleration equals ``R`` up to one line.

    Parameters
    ----------
    shape : (int, int, int)
        ``(T, H, W)``: frames, readout, phase encodes.
    acceleration : float
        ``R >= 1`` over the whole k-t grid.
    center_lines : int
        Fully sampled central phase-encode lines in every frame.
    density_scale : float
        Stretch of the ``k_y`` coordinate (``> 1`` flattens the density fall-off).
    seed, batch_size
        As in :func:`poisson_disc_mask`.

    Returns
    -------
    Tensor
        ``float32`` in ``{0, 1}``, shape ``(T, H, W)`` or ``(batch_size, T, H, W)``.
    """
    func = "kt_mask"
    shape3 = check_shape(shape, (3,), func)
    accel = check_acceleration(acceleration, func)
    frames, rows, cols = shape3
    center_lines = nonnegative_int(center_lines, "center_lines", func)
    if center_lines > cols:
        raise ValueError(
            f"{func}: calibration of {center_lines} center lines is larger than the {cols} "
            f"phase-encode lines of shape {shape3}: pass center_lines <= {cols}."
        )
    check_batch(batch_size, func)
    density_scale = finite_number(density_scale, "density_scale", func, low=0, low_open=True)

    def one(rng: np.random.Generator) -> tuple[np.ndarray, int]:
        # time is not a k-space axis: a huge density_scale makes rho independent of t
        plane = _poisson_one(
            (frames, cols),
            accel,
            (frames, center_lines),
            False,
            (1e9, density_scale),
            rng,
            func,
        )
        return np.broadcast_to(plane[:, None, :], (frames, rows, cols)), center_lines

    return mask_result(*batched_masks(one, batch_size, seed), batch_size).mask
