r"""fastMRI's evaluation metrics of one volume: NMSE, PSNR and SSIM.

The fastMRI challenge (Zbontar et al., 2018; ``fastmri/evaluate.py``) scores each volume
``(slices, H, W)`` of real magnitude images :math:`x` (the target: ``reconstruction_rss``
multi-coil, ``reconstruction_esc`` single-coil) against a reconstruction :math:`\hat x`:

* :math:`\mathrm{NMSE} = \|\hat x - x\|_2^2 / \|x\|_2^2` over the whole volume;
* :math:`\mathrm{PSNR} = 10 \log_{10}(m^2 / \mathrm{MSE})`, the MSE over the whole volume and
  :math:`m = \max x`, the *target volume's* maximum (not each slice's);
* SSIM per slice with the same data range :math:`m` (a uniform 7 x 7 window, sample covariance,
  :math:`K_1 = 0.01`, :math:`K_2 = 0.03`, averaged over the window positions that fit in the
  slice), then averaged over the slices.

Before scoring, fastMRI's evaluation crops both volumes to the centre ``(W, W)`` of the target,
``W`` its width (rows from ``(H - W) // 2``).

These differ from :func:`unrolled.psnr` and :func:`unrolled.ssim` (per sample, the sample's own
peak as data range, complex images' magnitudes against the SENSE-1 reference), so the two are
reported side by side, never mixed. Written in torch, float64; the tests check them against an
independent computation with scikit-image.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._metrics import ssim_torch

__all__ = ["SSIM_WINDOW", "fastmri_center_crop", "fastmri_metrics"]

#: The side of SSIM's uniform window in fastMRI's evaluation (scikit-image's default).
SSIM_WINDOW = 7


def _volume(x: Any, name: str) -> Tensor:
    """``x`` as a float64 CPU tensor ``(slices, H, W)`` (complex: its magnitude)."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, Tensor):
        raise TypeError(
            f"fastmri_metrics takes a torch tensor or numpy array for {name}, got "
            f"{type(x).__name__}"
        )
    if x.ndim != 3:
        raise ValueError(
            f"fastmri_metrics scores one volume (slices, H, W); {name} has shape "
            f"{tuple(x.shape)}: pass one file's slices (a single slice as x[None])"
        )
    x = x.detach().to("cpu")
    x = x.abs() if x.is_complex() else x
    x = x.to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"fastmri_metrics: {name} contains NaN or infinite values")
    return x


def fastmri_center_crop(x: Any, shape: tuple[int, int]) -> Any:
    """Return the centre ``shape`` of the last two axes of ``x``, as fastMRI's ``center_crop``.

    Rows start at ``(H - h) // 2`` and columns at ``(W - w) // 2`` (tensor or array alike).
    Raises ``ValueError`` when ``shape`` is larger than ``x``'s last two axes.
    """
    rows, cols = int(x.shape[-2]), int(x.shape[-1])
    h, w = int(shape[0]), int(shape[1])
    if not (0 < h <= rows and 0 < w <= cols):
        raise ValueError(
            f"cannot centre-crop images of {rows} x {cols} to {h} x {w}: the crop must fit inside "
            "the images"
        )
    top, left = (rows - h) // 2, (cols - w) // 2
    return x[..., top : top + h, left : left + w]


def fastmri_metrics(target: Any, reconstruction: Any, *, crop: bool = True) -> dict[str, float]:
    r"""NMSE, PSNR (dB) and SSIM of one volume, as fastMRI's evaluation defines them.

    Parameters
    ----------
    target : Tensor or numpy array
        The reference volume ``(slices, H, W)``: fastMRI's ``reconstruction_rss`` (multi-coil)
        or ``reconstruction_esc`` (single-coil). Complex input is scored as its magnitude.
    reconstruction : Tensor or numpy array
        The reconstructed volume, the same shape, or (with ``crop``) at least the crop's.
    crop : bool
        Crop both to the target's centre ``(W, W)`` first, as fastMRI's evaluation script does
        (needs ``H >= W``); ``False`` scores the volumes as given (then of equal shape).

    Returns
    -------
    dict
        ``{"nmse": float, "psnr": float, "ssim": float}``; the data range of PSNR and SSIM is
        the (cropped) target volume's maximum. PSNR is ``inf`` for a perfect reconstruction.

    Raises
    ------
    ValueError
        Volumes that are not 3D, of different shapes, with slices under 7 x 7 pixels (SSIM's
        window), non-finite, or a target whose maximum is not positive.
    """
    x = _volume(target, "target")
    x_hat = _volume(reconstruction, "reconstruction")
    if crop:
        side = x.shape[-1]
        if x.shape[-2] < side:
            raise ValueError(
                f"fastMRI's evaluation crops to the target's centre (W, W) = ({side}, {side}), "
                f"which needs H >= W; the target is {tuple(x.shape[-2:])}: pass crop=False to "
                "score the volumes as they are"
            )
        x = fastmri_center_crop(x, (side, side))
        x_hat = fastmri_center_crop(x_hat, (side, side))
    if x_hat.shape != x.shape:
        raise ValueError(
            f"target and reconstruction must have the same shape, got {tuple(x.shape)} and "
            f"{tuple(x_hat.shape)}"
        )
    if min(x.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(
            f"fastMRI's SSIM needs slices of at least {SSIM_WINDOW} x {SSIM_WINDOW} pixels (its "
            f"window), got {tuple(x.shape[-2:])}"
        )
    peak = float(x.max())
    if not peak > 0:
        raise ValueError(
            f"the target volume's maximum is {peak}: fastMRI's PSNR and SSIM take it as data "
            "range, so it must be positive (is the target a magnitude image?)"
        )
    error = float((x_hat - x).square().sum())
    mse = error / x.numel()
    return {
        "nmse": error / float(x.square().sum()),
        "psnr": 10.0 * math.log10(peak**2 / mse) if mse > 0 else math.inf,
        # one sample of all slices: ssim_torch takes the sample's maximum (the volume's) as data
        # range and averages the slices' means (every slice has the same number of windows)
        "ssim": float(ssim_torch(x_hat[None], x[None], window=SSIM_WINDOW)[0]),
    }
