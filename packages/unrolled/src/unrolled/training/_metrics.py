"""Image-quality metrics and training losses.

Metrics follow the papers (GLEAM Sec. V-C4, fastMRI): computed per slice on magnitude images
(complex images -> ``abs``; real images as they are), with the peak of the reference as data
range, by scikit-image (an independent, widely used implementation):

* ``nrmse = ||x_hat - x|| / ||x||``
* ``psnr = 20 log10(max|x| / rmse)``
* ``ssim``: :func:`skimage.metrics.structural_similarity` with ``data_range = max|x|``
  (7x7 uniform window, the fastMRI setting).

Volumes ``(B, D, H, W)`` are scored slice by slice along ``D`` and averaged per sample.

Losses (differentiable, for training): complex L1 (GLEAM), MSE, NMSE (i-RIM) and an SSIM loss on
magnitudes written in torch (scikit-image's SSIM is numpy-only and not differentiable; the torch
version is checked against it in the tests).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LOSSES", "get_loss", "magnitude", "nrmse", "psnr", "ssim", "ssim_torch"]


def magnitude(x: Tensor) -> Tensor:
    """``|x|`` for complex images, ``x`` itself for real ones."""
    return x.abs() if x.is_complex() else x


def _pairs(x_hat: Tensor, x: Tensor) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(x_hat, Tensor) or not isinstance(x, Tensor):
        raise TypeError(
            f"metrics take torch tensors, got {type(x_hat).__name__} and {type(x).__name__}"
        )
    if x_hat.shape != x.shape:
        raise ValueError(
            f"reconstruction and reference must have the same shape, got {tuple(x_hat.shape)} "
            f"and {tuple(x.shape)}"
        )
    if x.ndim < 3:
        raise ValueError(
            f"metrics take batched images (batch, [D,] H, W), got shape {tuple(x.shape)}"
        )
    a = magnitude(x_hat.detach()).to("cpu", torch.float64).numpy()
    b = magnitude(x.detach()).to("cpu", torch.float64).numpy()
    return a, b


def _slices(a: np.ndarray) -> np.ndarray:
    """(B, ..., H, W) -> (B, S, H, W): every 2D slice of every sample."""
    return a.reshape(a.shape[0], -1, a.shape[-2], a.shape[-1])


def nrmse(x_hat: Tensor, x: Tensor) -> Tensor:
    """Normalised root-mean-square error per sample, ``(B,)`` float64."""
    a, b = _pairs(x_hat, x)
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    return torch.from_numpy(np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1))


def psnr(x_hat: Tensor, x: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB per sample (data range: the reference's peak), ``(B,)``."""
    from skimage.metrics import peak_signal_noise_ratio

    a, b = _pairs(x_hat, x)
    out = [peak_signal_noise_ratio(bi, ai, data_range=float(bi.max())) for ai, bi in zip(a, b)]
    return torch.tensor(out, dtype=torch.float64)


def ssim(x_hat: Tensor, x: Tensor) -> Tensor:
    """Structural similarity per sample (mean over its 2D slices), ``(B,)``."""
    from skimage.metrics import structural_similarity

    a, b = _pairs(x_hat, x)
    out = []
    for ai, bi in zip(_slices(a), _slices(b)):
        rng = float(bi.max())
        out.append(
            np.mean([structural_similarity(bs, as_, data_range=rng) for as_, bs in zip(ai, bi)])
        )
    return torch.tensor(out, dtype=torch.float64)


def ssim_torch(x_hat: Tensor, x: Tensor, window: int = 7) -> Tensor:
    """Differentiable SSIM of magnitude images per sample, ``(B,)``.

    The same definition as scikit-image's default (uniform ``window x window`` filter, sample
    covariance, ``K1 = 0.01``, ``K2 = 0.03``, data range = the reference's peak, mean over the
    valid region), computed slice by slice.
    """
    a = magnitude(x_hat)
    b = magnitude(x)
    batch = a.shape[0]
    a = a.reshape(-1, 1, a.shape[-2], a.shape[-1])
    b = b.reshape(-1, 1, b.shape[-2], b.shape[-1])
    per_slice = a.shape[0] // batch
    rng = b.detach().reshape(batch, -1).amax(dim=1).repeat_interleave(per_slice)
    c1 = (0.01 * rng) ** 2
    c2 = (0.03 * rng) ** 2
    n = window * window
    kernel = torch.full((1, 1, window, window), 1.0 / n, dtype=a.dtype, device=a.device)
    mu_a, mu_b = F.conv2d(a, kernel), F.conv2d(b, kernel)
    cov = n / (n - 1)
    var_a = cov * (F.conv2d(a * a, kernel) - mu_a**2)
    var_b = cov * (F.conv2d(b * b, kernel) - mu_b**2)
    cov_ab = cov * (F.conv2d(a * b, kernel) - mu_a * mu_b)
    c1 = c1.view(-1, 1, 1, 1)
    c2 = c2.view(-1, 1, 1, 1)
    s = ((2 * mu_a * mu_b + c1) * (2 * cov_ab + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    # a 'valid' convolution keeps exactly the pixels scikit-image averages over (it filters the
    # whole image and then crops (window - 1) / 2 pixels at each border)
    return s.reshape(batch, per_slice, -1).mean(dim=(1, 2))


def _l1(x_hat: Tensor, x: Tensor) -> Tensor:
    # complex L1 (GLEAM): mean absolute difference of real and imaginary parts
    d = x_hat - x
    return (torch.view_as_real(d) if d.is_complex() else d).abs().mean()


def _mse(x_hat: Tensor, x: Tensor) -> Tensor:
    d = x_hat - x
    return (torch.view_as_real(d) if d.is_complex() else d).square().mean()


def _nmse(x_hat: Tensor, x: Tensor) -> Tensor:
    dims = tuple(range(1, x.ndim))
    num = (x_hat - x).abs().square().sum(dim=dims)
    den = x.abs().square().sum(dim=dims).clamp_min(torch.finfo(num.dtype).tiny)
    return (num / den).mean()


def _ssim_loss(x_hat: Tensor, x: Tensor) -> Tensor:
    return 1 - ssim_torch(x_hat, x).mean()


LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "l1": _l1,
    "mse": _mse,
    "nmse": _nmse,
    "ssim": _ssim_loss,
}


def get_loss(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    """Return the training loss ``name``: ``"l1"``, ``"mse"``, ``"nmse"`` or ``"ssim"``."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(
            f"unknown loss {name!r}; valid names: {', '.join(sorted(LOSSES))}"
        ) from None
