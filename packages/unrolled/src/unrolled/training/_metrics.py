"""Image-quality metrics and training losses.

Metrics follow the papers (GLEAM Sec. V-C4, fastMRI): computed per slice on magnitude images
(complex images -> ``abs``; real images as they are), with the peak of the reference as data
range, by scikit-image (an independent, widely used implementation):

* ``nrmse = ||x_hat - x|| / ||x||``
* ``psnr = 20 log10(max|x| / rmse)``
* ``ssim``: :func:`skimage.metrics.structural_similarity` with ``data_range = max|x|``
  (7x7 uniform window, the fastMRI setting).

Volumes ``(B, D, H, W)`` are scored slice by slice along ``D`` and averaged per sample.

Losses (differentiable, for training): complex L1 (GLEAM), MSE, NMSE, i-RIM's masked NMSE (Eq. 18,
:class:`MaskedNMSE`) and an SSIM loss on magnitudes written in torch (scikit-image's SSIM is
numpy-only and not differentiable; the torch version is checked against it in the tests).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .._validate import finite_number, nonnegative_int

__all__ = [
    "LOSSES",
    "MaskedNMSE",
    "get_loss",
    "magnitude",
    "nrmse",
    "psnr",
    "ssim",
    "ssim_torch",
]


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


class MaskedNMSE:
    r"""i-RIM's training loss (Putzky & Welling, Eq. 18): NMSE of the masked estimate and target.

    .. math::

        \mathcal{L}(\hat x, x) = \frac{1}{B} \sum_b
        \frac{\|m_b \odot (\hat x_b - x_b)\|^2}{\|m_b \odot x_b\|^2}

    with :math:`m_b` a random mask of sample :math:`b` that keeps ``round(fraction * N)`` of its
    :math:`N` pixels (at least one; a complex pixel counts once, every other element of the
    target, channels included, is one pixel), drawn anew at every call. "A simple way to add
    gradient noise in cases where the number of pixels is very large" (the paper: a fraction of
    0.01). Only the kept pixels receive gradients.

    The masks come from the loss's own ``torch.Generator`` seeded by ``seed`` (:func:`train`
    passes the training seed), so a run draws the same masks whatever else uses torch's global
    generator; :meth:`state_dict` / :meth:`load_state_dict` carry the generator's state, which
    :func:`train` saves with its checkpoints, so a resumed run draws the masks an uninterrupted
    one would have.

    Parameters
    ----------
    fraction:
        Kept fraction of the pixels, in (0, 1] (default 0.01, the paper's).
    seed:
        Seed of the masks' generator (>= 0).
    """

    def __init__(self, fraction: float = 0.01, seed: int = 0):
        self.fraction = finite_number(
            "fraction", fraction, low=0, low_open=True, high=1,
            expected="a number in (0, 1] (the kept fraction of the pixels)",
        )  # fmt: skip
        self.seed = nonnegative_int("seed", seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    def mask(self, x: Tensor) -> Tensor:
        """Draw the next mask for targets like ``x``: ``bool``, ``x``'s shape, one per sample."""
        batch, pixels = x.shape[0], x[0].numel()
        keep = max(1, round(self.fraction * pixels))
        scores = torch.rand(batch, pixels, generator=self.generator)
        kept = scores.topk(keep, dim=1).indices
        mask = torch.zeros(batch, pixels, dtype=torch.bool).scatter_(1, kept, True)
        return mask.reshape(x.shape).to(x.device)

    def __call__(self, x_hat: Tensor, x: Tensor) -> Tensor:
        """Return the loss of a batch under a new mask."""
        if x_hat.shape != x.shape:
            raise ValueError(
                f"masked_nmse compares tensors of one shape, got {tuple(x_hat.shape)} and "
                f"{tuple(x.shape)}"
            )
        m = self.mask(x)
        return _nmse(x_hat * m, x * m)

    def state_dict(self) -> dict[str, Any]:
        """Return the generator's state (and the settings), for a checkpoint."""
        return {
            "fraction": self.fraction,
            "seed": self.seed,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s masks."""
        self.generator.set_state(state["generator"])


#: Losses built with options (:func:`get_loss`'s keywords), by name.
LOSS_FACTORIES: dict[str, Callable[..., Callable[[Tensor, Tensor], Tensor]]] = {
    "masked_nmse": MaskedNMSE,
}


def get_loss(
    name: str, seed: int | None = None, **options: Any
) -> Callable[[Tensor, Tensor], Tensor]:
    """Return the training loss ``name``.

    ``"l1"``, ``"mse"``, ``"nmse"``, ``"ssim"`` (functions, no options), or ``"masked_nmse"``
    (:class:`MaskedNMSE`, a new one per call; options: ``fraction``). ``seed`` seeds the random
    losses (:func:`train` passes the training seed) and is ignored by the others.
    """
    if name in LOSS_FACTORIES:
        return LOSS_FACTORIES[name](seed=0 if seed is None else seed, **options)
    if name in LOSSES and options:
        raise ValueError(
            f"loss {name!r} takes no options, got {', '.join(sorted(options))}; only "
            f"{', '.join(sorted(LOSS_FACTORIES))} do"
        )
    try:
        return LOSSES[name]
    except KeyError:
        valid = ", ".join([*sorted(LOSSES), *sorted(LOSS_FACTORIES)])
        raise ValueError(f"unknown loss {name!r}; valid names: {valid}") from None
