r"""Centred, orthonormal Fourier transforms over the last 2 or 3 dimensions (fastMRI's ``fft2c``).

.. math::

    \mathrm{fftc}(x) = \mathrm{fftshift}(\mathcal{F}(\mathrm{ifftshift}(x))), \qquad
    \mathrm{ifftc}(k) = \mathrm{fftshift}(\mathcal{F}^{-1}(\mathrm{ifftshift}(k)))

with the unitary DFT :math:`\mathcal{F}` (``norm="ortho"``) over the last ``ndim`` dimensions, so
the zero frequency sits at index ``n // 2`` of each transformed dimension, ``ifftc`` is both the
inverse and the adjoint of ``fftc`` for every size (odd ones included), and
:math:`\|\mathrm{fftc}(x)\| = \|x\|`. These are the semantics of fastMRI's
``fft2c``/``ifft2c``, on native complex tensors instead of the ``(..., 2)`` layout (see
:func:`physops.last_dim_to_complex` for that layout).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from physops._validate import integer, tensor

__all__ = ["fftc", "ifftc"]


def centring(x: Tensor, ndim: int) -> tuple[Tensor, Tensor] | None:
    r"""Checkerboards that replace the shifts when every transformed size is even.

    For even sizes :math:`n_d`, with :math:`c[i] = (-1)^{\sum_d i_d}` and
    :math:`s = (-1)^{\sum_d n_d / 2}`,

    .. math::

        \mathrm{fftc}(x) = s\,c \odot \mathcal{F}(c \odot x), \qquad
        \mathrm{ifftc}(k) = s\,c \odot \mathcal{F}^{-1}(c \odot k)

    exactly (a shift by half the size is a modulation by :math:`\pm 1` in the other domain). Two
    multiplications by a real ``(*sizes)`` tensor cost less than two rolls of the whole tensor, and
    operators fold them into their masks and maps. Returns ``(c, s * c)`` in ``x``'s real
    precision, or ``None`` when a size is odd (then the shifts are needed).
    """
    sizes = tuple(int(n) for n in x.shape[-ndim:])
    if any(n % 2 for n in sizes):
        return None
    real = x.dtype.to_real() if (x.is_complex() or x.is_floating_point()) else torch.float32
    return _boards(sizes, real, x.device)


@functools.lru_cache(maxsize=64)
def _boards(
    sizes: tuple[int, ...], real: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor]:
    # Cached: an operator applied every CG iteration would otherwise launch a few tiny kernels per
    # call. Built outside inference mode so that autograd may save them later.
    with torch.inference_mode(False):
        board = torch.ones((), dtype=real, device=device)
        for axis, n in enumerate(sizes):
            sign = 1 - 2 * (torch.arange(n, device=device) % 2).to(real)
            board = board.unsqueeze(-1) * sign.reshape((1,) * axis + (n,))
        flip = -1.0 if sum(n // 2 for n in sizes) % 2 else 1.0
        return board, board * flip


def _dims(x: object, ndim: int, name: str) -> tuple[int, ...]:
    x = tensor(x, name)
    integer(ndim, "ndim", name, low=2, high=3, template=_NDIM)
    if x.ndim < ndim:
        raise ValueError(
            f"{name} with ndim={ndim} needs a tensor with at least {ndim} dimensions, got shape "
            f"{tuple(x.shape)}."
        )
    if not (x.is_complex() or x.is_floating_point()):
        raise TypeError(
            f"{name} expects a complex (or real floating) tensor, got dtype {x.dtype}: convert "
            "it with x.to(torch.complex64)."
        )
    return tuple(range(-ndim, 0))


_NDIM = "{who} transforms the last 2 or 3 dimensions: {name} must be 2 or 3, got {value!r}."


def _centred(x: Tensor, ndim: int, name: str, inverse: bool) -> Tensor:
    dims = _dims(x, ndim, name)
    transform = torch.fft.ifftn if inverse else torch.fft.fftn
    boards = centring(x, ndim)
    if boards is not None:
        return boards[1] * transform(boards[0] * x, dim=dims, norm="ortho")
    x = torch.fft.ifftshift(x, dim=dims)
    x = transform(x, dim=dims, norm="ortho")
    return torch.fft.fftshift(x, dim=dims)


def fftc(x: Tensor, ndim: int = 2) -> Tensor:
    """Centred orthonormal FFT over the last ``ndim`` dimensions.

    Parameters
    ----------
    x
        Complex tensor ``(..., *spatial)``; a real floating tensor is treated as complex with
        zero imaginary part.
    ndim
        How many trailing dimensions to transform: 2 (``(H, W)``) or 3 (``(D, H, W)``).

    Returns
    -------
    Tensor
        k-space of the same shape, complex of the input's precision.
    """
    return _centred(x, ndim, "fftc", inverse=False)


def ifftc(k: Tensor, ndim: int = 2) -> Tensor:
    """Centred orthonormal inverse FFT over the last ``ndim`` dimensions.

    The inverse and the adjoint of :func:`fftc`.

    Parameters
    ----------
    k
        Complex k-space ``(..., *spatial)`` with the zero frequency at index ``n // 2``.
    ndim
        How many trailing dimensions to transform: 2 or 3.

    Returns
    -------
    Tensor
        The image, complex, same shape and precision.
    """
    return _centred(k, ndim, "ifftc", inverse=True)
