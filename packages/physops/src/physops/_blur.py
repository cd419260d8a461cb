r"""Deblurring: 2D convolution with a fixed (or learnable) kernel, and LUSER's Gaussian kernel.

The forward model is a true 2D convolution of every channel of the image with one kernel
:math:`k` of size :math:`K_h \times K_w`, centred at index
:math:`(c_h, c_w) = (K_h // 2, K_w // 2)`, with the output the same size as the input:

.. math::

    (A x)[i, j] = \sum_{m, n} k[m, n] \, x[i - m + c_h, j - n + c_w],
    \qquad
    (A^H y)[i, j] = \sum_{m, n} \overline{k[m, n]} \, y[i + m - c_h, j + n - c_w]

where out-of-range samples are zero (``boundary="zero"``) or wrap around periodically
(``boundary="circular"``). The adjoint is the correlation with the conjugate kernel under the same
boundary rule, which makes it the exact adjoint of the forward model for either choice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from physops._linop import LinearOperator, operand, register_operand
from physops._validate import finite_number, inexact_tensor, known_name, positive_int

__all__ = ["Blur", "gaussian_kernel"]

_BOUNDARIES = ("circular", "zero")


def gaussian_kernel(
    size: int = 9,
    variance: float = 5.0,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    r"""Normalised isotropic 2D Gaussian kernel (LUSER's deblurring: ``size=9``, ``variance=5``).

    .. math::

        k[m, n] \propto \exp\!\Big(-\frac{(m - \tfrac{K-1}{2})^2 + (n - \tfrac{K-1}{2})^2}
        {2 \sigma^2}\Big), \qquad \sum_{m,n} k[m, n] = 1, \qquad \sigma^2 = \text{variance}

    Parameters
    ----------
    size
        Side length :math:`K` of the square kernel (a positive integer; odd keeps it centred).
    variance
        :math:`\sigma^2 > 0` in pixels squared.
    dtype, device
        Of the returned tensor.

    Returns
    -------
    Tensor
        ``(size, size)`` kernel summing to one.
    """
    size = positive_int(size, "size", "gaussian_kernel")
    variance = finite_number(
        variance,
        "variance",
        "gaussian_kernel",
        low=0,
        low_open=True,
        hint=": it is the squared width sigma**2 in pixels (LUSER uses variance=5)",
    )
    coords = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    profile = torch.exp(-(coords**2) / (2 * variance))
    kernel = profile[:, None] * profile[None, :]
    return (kernel / kernel.sum()).to(dtype)


class Blur(LinearOperator):
    r"""2D convolution :math:`y = k * x`, applied to each channel, with a matched adjoint.

    Parameters
    ----------
    kernel
        ``(K_h, K_w)`` real or complex kernel (for example :func:`gaussian_kernel`). Stored as a
        buffer, or as a parameter when it is an :class:`torch.nn.Parameter` (a learnable blur).
    boundary
        ``"circular"`` (periodic, the default: the convolution theorem holds exactly) or
        ``"zero"`` (the image is zero outside its support). The adjoint uses the same rule.

    ========== =============================== ==========================================
    tensor     shape                           dtype
    ========== =============================== ==========================================
    ``x``      ``(*batch, H, W)``              real or complex; every leading dim (batch,
                                               colour channel, frame) is blurred alike
    ``A x``    ``(*batch, H, W)``              ``x``'s dtype (complex if the kernel is)
    ========== =============================== ==========================================

    With ``boundary="circular"`` the image must be at least as large as the kernel.
    """

    def __init__(self, kernel: Tensor, *, boundary: str = "circular") -> None:
        kernel = inexact_tensor(kernel, "Blur", "kernel", hint=": convert it with kernel.float()")
        if kernel.ndim != 2:
            raise ValueError(
                f"Blur expects a 2D kernel of shape (K_h, K_w), got shape {tuple(kernel.shape)}: "
                "one kernel is applied to every channel; squeeze any batch or channel axes."
            )
        known_name(boundary, "boundary", "Blur", _BOUNDARIES)
        super().__init__()
        self.boundary = boundary
        self.kernel_size = (int(kernel.shape[0]), int(kernel.shape[1]))
        register_operand(self, "kernel", kernel)

    def _padding(self, adjoint: bool) -> tuple[int, int, int, int]:
        (kh, kw) = self.kernel_size
        ch, cw = kh // 2, kw // 2
        if adjoint:  # correlation: y[i + m - c]
            return (cw, kw - 1 - cw, ch, kh - 1 - ch)
        return (kw - 1 - cw, cw, kh - 1 - ch, ch)  # convolution: x[i - m + c]

    def _convolve(self, x: Tensor, adjoint: bool) -> Tensor:
        who = "Blur.adjoint" if adjoint else "Blur"
        x = inexact_tensor(
            x, who, "image", kinds="real floating or complex", hint=": convert it with x.float()"
        )
        if x.ndim < 2:
            raise ValueError(
                f"{who} expects an image of shape (*batch, H, W), got shape {tuple(x.shape)}."
            )
        (kh, kw) = self.kernel_size
        height, width = x.shape[-2:]
        if self.boundary == "circular" and (height < kh or width < kw):
            raise ValueError(
                f"{who} with boundary='circular' needs an image at least as large as the kernel "
                f"{self.kernel_size}, got (H, W) = {(height, width)}: use boundary='zero' or a "
                "smaller kernel."
            )
        kernel = operand(self, "kernel", x)
        kernel = kernel.conj() if adjoint else kernel.flip(0, 1)
        if kernel.is_complex() and not x.is_complex():
            x = x.to(kernel.dtype)
        split = x.is_complex() and not kernel.is_complex()
        if split:  # real kernel: blur the real and imaginary parts as two real channels
            x = torch.view_as_real(x.resolve_conj()).movedim(-1, -3)
        mode = "circular" if self.boundary == "circular" else "constant"
        flat = F.pad(x.reshape(-1, 1, height, width), self._padding(adjoint), mode=mode)
        out = F.conv2d(flat, kernel.resolve_conj()[None, None]).reshape(x.shape)
        if split:
            out = torch.view_as_complex(out.movedim(-3, -1).contiguous())
        return out

    def forward(self, x: Tensor) -> Tensor:
        return self._convolve(x, adjoint=False)

    def adjoint(self, y: Tensor) -> Tensor:
        return self._convolve(y, adjoint=True)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, boundary={self.boundary!r}"
