r"""Parallel-beam CT: the Radon transform with its exact adjoint, and filtered back-projection.

Discretisation (ray-driven, bilinear)
-------------------------------------
Pixel :math:`(i, j)` of an ``N x N`` image sits at :math:`x = j - c`, :math:`y = c - i` with
:math:`c = \lfloor N / 2 \rfloor` (pixel units, :math:`y` pointing up; the centre is the same
index as the zero frequency of :func:`physops.fftc`, and scikit-image's rotation centre). For
angle :math:`\theta` and detector bin :math:`k` (offset :math:`t_k = k - \lfloor D/2 \rfloor`),
the ray is sampled at ``M`` points spaced one pixel apart,

.. math::

    p_{km} = t_k (\cos\theta, \sin\theta) + s_m (-\sin\theta, \cos\theta), \qquad
    s_m = m - \lfloor M/2 \rfloor,

and the line integral is the sum of the bilinearly interpolated image over those points:

.. math::

    (R x)_{\theta, k} = \sum_m \sum_{q} w_q(p_{km}) \, x_q ,

with :math:`w_q` the four bilinear weights (zero outside the image). :math:`R` is a sparse matrix
that is never stored: ``forward`` samples the rays with ``torch.nn.functional.grid_sample``
(bilinear, zero padding, ``align_corners=True``) and sums, and ``adjoint`` applies the transpose of
that very sampling (``grid_sample``'s input-gradient kernel) to the ray values spread over their
samples, so :math:`R^H` is the exact transpose of :math:`R` (``check_adjoint`` holds to rounding).
Both are ``torch.autograd.Function``\ s whose backward is the other one, so gradients are exact,
differentiable again, and save no sampling grids (memory independent of the number of
applications, which matters in unrolled networks). Ray positions are recomputed per call, in
chunks of angles; complex images are sampled as two real channels.

With ``circle=True`` (scikit-image's default) the image is taken to be zero outside its inscribed
circle (:math:`R` includes that restriction, :math:`R = P C`), and ``D = M = N``; with
``circle=False``, ``D = M = ceil(N sqrt 2)`` so every ray crosses the whole square.

Angles follow scikit-image's ``radon``: :math:`\theta = 0` integrates along columns (the
projection of the image onto its ``x`` axis); ``physops.Radon(n, angles)(x)[..., a, :]`` equals
``skimage.transform.radon(x, np.rad2deg(angles))[:, a]``: scikit-image rotates the image with the
same bilinear interpolation about the same centre and sums columns, which is this discretisation
(measured relative difference 5e-16 in float64 on real images, for ``circle`` True and False).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor

from physops._linop import LinearOperator
from physops._validate import integer, known_name, positive_int

__all__ = ["Radon", "fbp", "uniform_angles"]

# elements of the (batch x angles x detectors x samples) gather handled at once
_CHUNK_ELEMENTS = 1 << 23


def uniform_angles(
    num_angles: int = 1000,
    *,
    keep: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    r"""``num_angles`` uniformly spaced angles in :math:`[0, \pi)`, optionally a uniform subset.

    LUSER's CT setting is ``uniform_angles(1000, keep=200)``: every fifth of 1000 angles.

    Parameters
    ----------
    num_angles : int
        Size of the full uniform set :math:`\theta_a = \pi a / n`.
    keep : int, optional
        Keep ``keep`` angles spread uniformly over the full set (``num_angles`` must be a multiple
        of ``keep``, so the subset is itself uniform).

    Returns
    -------
    Tensor
        Radians, shape ``(keep or num_angles,)``.
    """
    num_angles = positive_int(num_angles, "num_angles", "uniform_angles")
    angles = torch.arange(num_angles, dtype=torch.float64) * (math.pi / num_angles)
    if keep is not None:
        keep = positive_int(keep, "keep", "uniform_angles")
        if keep > num_angles or num_angles % keep:
            raise ValueError(
                f"uniform_angles: keep={keep} must divide num_angles={num_angles} (e.g. 200 of "
                f"1000) so that the kept angles are uniformly spaced."
            )
        angles = angles[:: num_angles // keep]
    return angles.to(dtype)


def _check_angles(angles: Tensor | Sequence[float]) -> Tensor:
    if isinstance(angles, Tensor):
        if angles.is_complex() or not angles.is_floating_point():
            raise TypeError(
                f"Radon expects real floating angles (radians), got dtype {angles.dtype}."
            )
        values = angles.detach().to(torch.float64).cpu()
    else:
        try:
            values = torch.as_tensor(list(angles), dtype=torch.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"Radon expects angles as a 1D tensor or sequence of floats (radians), got "
                f"{type(angles).__name__}."
            ) from err
    if values.ndim != 1 or values.numel() == 0:
        raise ValueError(
            f"Radon expects a non-empty 1D set of angles, got shape {tuple(values.shape)}."
        )
    if not bool(torch.isfinite(values).all()):
        raise ValueError("Radon: angles contain NaN or infinite values.")
    low, high = float(values.min()), float(values.max())
    if low < 0.0 or high > math.pi + 1e-6:
        raise ValueError(
            f"Radon expects angles in radians within [0, pi], got values in [{low:.4g}, "
            f"{high:.4g}]: parallel-beam projections repeat after pi (convert degrees with "
            f"torch.deg2rad, and wrap with angles % math.pi)."
        )
    return values


class _Geometry:
    """Ray sample positions, recomputed per chunk of angles (never stored)."""

    def __init__(self, size: int, detectors: int, samples: int, circle: bool) -> None:
        self.size, self.detectors, self.samples, self.circle = size, detectors, samples, circle

    def grid(self, angles: Tensor, dtype: torch.dtype) -> Tensor:
        """Sample positions for ``grid_sample`` (``align_corners=True``): ``(1, A*D, M, 2)``."""
        n, d, m = self.size, self.detectors, self.samples
        device = angles.device
        c = n // 2
        t = torch.arange(d, dtype=dtype, device=device) - d // 2
        s = torch.arange(m, dtype=dtype, device=device) - m // 2
        cos, sin = torch.cos(angles)[:, None, None], torch.sin(angles)[:, None, None]
        x = t[None, :, None] * cos - s[None, None, :] * sin  # (A, D, M)
        y = t[None, :, None] * sin + s[None, None, :] * cos
        col, row = x + c, c - y  # fractional pixel indices
        scale = 2.0 / (n - 1)
        grid = torch.stack([col * scale - 1.0, row * scale - 1.0], -1)
        return grid.reshape(1, -1, m, 2)

    def circle_mask(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        """1 inside the inscribed circle (scikit-image's), 0 outside: ``(N, N)``."""
        n, c = self.size, self.size // 2
        k = torch.arange(n, device=device, dtype=torch.float64) - c
        return ((k[:, None] ** 2 + k[None, :] ** 2) <= (n / 2) ** 2).to(dtype)


def _chunk(channels: int, geometry: _Geometry, num_angles: int) -> int:
    per_angle = max(channels, 1) * geometry.detectors * geometry.samples * 2
    return max(1, min(num_angles, _CHUNK_ELEMENTS // per_angle))


def _to_channels(x: Tensor) -> Tensor:
    """``(B, N, N)`` real or complex -> ``(1, B*k, N, N)`` real (k = 1 or 2 for re/im)."""
    if x.is_complex():
        x = torch.view_as_real(x).movedim(-1, 1)  # (B, 2, N, N)
    return x.reshape(1, -1, *x.shape[-2:])


def _from_channels(x: Tensor, batch: int, complex_out: bool) -> Tensor:
    """Inverse of :func:`_to_channels` for ``(1, B*k, ...)``."""
    if complex_out:
        x = x.reshape(batch, 2, *x.shape[2:]).movedim(1, -1).contiguous()
        return torch.view_as_complex(x)
    return x.reshape(batch, *x.shape[2:])


def _project(x: Tensor, angles: Tensor, geometry: _Geometry) -> Tensor:
    """``(B, N, N) -> (B, A, D)``: bilinear samples along each ray, summed."""
    batch, real = x.shape[0], x.real.dtype if x.is_complex() else x.dtype
    if geometry.circle:
        x = x * geometry.circle_mask(real, x.device)
    image = _to_channels(x)
    out = []
    step = _chunk(image.shape[1], geometry, angles.shape[0])
    for start in range(0, angles.shape[0], step):
        grid = geometry.grid(angles[start : start + step].to(real), real)
        samples = torch.nn.functional.grid_sample(
            image, grid, mode="bilinear", padding_mode="zeros", align_corners=True
        )  # (1, B*k, a*D, M)
        out.append(samples.sum(-1).reshape(1, image.shape[1], -1, geometry.detectors))
    return _from_channels(torch.cat(out, 2), batch, x.is_complex())


def _backproject(y: Tensor, angles: Tensor, geometry: _Geometry) -> Tensor:
    """``(B, A, D) -> (B, N, N)``: the exact transpose of :func:`_project`.

    Spreads every ray value over its samples and applies the transpose of the bilinear sampling
    (``grid_sample``'s own input-gradient kernel), then the circle restriction.
    """
    batch, n = y.shape[0], geometry.size
    real = y.real.dtype if y.is_complex() else y.dtype
    rays = _to_channels(y)  # (1, B*k, A, D)
    image = torch.zeros(1, rays.shape[1], n, n, dtype=real, device=y.device)
    step = _chunk(rays.shape[1], geometry, angles.shape[0])
    for start in range(0, angles.shape[0], step):
        grid = geometry.grid(angles[start : start + step].to(real), real)
        part = rays[:, :, start : start + step].reshape(1, rays.shape[1], -1, 1)
        grad_out = part.expand(-1, -1, -1, geometry.samples).contiguous()
        grad_in, _ = torch.ops.aten.grid_sampler_2d_backward(
            grad_out, image, grid, 0, 0, True, [True, False]
        )  # interpolation 0 = bilinear, padding 0 = zeros, align_corners=True
        image = image + grad_in
    out = _from_channels(image, batch, y.is_complex())
    if geometry.circle:
        out = out * geometry.circle_mask(real, y.device)
    return out


class _RadonFn(torch.autograd.Function):
    """``R x`` (``adjoint=False``) or ``R^H y``; the backward of each is the other."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, angles: Tensor, geometry: _Geometry, adjoint: bool) -> Tensor:
        ctx.geometry = geometry
        ctx.adjoint = adjoint
        ctx.save_for_backward(angles)
        return (_backproject if adjoint else _project)(x, angles, geometry)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None, None]:
        (angles,) = ctx.saved_tensors
        return _RadonFn.apply(grad, angles, ctx.geometry, not ctx.adjoint), None, None, None


def _check_input(x: object, trailing: tuple[int, ...], who: str, what: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{who} expects {what} as a torch.Tensor, got {type(x).__name__}.")
    if not (x.is_floating_point() or x.is_complex()):
        raise TypeError(
            f"{who} expects a floating or complex {what}, got {x.dtype}: convert with x.float()."
        )
    if x.ndim < len(trailing) or tuple(x.shape[-len(trailing) :]) != trailing:
        raise ValueError(
            f"{who} expects {what} of shape (*batch, {', '.join(map(str, trailing))}), got "
            f"{tuple(x.shape)}."
        )
    return x


class Radon(LinearOperator):
    r"""Parallel-beam Radon transform :math:`y = R x` with an exact adjoint (see module docs).

    Parameters
    ----------
    image_size : int
        Side ``N`` of the square image.
    angles : Tensor or sequence of float
        Projection angles in radians, within :math:`[0, \pi]`; LUSER's setting is
        :func:`uniform_angles(1000, keep=200) <uniform_angles>`.
    circle : bool
        Assume the image is zero outside its inscribed circle (``D = N`` detector bins); else
        ``D = ceil(N sqrt 2)`` so rays cover the corners.

    Shapes
    ------
    ===========  ===========================  ==================================================
    tensor       shape                        dtype
    ===========  ===========================  ==================================================
    ``x``        ``(*batch, N, N)``           real (float32/64) or complex: the map is real
    ``y = R x``  ``(*batch, A, D)``           same as ``x``
    ===========  ===========================  ==================================================

    Units: one pixel is the unit length, so a sinogram value is a sum of pixel values along a ray.
    Batched over any leading dimensions, runs on the input's device, differentiable in ``x``.
    """

    def __init__(
        self, image_size: int, angles: Tensor | Sequence[float], *, circle: bool = True
    ) -> None:
        image_size = integer(image_size, "image_size", "Radon", low=2)
        values = _check_angles(angles)
        detectors = image_size if circle else math.ceil(image_size * math.sqrt(2))
        super().__init__(in_shape=(image_size, image_size), out_shape=(values.numel(), detectors))
        self.image_size = image_size
        self.circle = circle
        self.num_detectors = detectors
        self.register_buffer("angles", values)
        self._geometry = _Geometry(image_size, detectors, detectors, circle)

    @property
    def num_angles(self) -> int:
        return int(cast(Tensor, self.angles).shape[0])

    def _angles(self, like: Tensor) -> Tensor:
        angles = cast(Tensor, self.angles)
        if angles.device != like.device:
            raise ValueError(
                f"Radon.angles is on {angles.device} but the input is on {like.device}: move the "
                f"operator with op.to({str(like.device)!r})."
            )
        return angles

    def forward(self, x: Tensor) -> Tensor:
        n = self.image_size
        x = _check_input(x, (n, n), "Radon", "x")
        batch = x.shape[:-2]
        out = _RadonFn.apply(x.reshape(-1, n, n), self._angles(x), self._geometry, False)
        return out.reshape(*batch, self.num_angles, self.num_detectors)

    def adjoint(self, y: Tensor) -> Tensor:
        y = _check_input(y, (self.num_angles, self.num_detectors), "Radon.adjoint", "y")
        batch = y.shape[:-2]
        flat = y.reshape(-1, self.num_angles, self.num_detectors)
        out = _RadonFn.apply(flat, self._angles(y), self._geometry, True)
        return out.reshape(*batch, self.image_size, self.image_size)

    def extra_repr(self) -> str:
        return (
            f"image_size={self.image_size}, num_angles={self.num_angles}, "
            f"num_detectors={self.num_detectors}, circle={self.circle}"
        )


def _ramp(detectors: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, int]:
    """Ram-Lak filter in the Fourier domain, from its band-limited spatial kernel (no DC bias)."""
    size = max(64, 1 << math.ceil(math.log2(2 * detectors)))
    n = torch.cat([torch.arange(1, size // 2 + 1, 2), torch.arange(size // 2 - 1, 0, -2)])
    kernel = torch.zeros(size, dtype=torch.float64)
    kernel[0] = 0.25
    kernel[1::2] = -1.0 / (math.pi * n.double()) ** 2
    response = 2 * torch.fft.fft(kernel).real
    return response.to(dtype=dtype, device=device), size


def fbp(op: Radon, y: Tensor, *, filter: str = "ramp") -> Tensor:
    r"""Reconstruct by filtered back-projection, :math:`x \approx \frac{\pi}{2A} R^H (h * y)`.

    Meant for initialisation.

    Each projection is filtered along the detector axis with the ramp (Ram-Lak) filter, zero
    padded to avoid wrap-around; ``filter="hann"`` multiplies it by a Hann window (less noise,
    less resolution). The back-projection is the operator's exact adjoint, so ``fbp`` is
    differentiable in ``y`` and runs batched on any device. Assumes angles spread uniformly over
    :math:`[0, \pi)`.

    Parameters
    ----------
    op : Radon
        The operator that produced ``y``.
    y : Tensor
        Sinograms ``(*batch, A, D)``.
    filter : {"ramp", "hann"}

    Returns
    -------
    Tensor
        Images ``(*batch, N, N)``.
    """
    if not isinstance(op, Radon):
        raise TypeError(f"fbp expects a physops.Radon operator, got {type(op).__name__}.")
    known_name(filter, "filter", "fbp", ("ramp", "hann"))
    y = _check_input(y, (op.num_angles, op.num_detectors), "fbp", "y")
    real = y.real.dtype if y.is_complex() else y.dtype
    response, size = _ramp(op.num_detectors, real, y.device)
    if filter == "hann":
        freq = torch.fft.fftfreq(size, dtype=real, device=y.device)
        response = response * (0.5 + 0.5 * torch.cos(2 * math.pi * freq))
    padded = torch.nn.functional.pad(y, (0, size - op.num_detectors))
    filtered = torch.fft.ifft(torch.fft.fft(padded, dim=-1) * response, dim=-1)
    filtered = filtered[..., : op.num_detectors]
    if not y.is_complex():
        filtered = filtered.real
    return op.adjoint(filtered) * (math.pi / (2 * op.num_angles))
