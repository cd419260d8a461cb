r"""Coil sensitivity maps: simulated birdcage maps, ESPIRiT (torch, sigpy), JSENSE, combination.

==========================  ===================================================================
function                    what it does
==========================  ===================================================================
``birdcage_maps``           simulated maps of coils on a cylinder around the object, normalised to
                            :math:`\sum_c |S_c|^2 = 1`
``espirit_maps``            torch-native, batched ESPIRiT (2D), runs where the k-space lives (GPU)
``espirit_maps_sigpy``      sigpy's ``EspiritCalib`` (extra ``memroll-physops[sigpy]``)
``jsense_maps_sigpy``       sigpy's ``JsenseRecon`` (extra ``memroll-physops[sigpy]``)
``rss``                     root-sum-of-squares :math:`\sqrt{\sum_c |x_c|^2}`
``sense1``                  SENSE-1 combination :math:`\sum_c \bar S_c x_c / \sum_c |S_c|^2`
==========================  ===================================================================

Shapes: k-space and coil images are ``(*batch, C, *image_shape)``, the coil axis right after the
batch axes (``dim=-3`` for 2D images), as :class:`physops.Sense` expects of its maps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from physops._fft import ifftc
from physops._validate import finite_number, positive_int, tensor

__all__ = [
    "birdcage_maps",
    "espirit_maps",
    "espirit_maps_sigpy",
    "jsense_maps_sigpy",
    "rss",
    "sense1",
]


def _check_finite(x: Tensor, who: str, what: str) -> None:
    if not bool(torch.isfinite(torch.view_as_real(x) if x.is_complex() else x).all()):
        raise ValueError(
            f"{who}: {what} contains NaN or infinite values: clean the data (for example "
            f"torch.nan_to_num) before estimating coil maps."
        )


def _check_kspace(kspace: object, who: str, ndim: int = 2) -> Tensor:
    kspace = tensor(kspace, who, "kspace")
    if not kspace.is_complex():
        raise TypeError(
            f"{who} expects complex k-space (complex64 or complex128), got {kspace.dtype} of "
            f"shape {tuple(kspace.shape)}: convert a (..., 2) layout with "
            f"torch.view_as_complex(k.contiguous())."
        )
    if kspace.ndim < ndim + 1:
        raise ValueError(
            f"{who} expects multi-coil k-space of shape (*batch, coils, H, W), got shape "
            f"{tuple(kspace.shape)}: add the coil axis (kspace[None] for a single coil)."
        )
    _check_finite(kspace, who, "kspace")
    return kspace


def _check_calib(calibration: int, kernel_size: int, image: tuple[int, ...], who: str) -> None:
    positive_int(calibration, "calibration", who)
    positive_int(kernel_size, "kernel_size", who)
    if any(calibration > n for n in image):
        raise ValueError(
            f"{who}: calibration region {calibration} is larger than the k-space image "
            f"{tuple(image)}: pass calibration <= {min(image)}."
        )
    if kernel_size > calibration:
        raise ValueError(
            f"{who}: kernel_size {kernel_size} exceeds the calibration region {calibration}: "
            f"pass kernel_size <= calibration."
        )


# --------------------------------------------------------------------------------------------
# simulated maps
# --------------------------------------------------------------------------------------------


def birdcage_maps(
    shape: Sequence[int],
    num_coils: int = 8,
    *,
    radius: float = 1.5,
    rings: int = 1,
    dtype: torch.dtype = torch.complex64,
    device: torch.device | str | None = None,
) -> Tensor:
    r"""Simulate the sensitivities of coils on a cylinder around the object (a birdcage-like array).

    Coil :math:`c` sits at angle :math:`\theta_c = 2\pi c / C_r` on a circle of relative radius
    ``radius`` (the image spans :math:`[-1, 1]` in each in-plane axis), in one of ``rings`` rings
    spread along the first axis of a 3D volume. Its sensitivity falls off with distance and its
    phase turns with the angle around the coil:

    .. math::

        \tilde S_c(r) = \frac{e^{i(\arg(r - p_c) - \theta_c)}}{\|r - p_c\|}, \qquad
        S_c = \tilde S_c \Big/ \sqrt{\textstyle\sum_{c'} |\tilde S_{c'}|^2},

    so :math:`\sum_c |S_c|^2 = 1` everywhere and SENSE-1 combination of noiseless coil images
    returns the image exactly.

    Parameters
    ----------
    shape : (H, W) or (D, H, W)
        Image shape.
    num_coils : int
        Total number of coils ``C`` (divisible by ``rings``).
    radius : float
        Coil circle radius relative to the half field of view (``> 1`` puts coils outside).
    rings : int
        Rings of coils along ``D`` for 3D shapes (1 for 2D).
    dtype, device
        Output complex dtype and device.

    Returns
    -------
    Tensor
        ``(C, *shape)``.
    """
    who = "birdcage_maps"
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(f"{who} supports image shapes (H, W) or (D, H, W), got {shape}.")
    num_coils = positive_int(num_coils, "num_coils", who)
    rings = positive_int(rings, "rings", who)
    if num_coils % rings:
        raise ValueError(
            f"{who} expects num_coils >= 1 divisible by rings, got num_coils={num_coils}, "
            f"rings={rings}."
        )
    if len(shape) == 2 and rings != 1:
        raise ValueError(f"{who}: rings={rings} needs a 3D shape (D, H, W), got {shape}.")
    radius = finite_number(radius, "radius", who, low=0, low_open=True)
    if not dtype.is_complex:
        raise TypeError(f"{who} returns complex maps: dtype must be complex, got {dtype}.")
    per_ring = num_coils // rings
    axes = [
        torch.linspace(-1.0, 1.0, n, dtype=torch.float64)
        if n > 1
        else torch.zeros(1, dtype=torch.float64)
        for n in shape
    ]
    grids = torch.meshgrid(*axes, indexing="ij")
    y, x = grids[-2], grids[-1]
    z = grids[0] if len(shape) == 3 else torch.zeros_like(x)
    ring_z = (
        torch.linspace(-1.0, 1.0, rings, dtype=torch.float64)
        if rings > 1
        else torch.zeros(1, dtype=torch.float64)
    )
    maps = []
    for ring in range(rings):
        for c in range(per_ring):
            theta = 2 * math.pi * c / per_ring
            cy, cx = radius * math.sin(theta), radius * math.cos(theta)
            dy, dx, dz = y - cy, x - cx, z - ring_z[ring]
            distance = torch.sqrt(dy**2 + dx**2 + dz**2)
            phase = torch.atan2(dy, dx) - theta
            maps.append(torch.polar(1.0 / distance, phase))
    out = torch.stack(maps)
    out = out / torch.sqrt((out.abs() ** 2).sum(0, keepdim=True))
    return out.to(dtype=dtype, device=device)


# --------------------------------------------------------------------------------------------
# combination
# --------------------------------------------------------------------------------------------


def rss(x: Tensor, dim: int = -3) -> Tensor:
    r"""Root-sum-of-squares coil combination :math:`\sqrt{\sum_c |x_c|^2}` over ``dim``.

    Parameters
    ----------
    x : Tensor
        Coil images ``(*batch, C, H, W)`` (real or complex); ``dim`` is the coil axis (``-3`` for
        2D images, ``-4`` for 3D volumes).

    Returns
    -------
    Tensor
        Real, the coil axis removed.
    """
    x = tensor(x, "rss")
    return torch.sqrt((x.abs() ** 2).sum(dim))


def sense1(coil_images: Tensor, maps: Tensor, dim: int = -3, eps: float = 1e-12) -> Tensor:
    r"""SENSE-1 (Roemer) combination :math:`x = \sum_c \bar S_c x_c / \sum_c |S_c|^2`.

    The least-squares image from fully sampled coil images; for maps normalised to
    :math:`\sum_c |S_c|^2 = 1` it is :math:`S^H x_{\text{coils}}`. Pixels where the maps vanish
    (cropped ESPIRiT maps) give 0.

    Parameters
    ----------
    coil_images : Tensor
        Complex ``(*batch, C, *image_shape)``.
    maps : Tensor
        Complex maps broadcastable to ``coil_images``, same coil axis.
    dim : int
        The coil axis.
    eps : float
        Guard for pixels where :math:`\sum_c |S_c|^2 = 0`.

    Returns
    -------
    Tensor
        Complex combined image, the coil axis removed.
    """
    who = "sense1"
    for name, t in (("coil_images", coil_images), ("maps", maps)):
        if not isinstance(t, Tensor) or not t.is_complex():
            got = t.dtype if isinstance(t, Tensor) else type(t).__name__
            raise TypeError(f"{who} expects complex {name}, got {got}.")
    if coil_images.shape[dim] != maps.shape[dim]:
        raise ValueError(
            f"{who}: maps have {maps.shape[dim]} coils (axis {dim} of shape "
            f"{tuple(maps.shape)}) but the coil images have {coil_images.shape[dim]} (shape "
            f"{tuple(coil_images.shape)}): use maps estimated from the same acquisition."
        )
    numerator = (maps.conj() * coil_images).sum(dim)
    energy = (maps.abs() ** 2).sum(dim)
    return torch.where(energy > eps, numerator / energy.clamp_min(eps), torch.zeros_like(numerator))


# --------------------------------------------------------------------------------------------
# ESPIRiT in torch
# --------------------------------------------------------------------------------------------


def _center_crop(x: Tensor, size: Sequence[int]) -> Tensor:
    slices = [slice(None)] * (x.ndim - len(size))
    for n, s in zip(x.shape[-len(size) :], size):
        start = n // 2 - s // 2
        slices.append(slice(start, start + s))
    return x[tuple(slices)]


def _center_pad(x: Tensor, size: Sequence[int]) -> Tensor:
    pads: list[int] = []
    for n, s in zip(reversed(x.shape[-len(size) :]), reversed(list(size))):
        before = s // 2 - n // 2
        pads += [before, s - n - before]
    return torch.nn.functional.pad(x, pads)


def espirit_maps(
    kspace: Tensor,
    *,
    calibration: int = 24,
    kernel_size: int = 6,
    threshold: float = 0.02,
    crop: float = 0.95,
    kernel_chunk: int = 32,
) -> Tensor:
    r"""ESPIRiT coil maps in torch, batched, on the k-space's device (2D images).

    ESPIRiT (Uecker et al., 2014): from the fully sampled ``calibration x calibration`` centre,
    build the calibration matrix whose rows are all ``kernel_size x kernel_size`` patches over all
    coils; keep its right singular vectors :math:`v_j` with singular value above
    ``threshold * s_max`` (the signal subspace); turn each into an image-space kernel
    :math:`a_j = \mathcal{F}^{-1}(\operatorname{pad}(v_j))`; at every pixel the maps are the
    eigenvector of :math:`G(r) = \frac{N}{k^2} \sum_j a_j(r) a_j(r)^H` (``C x C``) with the largest
    eigenvalue, kept where that eigenvalue exceeds ``crop`` and zero elsewhere. The phase is made
    relative to coil 0. Same definitions as sigpy's ``EspiritCalib``, so the two agree up to a
    per-pixel phase; the differences are that this one runs batched on any device and solves the
    small per-pixel eigenproblems exactly (``torch.linalg.eigh``) where sigpy runs a power method.

    Parameters
    ----------
    kspace : Tensor
        Complex ``(*batch, C, H, W)``, centred (zero frequency at index ``n // 2``); only the
        calibration region is read, so undersampled k-space with a fully sampled centre works.
    calibration : int
        Width of the (square) calibration region.
    kernel_size : int
        ESPIRiT kernel width ``k``.
    threshold : float
        Relative singular-value threshold of the signal subspace.
    crop : float
        Eigenvalue threshold in ``[0, 1]`` below which maps are set to zero.
    kernel_chunk : int
        Kernels transformed at once (bounds memory at ``chunk * C * H * W`` complex values).

    Returns
    -------
    Tensor
        Maps of the same shape and dtype as ``kspace``; unit norm over coils where kept.
    """
    who = "espirit_maps"
    kspace = _check_kspace(kspace, who)
    *batch, coils, rows, cols = kspace.shape
    _check_calib(calibration, kernel_size, (rows, cols), who)
    threshold = finite_number(threshold, "threshold", who, low=0)
    crop = finite_number(crop, "crop", who, low=0, high=1)
    kernel_chunk = positive_int(kernel_chunk, "kernel_chunk", who)
    k = kernel_size
    flat = kspace.reshape(-1, coils, rows, cols)
    calib = _center_crop(flat, (calibration, calibration))
    patches = calib.unfold(-2, k, 1).unfold(-2, k, 1)  # (B, C, P, P, k, k)
    nb = flat.shape[0]
    mat = patches.permute(0, 2, 3, 1, 4, 5).reshape(nb, -1, coils * k * k)
    _, s, vh = torch.linalg.svd(mat, full_matrices=False)
    keep = s > threshold * s[:, :1]  # singular values come sorted, so kept rows lead
    n_keep = int(keep.sum(1).max())
    kernels = vh[:, :n_keep] * keep[:, :n_keep, None].to(vh.dtype)
    kernels = kernels.reshape(nb, n_keep, coils, k, k)
    gram = torch.zeros(nb, rows, cols, coils, coils, dtype=kspace.dtype, device=kspace.device)
    for start in range(0, n_keep, kernel_chunk):
        part = _center_pad(kernels[:, start : start + kernel_chunk], (rows, cols))
        img = ifftc(part)  # (B, chunk, C, H, W)
        gram += torch.einsum("bjchw,bjdhw->bhwcd", img, img.conj())
    gram *= rows * cols / k**2
    eigval, eigvec = torch.linalg.eigh(gram)
    maps = eigvec[..., -1]  # (B, H, W, C), unit norm
    top = eigval[..., -1]
    ref = maps[..., :1]
    phase = torch.where(
        ref.abs() > 0, ref.conj() / ref.abs().clamp_min(1e-30), torch.ones_like(ref)
    )
    maps = maps * phase * (top > crop)[..., None].to(maps.dtype)
    return maps.permute(0, 3, 1, 2).reshape(*batch, coils, rows, cols).contiguous()


# --------------------------------------------------------------------------------------------
# sigpy wrappers
# --------------------------------------------------------------------------------------------


def _sigpy(who: str) -> Any:
    try:
        import sigpy.mri
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            f"{who} needs sigpy: install the extra with pip install 'memroll-physops[sigpy]', "
            f"or use the torch-native physops.espirit_maps."
        ) from err
    import sigpy

    return sigpy


def _per_sample(kspace: Tensor, estimate: Any) -> Tensor:
    *_batch, coils, rows, cols = kspace.shape
    flat = kspace.detach().reshape(-1, coils, rows, cols).cpu().numpy()
    out = [np.ascontiguousarray(estimate(np.ascontiguousarray(sample))) for sample in flat]
    # sigpy returns Fortran-ordered (transposed-view) arrays: copy to C order before torch
    maps = torch.from_numpy(np.ascontiguousarray(np.stack(out)))
    return maps.to(dtype=kspace.dtype, device=kspace.device).reshape(kspace.shape).contiguous()


def _run_sigpy_app(kspace: Tensor, who: str, app: str, **options: Any) -> Tensor:
    """Run ``sigpy.mri.app.<app>(sample, **options)`` on every sample of ``kspace``."""
    sigpy = _sigpy(who)

    def estimate(sample: np.ndarray) -> np.ndarray:
        return np.asarray(getattr(sigpy.mri.app, app)(sample, show_pbar=False, **options).run())

    return _per_sample(kspace, estimate)


def espirit_maps_sigpy(
    kspace: Tensor,
    *,
    calibration: int = 24,
    kernel_size: int = 6,
    threshold: float = 0.02,
    crop: float = 0.95,
    max_iter: int = 100,
) -> Tensor:
    """ESPIRiT maps from sigpy's ``EspiritCalib``, one sample at a time on the CPU.

    Needs the extra ``memroll-physops[sigpy]``. Parameters as :func:`espirit_maps` (sigpy's
    ``calib_width``, ``kernel_width``, ``thresh``, ``crop``), plus sigpy's power-method
    ``max_iter``. Returns contiguous maps of ``kspace``'s shape, dtype and device.
    """
    who = "espirit_maps_sigpy"
    kspace = _check_kspace(kspace, who)
    _check_calib(calibration, kernel_size, tuple(kspace.shape[-2:]), who)
    return _run_sigpy_app(
        kspace,
        who,
        "EspiritCalib",
        calib_width=calibration,
        thresh=finite_number(threshold, "threshold", who, low=0),
        kernel_width=kernel_size,
        crop=finite_number(crop, "crop", who, low=0, high=1),
        max_iter=positive_int(max_iter, "max_iter", who),
    )


def jsense_maps_sigpy(
    kspace: Tensor,
    *,
    calibration: int = 24,
    kernel_size: int = 8,
    max_iter: int = 10,
    max_inner_iter: int = 10,
) -> Tensor:
    """JSENSE maps (joint image and sensitivity estimation) from sigpy's ``JsenseRecon``.

    Needs the extra ``memroll-physops[sigpy]``. GLEAM estimated its knee maps this way with kernel
    width 8. ``calibration`` is sigpy's ``ksp_calib_width``, ``kernel_size`` its
    ``mps_ker_width``. Returns contiguous maps of ``kspace``'s shape, dtype and device.
    """
    who = "jsense_maps_sigpy"
    kspace = _check_kspace(kspace, who)
    _check_calib(calibration, 1, tuple(kspace.shape[-2:]), who)
    return _run_sigpy_app(
        kspace,
        who,
        "JsenseRecon",
        mps_ker_width=positive_int(kernel_size, "kernel_size", who),
        ksp_calib_width=calibration,
        max_iter=positive_int(max_iter, "max_iter", who),
        max_inner_iter=positive_int(max_inner_iter, "max_inner_iter", who),
    )
