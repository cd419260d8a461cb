r"""Fourier ptychographic microscopy (FPM) with multiplexed, learnable LED illumination.

The forward model of MEL's first experiment (Kellman et al.; Fig. 1: 89 LEDs, a learned design of
8 multiplexed measurements). An LED array under the sample illuminates it with plane waves from
different angles; LED :math:`\ell` (illumination numerical aperture :math:`\mathrm{NA}_\ell`)
shifts the object's spectrum by :math:`k_\ell = \mathrm{NA}_\ell / \lambda`; the objective's
circular pupil (radius :math:`\mathrm{NA}/\lambda`) cuts it; the camera records the intensity at
low resolution. With the high-resolution complex object :math:`x` (``N x N``, pixel size
:math:`\Delta`) and the camera grid ``n = N / downsample``:

.. math::

    g_\ell = \tfrac{n}{N}\, \mathcal{F}_n^{-1}\big(P \odot C_\ell\, \mathcal{F}_N x\big), \qquad
    I_\ell = |g_\ell|^2, \qquad
    y_i = \sum_\ell w_{i\ell}\, I_\ell ,

where :math:`\mathcal{F}` are centred orthonormal FFTs, :math:`C_\ell` crops the ``n x n``
spectrum window centred at :math:`k_\ell` (rounded to the frequency grid,
:math:`1 / (N\Delta)`), :math:`P` is the pupil, and :math:`w \ge 0` is the multiplexing design
(``num_measurements x num_leds``; one LED per measurement is classic FPM). The factor
:math:`n/N` makes a clear object (:math:`x = 1`) under one bright-field LED image to intensity 1.

The data term and its gradient (used by unrolled gradient descent):

.. math::

    D(x) = \tfrac12 \sum_i \|y_i(x) - y_i^{\text{meas}}\|^2, \qquad
    \nabla D(x) = 2 \sum_\ell A_\ell^H\big(v_\ell \odot g_\ell\big), \quad
    v_\ell = \sum_i w_{i\ell}\,(y_i(x) - y_i^{\text{meas}}),

with :math:`A_\ell` the linear map :math:`x \mapsto g_\ell`. :math:`\nabla D` is PyTorch's
convention for a real function of a complex tensor (twice the conjugate Wirtinger derivative),
so ``gradient(x, y)`` equals ``torch.autograd.grad(data_loss(x, y), x)`` and the step
``x - alpha * gradient(x, y)`` descends. It is built from differentiable operations, so a network
that unrolls it trains the design :math:`w` (and anything else) end to end.
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch
from torch import Tensor, nn

from physops._fft import fftc, ifftc
from physops._precision import in_full_precision
from physops._validate import finite_number, integer, positive_int

__all__ = ["FourierPtychography", "led_grid", "ptychography_object"]


def led_grid(
    num_side: int = 9,
    *,
    spacing: float = 4e-3,
    distance: float = 50e-3,
    max_na: float | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    r"""Illumination NAs of a square LED array centred under the sample, nearest LEDs first.

    LED :math:`(u, v)` at :math:`(u s, v s, d)` relative to the sample gives
    :math:`\mathrm{NA} = (u s, v s) / \sqrt{(u s)^2 + (v s)^2 + d^2}`.

    Parameters
    ----------
    num_side : int
        LEDs per side (odd, so one LED sits on the optical axis).
    spacing, distance : float
        LED pitch and array-to-sample distance (same unit).
    max_na : float, optional
        Keep only LEDs with illumination NA at most this (a disc of LEDs instead of a square).

    Returns
    -------
    Tensor
        ``(L, 2)`` illumination NAs ``(NA_y, NA_x)``, sorted by ``|NA|`` (bright field first).
    """
    num_side = positive_int(num_side, "num_side", "led_grid")
    spacing = finite_number(spacing, "spacing", "led_grid", low=0, low_open=True)
    distance = finite_number(distance, "distance", "led_grid", low=0, low_open=True)
    if max_na is not None:
        max_na = finite_number(max_na, "max_na", "led_grid", low=0)
    half = (num_side - 1) / 2
    coords = (torch.arange(num_side, dtype=torch.float64) - half) * spacing
    v, u = torch.meshgrid(coords, coords, indexing="ij")
    radius = torch.sqrt(u**2 + v**2 + distance**2)
    na = torch.stack([v / radius, u / radius], -1).reshape(-1, 2)
    norm = na.norm(dim=-1)
    order = torch.argsort(norm, stable=True)
    na, norm = na[order], norm[order]
    if max_na is not None:
        na = na[norm <= max_na + 1e-12]
    return na.to(dtype)


def ptychography_object(
    amplitude: Tensor,
    phase: Tensor,
    *,
    max_phase: float = math.pi / 2,
    min_amplitude: float = 0.2,
) -> Tensor:
    r"""Build a complex object from two real images: :math:`x = a\, e^{i \phi}`.

    ``amplitude`` is rescaled to :math:`[a_{\min}, 1]` (``min_amplitude``: thin samples absorb
    little) and ``phase`` to :math:`[0, \phi_{\max}]`, each from its own min and max per sample.

    Parameters
    ----------
    amplitude, phase : Tensor
        Real images ``(*batch, N, N)`` of equal shape (any range).

    Returns
    -------
    Tensor
        complex64 (complex128 for float64 inputs) ``(*batch, N, N)``.
    """
    for name, t in (("amplitude", amplitude), ("phase", phase)):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            got = t.dtype if isinstance(t, Tensor) else type(t).__name__
            raise TypeError(f"ptychography_object expects a real floating {name}, got {got}.")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"ptychography_object: {name} contains NaN or infinite values.")
    if amplitude.shape != phase.shape or amplitude.ndim < 2:
        raise ValueError(
            f"ptychography_object expects amplitude and phase of the same shape (*batch, N, N), "
            f"got {tuple(amplitude.shape)} and {tuple(phase.shape)}."
        )

    max_phase = finite_number(max_phase, "max_phase", "ptychography_object")
    min_amplitude = finite_number(
        min_amplitude, "min_amplitude", "ptychography_object", low=0, high=1
    )

    def unit(t: Tensor) -> Tensor:
        low = t.amin(dim=(-2, -1), keepdim=True)
        high = t.amax(dim=(-2, -1), keepdim=True)
        return (t - low) / (high - low).clamp_min(1e-12)

    a = min_amplitude + (1 - min_amplitude) * unit(amplitude)
    return torch.polar(a, max_phase * unit(phase))


class FourierPtychography(nn.Module):
    r"""Nonlinear FPM forward model with a non-negative, optionally learnable LED design.

    Parameters
    ----------
    image_size : int
        Side ``N`` of the high-resolution object grid.
    illumination_na : Tensor
        ``(L, 2)`` illumination NAs per LED (:func:`led_grid`).
    na : float
        Objective numerical aperture (pupil radius ``na / wavelength``).
    wavelength, pixel_size : float
        Wavelength and high-resolution pixel size (same unit; defaults: green light, 0.25 µm).
    downsample : int
        Camera pixel / object pixel; the measurements are ``n = N / downsample`` pixels a side.
    design : Tensor, optional
        Initial multiplexing weights ``(M, L)`` (non-negative). Default: one measurement per LED
        (the identity, classic FPM).
    learnable : bool
        Make the design an ``nn.Parameter`` :math:`\theta` with :math:`w = |\theta|` (non-negative
        by construction, exact zeros reachable); otherwise a buffer.

    Shapes
    ------
    ==================  =====================  ====================================
    tensor              shape                  dtype
    ==================  =====================  ====================================
    ``x`` (object)      ``(*batch, N, N)``     complex64 / complex128
    ``forward(x)``      ``(*batch, M, n, n)``  real of ``x``'s precision
    ``intensities(x)``  ``(*batch, L, n, n)``  single-LED images :math:`I_\ell`
    ``gradient(x, y)``  ``(*batch, N, N)``     complex, like ``x``
    ==================  =====================  ====================================

    Raises
    ------
    ValueError
        When an LED shifts the camera window outside the object's spectrum (pick a smaller
        ``pixel_size`` or drop outer LEDs), the pupil does not fit the camera grid (lower
        ``downsample``), or the design has the wrong shape or negative entries.
    """

    def __init__(
        self,
        image_size: int,
        illumination_na: Tensor,
        *,
        na: float = 0.25,
        wavelength: float = 0.53e-6,
        pixel_size: float = 0.25e-6,
        downsample: int = 4,
        design: Tensor | None = None,
        learnable: bool = True,
    ) -> None:
        super().__init__()
        who = "FourierPtychography"
        image_size = integer(image_size, "image_size", who, low=4)
        downsample = positive_int(downsample, "downsample", who)
        if image_size % downsample:
            raise ValueError(
                f"{who}: image_size {image_size} is not a multiple of downsample {downsample}."
            )
        if (
            not isinstance(illumination_na, Tensor)
            or illumination_na.ndim != 2
            or (illumination_na.shape[-1] != 2)
        ):
            shape = (
                tuple(illumination_na.shape)
                if isinstance(illumination_na, Tensor)
                else type(illumination_na).__name__
            )
            raise ValueError(
                f"{who} expects illumination_na as an (L, 2) tensor of (NA_y, NA_x), got "
                f"{shape}: build one with physops.led_grid()."
            )
        na, wavelength, pixel_size = (
            finite_number(value, name, who, low=0, low_open=True)
            for name, value in (("na", na), ("wavelength", wavelength), ("pixel_size", pixel_size))
        )
        n_hr, n_lr = image_size, image_size // downsample
        scale = n_hr * pixel_size / wavelength  # NA -> frequency pixels
        shifts = torch.round(illumination_na.detach().double().cpu() * scale).long()  # (L, 2)
        pupil_radius = na * scale
        if 2 * pupil_radius > n_lr:
            raise ValueError(
                f"{who}: the pupil spans {2 * pupil_radius:.1f} frequency pixels but the camera "
                f"grid has only {n_lr}: lower downsample (camera pixels alias the pupil) or the "
                f"pixel_size."
            )
        reach = int(shifts.abs().max()) + n_lr // 2 + (n_lr % 2)
        if reach > n_hr // 2:
            worst = float(illumination_na.abs().max())
            raise ValueError(
                f"{who}: an LED with illumination NA {worst:.3f} shifts the {n_lr}-pixel camera "
                f"window {reach} pixels from the spectrum centre, beyond the object's "
                f"{n_hr // 2}: use a smaller pixel_size (finer object grid) or drop outer LEDs "
                f"(led_grid(max_na=...))."
            )
        self.image_size, self.camera_size, self.downsample = n_hr, n_lr, downsample
        self.na, self.wavelength, self.pixel_size = float(na), float(wavelength), float(pixel_size)
        num_leds = int(illumination_na.shape[0])
        self.num_leds = num_leds
        self.register_buffer("illumination_na", illumination_na.detach().clone())
        # flat indices of each LED's camera window in the N x N spectrum: (L, n*n)
        rows = torch.arange(n_lr) - n_lr // 2
        win = (rows[:, None] + n_hr // 2) * n_hr + (rows[None, :] + n_hr // 2)
        offsets = shifts[:, 0] * n_hr + shifts[:, 1]
        self.register_buffer("window", (win.reshape(1, -1) + offsets[:, None]).contiguous())
        fy = torch.arange(n_lr, dtype=torch.float64) - n_lr // 2
        pupil = (fy[:, None] ** 2 + fy[None, :] ** 2) <= pupil_radius**2
        self.register_buffer("pupil", pupil.to(torch.float32))
        if design is None:
            design = torch.eye(num_leds)
        if not isinstance(design, Tensor) or design.ndim != 2 or design.shape[1] != num_leds:
            shape = tuple(design.shape) if isinstance(design, Tensor) else type(design).__name__
            raise ValueError(
                f"{who} expects design of shape (num_measurements, {num_leds}) (one weight per "
                f"LED), got {shape}."
            )
        if (
            design.is_complex()
            or not bool(torch.isfinite(design).all())
            or bool((design < 0).any())
        ):
            raise ValueError(
                f"{who} expects a finite, real, non-negative design (LED brightness), got values "
                f"in [{float(design.real.min()):.3g}, {float(design.real.max()):.3g}]."
            )
        design = design.detach().clone().float()
        self.learnable = learnable
        if learnable:
            self.design_raw = nn.Parameter(design)
        else:
            self.register_buffer("design_raw", design)

    @property
    def num_measurements(self) -> int:
        return int(cast(Tensor, self.design_raw).shape[0])

    @property
    def design(self) -> Tensor:
        """The non-negative multiplexing weights :math:`w` ``(M, L)``."""
        return cast(Tensor, self.design_raw).abs()

    def brightfield(self) -> Tensor:
        """Boolean ``(L,)``: LEDs whose illumination NA is inside the objective NA."""
        return cast(Tensor, self.illumination_na).norm(dim=-1) <= self.na

    def _check(self, x: Tensor, who: str) -> Tensor:
        if not isinstance(x, Tensor) or not x.is_complex():
            got = x.dtype if isinstance(x, Tensor) else type(x).__name__
            raise TypeError(
                f"{who} expects a complex object (amplitude and phase), got {got}: build one "
                f"with physops.ptychography_object(amplitude, phase) or x.to(torch.complex64)."
            )
        n = self.image_size
        if x.ndim < 2 or tuple(x.shape[-2:]) != (n, n):
            raise ValueError(f"{who} expects x of shape (*batch, {n}, {n}), got {tuple(x.shape)}.")
        return x

    @in_full_precision
    def fields(self, x: Tensor) -> Tensor:
        r"""Low-resolution complex fields :math:`g_\ell` ``(*batch, L, n, n)``."""
        x = self._check(x, "FourierPtychography")
        n, m = self.image_size, self.camera_size
        spectrum = fftc(x).reshape(*x.shape[:-2], n * n)
        window = cast(Tensor, self.window).to(x.device)
        crops = spectrum[..., window.reshape(-1)].reshape(*x.shape[:-2], self.num_leds, m, m)
        pupil = cast(Tensor, self.pupil).to(device=x.device, dtype=x.real.dtype)
        return ifftc(crops * pupil) * (m / n)

    @in_full_precision
    def fields_adjoint(self, v: Tensor) -> Tensor:
        r""":math:`\sum_\ell A_\ell^H v_\ell` for ``v`` of shape ``(*batch, L, n, n)``."""
        n, m = self.image_size, self.camera_size
        pupil = cast(Tensor, self.pupil).to(device=v.device, dtype=v.real.dtype)
        crops = (fftc(v) * pupil * (m / n)).reshape(*v.shape[:-3], -1)
        flat = torch.zeros(*v.shape[:-3], n * n, dtype=v.dtype, device=v.device)
        window = cast(Tensor, self.window).to(v.device)
        flat = flat.index_add(-1, window.reshape(-1), crops)
        return ifftc(flat.reshape(*v.shape[:-3], n, n))

    def intensities(self, x: Tensor) -> Tensor:
        r"""Single-LED low-resolution images :math:`I_\ell = |g_\ell|^2` ``(*batch, L, n, n)``."""
        return self.fields(x).abs().square()

    @in_full_precision
    def forward(self, x: Tensor) -> Tensor:
        r"""Compute the multiplexed measurements :math:`y_i = \sum_\ell w_{i\ell} I_\ell`."""
        intensities = self.intensities(x)
        weights = self.design.to(device=x.device, dtype=intensities.dtype)
        return torch.einsum("ml,...lhw->...mhw", weights, intensities)

    def _check_measurements(self, x: Tensor, y: Tensor, who: str) -> None:
        want = (*x.shape[:-2], self.num_measurements, self.camera_size, self.camera_size)
        if not isinstance(y, Tensor) or tuple(y.shape) != want:
            got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"{who} expects measurements y of shape {want}, got {got}.")

    @in_full_precision
    def data_loss(self, x: Tensor, y: Tensor) -> Tensor:
        r""":math:`D(x) = \frac12 \sum \|y(x) - y^{\text{meas}}\|^2`, one value per sample."""
        pred = self(x)
        self._check_measurements(x, y, "FourierPtychography.data_loss")
        return 0.5 * (pred - y).square().sum(dim=(-3, -2, -1))

    @in_full_precision
    def gradient(self, x: Tensor, y: Tensor) -> Tensor:
        r"""Compute the data-term gradient :math:`\nabla D(x)` (module docstring), differentiable.

        Equals ``torch.autograd.grad(self.data_loss(x, y).sum(), x)``, computed in closed form
        (one spectrum gather and one scatter), so an unrolled network can take the step
        ``x - alpha * gradient(x, y)`` and backpropagate through it.
        """
        g = self.fields(x)
        self._check_measurements(x, y, "FourierPtychography.gradient")
        weights = self.design.to(device=x.device, dtype=g.real.dtype)
        residual = torch.einsum("ml,...lhw->...mhw", weights, g.abs().square()) - y
        v = torch.einsum("ml,...mhw->...lhw", weights, residual)
        return 2 * self.fields_adjoint(v * g)

    def simulate(
        self,
        x: Tensor,
        *,
        noise_std: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Noisy measurements of ``x``: ``forward(x)`` plus Gaussian noise (no gradient)."""
        noise_std = finite_number(noise_std, "noise_std", "FourierPtychography.simulate", low=0)
        with torch.no_grad():
            y = self(x)
            if noise_std > 0:
                noise = torch.randn(y.shape, dtype=y.dtype, generator=generator)
                y = y + noise_std * noise.to(y.device)
        return y

    def extra_repr(self) -> str:
        return (
            f"image_size={self.image_size}, camera_size={self.camera_size}, "
            f"num_leds={self.num_leds}, num_measurements={self.num_measurements}, "
            f"na={self.na}, learnable={self.learnable}"
        )

    def __call__(self, x: Tensor) -> Any:
        return super().__call__(x)
