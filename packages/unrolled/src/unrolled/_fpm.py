r"""Fourier ptychography with a learned LED illumination design (MEL Sec. 5.1, Fig. 1).

An LED array microscope takes :math:`M` images, each lit by a non-negative mix of :math:`L`
LEDs; the design :math:`w \in \mathbb{R}_{\ge 0}^{M \times L}` is learned together with the
reconstruction network (Kellman et al.; MEL reproduces it with 8 learned measurements of 89 LEDs).
The forward model is :class:`physops.FourierPtychography`,

.. math::

    y_i = \sum_\ell w_{i\ell}\, I_\ell(x) + n_i, \qquad I_\ell(x) = |g_\ell(x)|^2 ,

and the network unrolls gradient descent on the data term
:math:`D(x) = \tfrac12 \sum_i \|y_i(x) - y_i\|^2` (``physics.gradient``) normalised by the
design's curvature scale :math:`s(w)^2` (:func:`design_scale`), optionally with a small learned
prior after each step:

.. math::

    x_{k+1} = \mathrm{prox}_k\Big(x_k - \alpha_k\, \frac{\nabla D(x_k; y, w)}{s(w)^2}\Big),
    \qquad k = 0 \dots N-1 ,

with learnable :math:`\alpha_k > 0` and the complex object as two real channels. Without the
normalisation the curvature of :math:`D` follows the design (it grows as the square of the
bright-field light), so a learned design would push fixed step sizes past stability; with it the
local :math:`\operatorname{Lip}(\nabla D / s^2)` stayed within 0.066-0.098 over 30 Adam steps
(lr 1e-3) of design learning, where without it the estimated Lipschitz constant doubled and the
reverse pass diverged after 13 steps (measured, the task's defaults, 4 measurements).

Learning the design (MEL Fig. 1)
--------------------------------
The training samples are high-resolution objects :math:`x^\star`. Intensities add incoherently,
so the measurements of any design are the design applied to the single-LED images
:math:`I_\ell(x^\star)`: the ``"ptychography"`` task gives those images (``physics`` is a
single-LED acquisition, identity design), and :class:`FPMNet` multiplexes them with its *current*
design inside the training graph, :math:`y = w\, I(x^\star) + n`. The design therefore gets
gradients through the measurements, through :math:`s(w)` and through every
:math:`\nabla D(\,\cdot\,; y, w)` of the network, and all three strategies (``"backprop"``,
``"checkpoint"``, ``"reversible"``) train it. With ``noise_std > 0`` a brighter design means a
higher SNR, so the optimiser may raise the design's overall brightness (real LEDs have a
maximum; clip the design between steps if that matters).

Reversible training (MEL Alg. 1-2)
----------------------------------
Each gradient step is inverted by backward Euler, :math:`x = z + \alpha \nabla \tilde D(x)`
(:math:`\tilde D = D / s^2`), with :func:`fixedpoint.invert_step`; the iteration converges when
:math:`\alpha \operatorname{Lip}(\nabla \tilde D) < 1` (MEL Eq. 7). For the linear MRI operators
the Lipschitz constant is :math:`\lambda_{\max}(A^H A)`, certified by ``physops.power_iteration``.
The FPM data term is *not* quadratic: its Hessian changes with :math:`x`, the design and the
residual, and no global bound is available. What :meth:`FPMNet.certify` computes is therefore an
**estimate**: the largest Hessian norm found by power iteration (Hessian-vector products by
autograd, :func:`gradient_lipschitz`) at every gradient step's input along the unrolled
trajectory of a training batch, times a safety margin (default 2). The step sizes are then
capped at ``0.9 / L``. The estimate can be exceeded (by other samples, or after the design has
changed much), so reversible training of this model should keep MEL's safety nets on: hybrid
checkpoints (``checkpoint_every``; MEL: every 10 unrolls), drift checks (``check_drift``, with
``on_drift="recompute"``), and ``certify(..., strict=False)`` again from time to time (for
example from :func:`unrolled.train`'s ``callback``): with a learned prior the iterates, and the
curvature with them, can change fast (measured: the estimate tripled in five Adam steps at
lr 1e-2 with a coupling prior on 16 px objects). MEL's own inversion was 4 plain fixed-point
iterations (``inverse_method="banach", inverse_max_iter=4, inverse_on_failure="ignore"``); the
default here iterates (Anderson) to a tolerance instead, so gradients match backprop to the
solver's accuracy (measured for MEL's setting on 20 unrolls of 16 px objects: relative error of
the design's gradient 0.10 without checkpoints and 0.008 with one every 10 unrolls, against
3e-4 and 2e-5 with 10 iterations).

Step sizes are learned in units of :math:`1 / L_{\mathrm{ref}}`, where :math:`L_{\mathrm{ref}}`
is :math:`\operatorname{Lip}(\nabla \tilde D)` at a clear object (:math:`x = 1`) lit by the
bright-field LEDs, a property of the geometry computed once at construction (0.245 for the
task's defaults, and for every geometry we tried). Along the unrolled trajectories of the task's
objects the local :math:`\operatorname{Lip}(\nabla \tilde D)` was 0.04-0.32 (16-64 px objects, 9
or 25 LEDs, 1-8 random measurements; measured), so the default ``step=0.5`` gives
:math:`\alpha \operatorname{Lip} \approx 0.08` to 0.65: stable gradient descent, and under
:meth:`FPMNet.certify`'s margin of 2 a valid reversible step for all but the most curved case.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fixedpoint
import physops
from revlayers import InvertibleModule

from ._base import Stage, StageContext, UnrolledModel
from ._batch import Batch
from ._layers import PriorLayer, positive
from ._modl import _PlainStage
from ._nets import ImageAdapter
from ._priors import INVERTIBLE_PRIORS, PRIORS, build_prior
from ._strategy import Strategy
from ._tasks import TaskDataset, _check_int, _check_number, _check_split, _dtypes, _generator

__all__ = [
    "DARKFIELD_FLOOR",
    "FPMGradientStep",
    "FPMNet",
    "PtychographyDataset",
    "design_scale",
    "gradient_lipschitz",
    "ptychography",
]

OnFailure = Literal["warn", "raise", "ignore"]


def _inverse_softplus(value: float) -> float:
    return value + math.log(-math.expm1(-value))


def _tensor(module: nn.Module, name: str) -> Tensor:
    """A module's buffer or parameter, typed as a tensor."""
    return cast(Tensor, getattr(module, name))


def _norms(t: Tensor) -> Tensor:
    return torch.linalg.vector_norm(t.reshape(t.shape[0], -1), dim=1)


def gradient_lipschitz(
    gradient: Callable[[Tensor], Tensor],
    x: Tensor,
    iterations: int = 20,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Estimate :math:`\operatorname{Lip}(\nabla D)` near ``x``, one value per sample.

    Power iteration on the Jacobian of ``gradient`` at ``x``: the Jacobian of a gradient is the
    (symmetric) Hessian of :math:`D`, so :math:`Hv` is one vector-Jacobian product,
    ``autograd.grad(<gradient(x), v>, x)``, and the iteration converges to the eigenvalue of
    largest magnitude, :math:`\|H(x)\|_2`, the local Lipschitz constant of :math:`\nabla D`.
    Complex ``x`` is treated as real and imaginary parts (PyTorch's convention, which
    ``physops.FourierPtychography.gradient`` follows).

    This is a *local estimate*, not a bound: the Hessian of a non-quadratic :math:`D` changes
    with :math:`x`, and power iteration approaches the top eigenvalue from below. Multiply it by
    a safety margin before using it as :math:`L` in :math:`\alpha L < 1`.

    Parameters
    ----------
    gradient:
        ``x -> grad D(x)`` for a real function :math:`D` that sums over the batch (each sample's
        gradient depends on that sample only); differentiable.
    x:
        The point, ``(batch, *shape)``, real or complex.
    iterations:
        Power iterations (each one vector-Jacobian product through a graph built once).
    generator:
        For the random start vector (the global RNG is left alone; default seed 0).

    Returns
    -------
    Tensor
        ``(batch,)`` float64 estimates of :math:`\|H(x_b)\|_2`.
    """
    if not isinstance(x, Tensor) or not (x.is_floating_point() or x.is_complex()):
        raise TypeError(f"gradient_lipschitz needs x as a real or complex tensor, got {x!r}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be a positive integer, got {iterations!r}")
    gen = torch.Generator().manual_seed(0) if generator is None else generator
    view = (-1,) + (1,) * (x.ndim - 1)
    v = torch.randn(x.shape, dtype=x.dtype, generator=gen).to(x.device)
    estimate = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    with torch.enable_grad():
        xr = x.detach().clone().requires_grad_()
        g = gradient(xr)
        for i in range(iterations):
            v = v / _norms(v).clamp_min(torch.finfo(x.real.dtype).tiny).view(view)
            inner = (g.conj() * v).real.sum() if g.is_complex() else (g * v).sum()
            (hv,) = torch.autograd.grad(inner, xr, retain_graph=i < iterations - 1)
            estimate = _norms(hv).double()
            v = hv.detach()
    return estimate.detach()


#: Weight of all light (bright and dark field) in :func:`design_scale`.
DARKFIELD_FLOOR = 0.02


def design_scale(design: Tensor, brightfield: Tensor) -> Tensor:
    r"""The curvature scale of the FPM data term under a design, :math:`s(w)^2`.

    .. math::

        s(w)^2 = \sum_i \Big(\sum_{\ell \in BF} w_{i\ell}\Big)^2
                 + \kappa \sum_i \Big(\sum_\ell w_{i\ell}\Big)^2, \qquad \kappa = 0.02 .

    At a clear object only bright-field LEDs light the camera and the data term's Hessian norm
    is proportional to the first sum (measured: :math:`s(w)^2 / 4` for the task's geometry,
    :math:`\kappa = 0`); the :math:`\kappa` term keeps designs with little bright-field light at
    a finite scale (the task's dark-field images are 0.7-26% as bright as its bright-field ones).
    Dividing :math:`D` by :math:`s(w)^2` makes the curvature nearly design-independent: measured
    at the task's objects, :math:`\operatorname{Lip}(\nabla D) / s(w)^2` stayed within
    0.043-0.131 over random (4 and 8 measurements), bright-field-only, dark-field-only, one-LED
    and identity designs, where :math:`\operatorname{Lip}(\nabla D) / \|w\|_F^2` ranged over
    0.017-0.39.

    Parameters
    ----------
    design:
        ``(M, L)`` non-negative weights.
    brightfield:
        ``(L,)`` boolean, the LEDs inside the objective NA.
    """
    bright = design[:, brightfield.to(design.device)].sum(dim=1)
    total = design.sum(dim=1)
    return (bright.square() + DARKFIELD_FLOOR * total.square()).sum()


class FPMGradientStep(InvertibleModule):
    r"""The gradient step :math:`z = x - \alpha \nabla D(x; y, w) / s(w)^2` on the FPM data term.

    Called as ``step(state, y, physics)`` with ``physics`` a
    :class:`physops.FourierPtychography` (whose design may be learnable: its gradient flows
    through ``physics.gradient`` and :func:`design_scale`). :math:`\alpha =
    \mathrm{softplus}(\theta) / L_{\mathrm{ref}}`, capped at ``max_fraction / L`` once
    :meth:`FPMNet.certify` has set the estimate ``L``. The inverse, :math:`x = z + \alpha \nabla
    D(x) / s^2`, is solved by :func:`fixedpoint.invert_step` (MEL Alg. 2); it converges when
    :math:`\alpha \operatorname{Lip}(\nabla D / s^2) < 1`, which for this nonlinear data term is
    only estimated (module docstring).

    Parameters
    ----------
    adapter:
        Complex images as 2 channels.
    step:
        Initial step in units of :math:`1 / L_{\mathrm{ref}}`.
    reference:
        :math:`L_{\mathrm{ref}} > 0`.
    learnable:
        Train the step.
    inverse_method, inverse_tol, inverse_max_iter, inverse_on_failure:
        :func:`fixedpoint.invert_step` settings (``inverse_tol=None``: relative residual 1e-5
        in single precision, where the FPM gradient's own rounding stalls Anderson near 1e-6,
        and 1e-12 in double). MEL: ``"banach"``, 4 iterations, no tolerance (``"ignore"``).
    """

    reference: Tensor
    lipschitz: Tensor

    def __init__(
        self,
        adapter: ImageAdapter,
        step: float = 0.5,
        reference: float = 1.0,
        learnable: bool = True,
        inverse_method: str = "anderson",
        inverse_tol: float | None = None,
        inverse_max_iter: int = 100,
        inverse_on_failure: OnFailure = "warn",
    ):
        super().__init__()
        if not (isinstance(step, (int, float)) and step > 0 and math.isfinite(step)):
            raise ValueError(f"step must be a positive number (units of 1 / L_ref), got {step!r}")
        if not (isinstance(reference, (int, float)) and reference > 0 and math.isfinite(reference)):
            raise ValueError(f"reference (L_ref) must be a positive number, got {reference!r}")
        if inverse_on_failure not in ("warn", "raise", "ignore"):
            raise ValueError(
                "inverse_on_failure must be 'warn', 'raise' or 'ignore', got "
                f"{inverse_on_failure!r}"
            )
        self.adapter = adapter
        self.raw_step = nn.Parameter(
            torch.tensor(_inverse_softplus(float(step))), requires_grad=learnable
        )
        self.register_buffer("reference", torch.tensor(float(reference)))
        #: The estimated Lip(grad D) (set by FPMNet.certify; NaN: no cap).
        self.register_buffer("lipschitz", torch.tensor(float("nan")), persistent=False)
        self.max_fraction = 0.9
        self.inverse_method = inverse_method
        self.inverse_tol = inverse_tol
        self.inverse_max_iter = inverse_max_iter
        self.inverse_on_failure: OnFailure = inverse_on_failure

    @property
    def relative_step(self) -> Tensor:
        """The learned step in units of :math:`1 / L_{\\mathrm{ref}}` (before the cap)."""
        return positive(self.raw_step)

    @property
    def step(self) -> Tensor:
        """:math:`\\alpha` in use: ``relative_step / L_ref``, capped at ``max_fraction / L``."""
        alpha = self.relative_step / self.reference.to(self.raw_step.dtype)
        if bool(torch.isfinite(self.lipschitz)):
            alpha = torch.minimum(alpha, self.max_fraction / self.lipschitz.to(alpha.dtype))
        return alpha

    def _alpha(self, like: Tensor) -> Tensor:
        return self.step.to(like.real.dtype)

    def data_gradient(self, x: Tensor, y: Tensor, physics: nn.Module) -> Tensor:
        r"""The gradient of the normalised data term :math:`D(x) / s(w)^2` (:func:`design_scale`).

        :math:`s(w)^2` tracks the curvature the design gives the data term, so the step sizes
        and their Lipschitz estimate do not drift as the learned design changes.
        """
        fpm = cast(physops.FourierPtychography, physics)
        scale = design_scale(fpm.design, fpm.brightfield())
        return fpm.gradient(x, y) / scale.to(x.real.dtype)

    def forward(self, state: Tensor, *context: Any) -> Tensor:
        """One step on the state ``(B, 2, N, N)``; ``context`` = ``(y, physics)``."""
        y, physics = context
        image = self.adapter.from_net(state)
        return self.adapter.to_net(
            image - self._alpha(image) * self.data_gradient(image, y, physics)
        )

    def inverse(self, state: Tensor, *context: Any) -> Tensor:
        """The input whose step gives ``state``; ``context`` = ``(y, physics)``."""
        y, physics = context
        z = self.adapter.from_net(state).detach()
        alpha = self._alpha(z).detach()
        y = y.detach()
        tol = self.inverse_tol
        if tol is None:
            tol = 1e-12 if z.real.dtype == torch.float64 else 1e-5
        with torch.no_grad():
            # no lipschitz= argument: the estimate is not a bound (module docstring)
            x = fixedpoint.invert_step(
                lambda v: alpha * self.data_gradient(v, y, physics),
                z,
                method=self.inverse_method,
                tol=tol,
                max_iter=self.inverse_max_iter,
                on_failure=self.inverse_on_failure,
            )
        return self.adapter.to_net(cast(Tensor, x))


def _normalised_gradient(
    step: FPMGradientStep, context: StageContext
) -> Callable[[Tensor], Tensor]:
    return lambda v: step.data_gradient(v, context.y, context.physics)


class _FPMStage(_PlainStage):
    """One unroll: the gradient step, then the prior's layers (if any); invertible when they all
    are."""

    def invertible_layers(self) -> list[InvertibleModule] | None:
        if all(isinstance(layer, InvertibleModule) for layer in self.layers):
            return list(self.layers)  # type: ignore[arg-type]
        return None


class FPMNet(UnrolledModel):
    r"""Unrolled gradient network for Fourier ptychography with a learned LED design (MEL).

    ``x_hat = model(y, physics=None, x0=None)``:

    * ``physics=None`` (or the model's own :attr:`illumination`): ``y`` ``(B, M, n, n)`` are
      measurements taken with the model's design (a real microscope programmed with it);
    * ``physics`` a single-LED acquisition (a :class:`physops.FourierPtychography` with the
      same geometry and the identity design, as the ``"ptychography"`` task gives): ``y``
      ``(B, L, n, n)`` are single-LED images, and the model forms its measurements
      :math:`w\, y + n` with its current design inside the graph (training the design, MEL
      Fig. 1), plus Gaussian noise of standard deviation ``noise_std``.

    The reconstruction starts from the amplitude estimate :math:`x_0 = c\, u`, :math:`u =
    \mathrm{up}\big(\sqrt{\bar y}\big)` (the mean measurement, upsampled bilinearly to
    ``N x N``, zero phase) with the brightness :math:`c^2 = \langle A(u), y\rangle / \|A(u)\|^2`
    that fits the measurements best (:math:`A(c u) = c^2 A(u)`), unless ``x0`` is given, and
    runs ``iterations`` stages of ``x <- prox_k(x - alpha_k grad D(x) / s(w)^2)`` (module
    docstring).

    Parameters
    ----------
    image_size, illumination_na, na, wavelength, pixel_size, downsample:
        The geometry, as :class:`physops.FourierPtychography` takes it (:meth:`from_physics`
        copies it from an operator).
    num_measurements:
        :math:`M`, the number of multiplexed images (MEL: 8 of 89 LEDs); ignored when
        ``design`` is given.
    iterations:
        Unrolled gradient steps :math:`N`.
    design:
        Initial design ``(M, L)`` (non-negative). Default: uniform random weights (global RNG),
        each row scaled to sum to 1.
    learn_design:
        Learn the design (an ``nn.Parameter`` of :attr:`illumination`) or keep it fixed.
    step, learn_step:
        Initial step size in units of :math:`1 / L_{\mathrm{ref}}` (module docstring) and
        whether it is trained (one per unroll).
    prior:
        ``None`` (pure gradient steps) or a prior of :mod:`unrolled._priors` after every step:
        the invertible ``"coupling"`` / ``"iresnet"`` (valid for ``"reversible"``) or
        ``"resnet"``, ``"resblocks"``, ``"dncnn"``.
    features, layers, couplings:
        Size of the prior.
    noise_std:
        Standard deviation of the Gaussian noise added to simulated measurements (global RNG).
    inverse_method, inverse_tol, inverse_max_iter, inverse_on_failure:
        The backward-Euler inversion of each step for ``"reversible"`` (:class:`FPMGradientStep`).

    Examples
    --------
    >>> data = unrolled.make_dataset("ptychography", "train")          # doctest: +SKIP
    >>> model = unrolled.FPMNet.from_physics(data.acquisition, num_measurements=4)  # doctest: +SKIP
    >>> batch = data.batch([0, 1])                                     # doctest: +SKIP
    >>> x_hat = model(batch.y, batch.physics)                          # doctest: +SKIP
    """

    def __init__(
        self,
        image_size: int,
        illumination_na: Tensor,
        *,
        num_measurements: int = 8,
        iterations: int = 10,
        na: float = 0.25,
        wavelength: float = 0.53e-6,
        pixel_size: float = 0.25e-6,
        downsample: int = 4,
        design: Tensor | None = None,
        learn_design: bool = True,
        step: float = 0.5,
        learn_step: bool = True,
        prior: str | None = None,
        features: int = 8,
        layers: int = 3,
        couplings: int = 2,
        noise_std: float = 0.0,
        inverse_method: str = "anderson",
        inverse_tol: float | None = None,
        inverse_max_iter: int = 100,
        inverse_on_failure: OnFailure = "warn",
    ):
        super().__init__(ImageAdapter(complex=True, dims=2))
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"iterations must be a positive integer, got {iterations!r}")
        if prior is not None and prior not in PRIORS:
            raise ValueError(
                f"unknown prior {prior!r}; valid priors: None (gradient steps only), "
                f"{', '.join(PRIORS)}"
            )
        self.noise_std = _check_number("noise_std", noise_std, 0.0)
        if design is None:
            num_leds = int(illumination_na.shape[0]) if isinstance(illumination_na, Tensor) else 0
            m = _check_int("num_measurements", num_measurements, 1)
            design = torch.rand(m, max(num_leds, 1))
            design = design / design.sum(dim=1, keepdim=True)
        #: The acquisition with the (learned) design: y = design @ single-LED intensities.
        self.illumination = physops.FourierPtychography(
            image_size,
            illumination_na,
            na=na,
            wavelength=wavelength,
            pixel_size=pixel_size,
            downsample=downsample,
            design=design,
            learnable=learn_design,
        )
        self.learn_design = bool(learn_design)
        self.iterations = iterations
        self.prior_name = prior
        reference = self._clear_object_lipschitz()
        self.register_buffer("lipschitz_reference", torch.tensor(reference))

        def stage() -> Stage:
            grad = FPMGradientStep(
                self.adapter,
                step,
                reference,
                learn_step,
                inverse_method,
                inverse_tol,
                inverse_max_iter,
                inverse_on_failure,
            )
            mods: list[nn.Module] = [grad]
            if prior is not None:
                net = build_prior(prior, self.adapter.channels, features, layers, 2, couplings)
                mods += list(net) if isinstance(net, list) else [PriorLayer(net)]
            return _FPMStage(mods)

        self.stages = nn.ModuleList([stage() for _ in range(iterations)])

    @classmethod
    def from_physics(cls, physics: physops.FourierPtychography, **kwargs: Any) -> FPMNet:
        """A model with the geometry of ``physics`` (its design is not copied: pass ``design=``)."""
        if not isinstance(physics, physops.FourierPtychography):
            raise TypeError(
                f"FPMNet.from_physics needs a physops.FourierPtychography, got "
                f"{type(physics).__name__}"
            )
        geometry = {
            "na": physics.na,
            "wavelength": physics.wavelength,
            "pixel_size": physics.pixel_size,
            "downsample": physics.downsample,
        }
        return cls(
            physics.image_size, _tensor(physics, "illumination_na"), **{**geometry, **kwargs}
        )

    # ------------------------------------------------------------------ the design
    @property
    def design(self) -> Tensor:
        """The non-negative LED design :math:`w` ``(M, L)`` in use."""
        return self.illumination.design

    def gradient_steps(self) -> list[FPMGradientStep]:
        """The gradient-step layers, one per unroll."""
        return [m for s in self.stages for m in s.modules() if isinstance(m, FPMGradientStep)]

    @torch.no_grad()
    def _clear_object_lipschitz(self) -> float:
        """:math:`L_{ref}`: Lip of the normalised data term at a clear object lit by every
        bright-field LED (a property of the geometry only, not of the design)."""
        own = self.illumination
        bright = own.brightfield()
        if not bool(bright.any()):
            raise ValueError(
                "FPMNet needs at least one bright-field LED (illumination NA <= na): no LED of "
                "illumination_na lies inside the objective NA"
            )
        lit = physops.FourierPtychography(
            own.image_size,
            _tensor(own, "illumination_na"),
            na=own.na,
            wavelength=own.wavelength,
            pixel_size=own.pixel_size,
            downsample=own.downsample,
            design=bright.float()[None],
            learnable=False,
        )
        n = own.image_size
        clear = torch.ones(1, n, n, dtype=torch.complex128)
        y = lit(clear)
        scale = float(design_scale(lit.design, bright))
        lip = gradient_lipschitz(lambda v: lit.gradient(v, y) / scale, clear, iterations=30)
        return float(lip[0])

    # ------------------------------------------------------------------ measurements
    def _check_geometry(self, physics: physops.FourierPtychography) -> None:
        own = self.illumination
        same = (
            physics.image_size == own.image_size
            and physics.camera_size == own.camera_size
            and math.isclose(physics.na, own.na)
            and math.isclose(physics.wavelength, own.wavelength)
            and math.isclose(physics.pixel_size, own.pixel_size)
            and physics.num_leds == own.num_leds
            and torch.allclose(  # the NAs may have been cast to single precision
                _tensor(physics, "illumination_na").detach().double().cpu(),
                _tensor(own, "illumination_na").detach().double().cpu(),
                rtol=1e-6,
                atol=1e-7,
            )
        )
        if not same:
            raise ValueError(
                "FPMNet: physics has another geometry than the model (image size, camera size, "
                "NA, wavelength, pixel size or LED positions differ): build the model with "
                "FPMNet.from_physics(physics, ...)"
            )

    def measurements(self, y: Tensor, physics: nn.Module | None = None) -> Tensor:
        """The measurements the network reconstructs from, ``(B, M, n, n)``.

        ``y`` itself when ``physics`` is ``None`` or the model's :attr:`illumination`; the
        model's design applied to single-LED images ``y`` ``(B, L, n, n)`` (plus noise of
        ``noise_std``) when ``physics`` is a single-LED acquisition of the same geometry.
        """
        if not isinstance(y, Tensor):
            raise TypeError(f"y (the measurements) must be a torch.Tensor, got {type(y).__name__}")
        if y.is_complex() or not y.is_floating_point():
            raise TypeError(f"y (intensity images) must be a real floating tensor, got {y.dtype}")
        if not bool(torch.isfinite(y).all()):
            bad = int((~torch.isfinite(y)).sum())
            raise ValueError(
                f"y (the measurements) contains {bad} non-finite value(s) (NaN or inf); clean the "
                "data before reconstruction"
            )
        own = self.illumination
        n = own.camera_size
        if physics is None or physics is own:
            want, what = own.num_measurements, "measurements taken with the model's design"
            simulate = False
        elif isinstance(physics, physops.FourierPtychography):
            self._check_geometry(physics)
            identity = torch.eye(own.num_leds, dtype=torch.float64)
            if physics.num_measurements != own.num_leds or not torch.equal(
                physics.design.detach().double().cpu(), identity
            ):
                raise ValueError(
                    "FPMNet simulates its design's measurements from single-LED images: physics "
                    f"must have the identity design ({own.num_leds} measurements, one LED each), "
                    f"got a design of shape {tuple(physics.design.shape)}; for measurements taken "
                    "with the model's own design call model(y) (physics=None)"
                )
            want, what = own.num_leds, "single-LED images"
            simulate = True
        else:
            raise TypeError(
                "FPMNet needs a physops.FourierPtychography (a single-LED acquisition) or None "
                f"(the model's own design) as physics, got {type(physics).__name__}"
            )
        if y.ndim != 4 or tuple(y.shape[1:]) != (want, n, n):
            raise ValueError(
                f"FPMNet expects y of shape (batch, {want}, {n}, {n}) ({what}), got "
                f"{tuple(y.shape)}"
            )
        if not simulate:
            return y
        weights = own.design.to(device=y.device, dtype=y.dtype)
        out = torch.einsum("ml,blhw->bmhw", weights, y)
        if self.noise_std > 0:
            out = out + self.noise_std * torch.randn_like(out)
        return out

    def simulate(self, target: Tensor) -> Tensor:
        """Measurements of objects ``target`` ``(B, N, N)`` with the current design, in the
        graph (so the design gets gradients), plus noise of ``noise_std``."""
        y = self.illumination(target)
        if self.noise_std > 0:
            y = y + self.noise_std * torch.randn_like(y)
        return y

    # ------------------------------------------------------------------ UnrolledModel hooks
    def check_physics(self, physics: object) -> None:
        if not isinstance(physics, physops.FourierPtychography):
            raise TypeError(
                f"FPMNet needs a physops.FourierPtychography, got {type(physics).__name__}"
            )

    def initial_state(self, y: Tensor, physics: nn.Module, x0: Tensor | None) -> Tensor:
        if x0 is not None:
            if tuple(x0.shape[-2:]) != (self.illumination.image_size,) * 2:
                n = self.illumination.image_size
                raise ValueError(f"x0 must have shape (batch, {n}, {n}), got {tuple(x0.shape)}")
            return self.adapter.to_net(x0)
        own = self.illumination
        # the shape of the amplitude: the measurements' mean, upsampled (zero phase) ...
        shape = y.mean(dim=1, keepdim=True)
        shape = shape.clamp_min(1e-6 * float(shape.detach().abs().max().clamp_min(1e-30))).sqrt()
        shape = F.interpolate(
            shape, scale_factor=own.downsample, mode="bilinear", align_corners=False
        )[:, 0]
        u = torch.complex(shape, torch.zeros_like(shape))
        # ... and its brightness by least squares: A(c u) = c^2 A(u), so the best c^2 is
        # <A(u), y> / ||A(u)||^2 (per sample)
        pred = own(u)
        gain = (pred * y).sum(dim=(-3, -2, -1)) / pred.square().sum(dim=(-3, -2, -1)).clamp_min(
            torch.finfo(y.dtype).tiny
        )
        x = u * gain.clamp_min(torch.finfo(y.dtype).eps).sqrt()[:, None, None]
        return self.adapter.to_net(x)

    def prepare(
        self, y: Tensor, physics: nn.Module | None, x0: Tensor | None
    ) -> tuple[Any, StageContext]:
        """The measurements (simulated with the model's design from single-LED images, see
        :meth:`measurements`), the first state and the context with the model's own
        acquisition."""
        measured = self.measurements(y, physics)
        return super().prepare(measured, self.illumination, x0)

    def forward(
        self, y: Tensor, physics: nn.Module | None = None, x0: Tensor | None = None
    ) -> Tensor:
        """Reconstruct complex objects ``(B, N, N)`` (see the class docstring for ``physics``)."""
        return super().forward(y, physics, x0)  # type: ignore[arg-type]

    def _why_not_invertible(self) -> str:
        return (
            f"prior={self.prior_name!r} is not invertible; the invertible priors are "
            f"{', '.join(INVERTIBLE_PRIORS)}, or prior=None"
        )

    def strategy_problem(self, strategy: Strategy) -> str | None:
        problem = super().strategy_problem(strategy)
        if problem is not None:
            return problem
        if strategy.name == "greedy" and self.learn_design:
            return (
                "strategy 'greedy' trains each module on its own loss, but FPMNet's LED design is "
                "shared by every stage (and makes the measurements): use 'backprop', 'checkpoint' "
                "or 'reversible', or build the model with learn_design=False"
            )
        certified = all(bool(torch.isfinite(g.lipschitz)) for g in self.gradient_steps())
        if strategy.forward_name == "reversible" and not certified:
            return (
                "strategy 'reversible' inverts each gradient step by backward Euler, which "
                "needs alpha * Lip(grad D) < 1 (MEL Eq. 7); for the nonlinear FPM data term "
                "Lip(grad D) is estimated along the trajectory of a batch: call "
                "model.certify(physics, target) first (unrolled.train does this for you)"
            )
        return None

    # ------------------------------------------------------------------ the Lipschitz estimate
    @torch.no_grad()
    def certify(
        self,
        physics: nn.Module | None,
        target: Tensor,
        iterations: int = 20,
        margin: float = 2.0,
        *,
        strict: bool = True,
    ) -> float:
        r"""Estimate :math:`\operatorname{Lip}(\nabla D)` on a batch and cap every step below it.

        Simulates the measurements of ``target`` (through ``physics``, a single-LED acquisition,
        or the model's own design when ``physics`` is ``None``), runs the unrolled network, and
        at every gradient step's input :math:`x_k` estimates :math:`\|H_D(x_k)\|_2` by
        :func:`gradient_lipschitz`. ``L`` = the largest estimate times ``margin``; the steps
        are then used as :math:`\min(\alpha_k, 0.9 / L)`.

        This is an **estimate**, not a certificate (the data term is not quadratic; see the
        module docstring): keep ``check_drift`` and hybrid checkpoints on for reversible
        training, and certify again when the design has changed much.

        Returns ``L``. With ``strict=True`` (before training) raises ``ValueError`` naming a
        valid step when a current step has :math:`\alpha_k L \ge 1`; ``strict=False`` only
        updates the caps (to certify again during training, where the curvature may have grown
        past a learned step: ``callback=lambda row: model.certify(physics, target,
        strict=False)`` in :func:`unrolled.train`).
        """
        if not (isinstance(margin, (int, float)) and margin >= 1 and math.isfinite(margin)):
            raise ValueError(f"margin must be a number >= 1 (a safety factor), got {margin!r}")
        if isinstance(target, Tensor) and not target.is_complex():
            raise TypeError(f"target must be complex objects (B, N, N), got dtype {target.dtype}")
        acquisition = self.illumination if physics is None else physics
        self.check_physics(acquisition)
        y = acquisition(target)
        state, context = self.prepare(y, physics, None)
        worst = 0.0
        for stage in self.stages:
            for layer in stage.layers:  # type: ignore[union-attr]
                if isinstance(layer, FPMGradientStep):
                    x = self.adapter.from_net(state)
                    lip = gradient_lipschitz(_normalised_gradient(layer, context), x, iterations)
                    worst = max(worst, float(lip.max()))
                state = layer(state, *context)
        value = worst * float(margin)
        for g in self.gradient_steps():
            g.lipschitz.fill_(value)
        if strict:
            self.check_step_sizes()
        return value

    def check_step_sizes(self) -> None:
        """Raise when a learned step has :math:`\\alpha L \\ge 1` for the estimated ``L``."""
        for k, g in enumerate(self.gradient_steps()):
            lip = float(g.lipschitz)
            alpha = float(g.relative_step.detach() / g.reference)
            if alpha * lip >= 1:
                raise ValueError(
                    f"gradient step {k}: alpha = {alpha:.4g} with the estimated Lip(grad D) = "
                    f"{lip:.4g} gives alpha * L = {alpha * lip:.3g} >= 1, so backward Euler may "
                    "not invert it (MEL Eq. 7); a valid step is step < "
                    f"{float(g.reference) / lip:.4g} (FPMNet's step is in units of 1 / L_ref)"
                )


# ------------------------------------------------------------------------------------------------
# the "ptychography" task
# ------------------------------------------------------------------------------------------------
class PtychographyDataset(TaskDataset):
    r"""Simulated FPM samples from real images: complex objects and their single-LED images.

    Item ``i``: the object :math:`x = a\, e^{i\phi}` (:func:`physops.ptychography_object`) with
    amplitude from real-anatomy slice ``i`` of the split and phase from another slice of the
    same split (chosen by ``(seed, i)``), and its single-LED intensities
    :math:`I_\ell(x)` ``(L, n, n)`` (no noise: :class:`FPMNet` adds it after multiplexing).
    Batches are ``Batch(y=I, physics=<single-LED acquisition>, target=x, x0=None)``.

    Attributes
    ----------
    acquisition:
        The single-LED :class:`physops.FourierPtychography` (identity design, not learnable);
        ``FPMNet.from_physics(data.acquisition, ...)`` builds a model of this geometry.
    """

    complex = True
    dims = 2

    def __init__(self, split: str, options: dict[str, Any]):
        super().__init__("ptychography", split, options)
        self.real_dtype, self.complex_dtype = _dtypes(options["dtype"])
        self.images = physops.real_anatomy_images(
            _check_split(split), image_size=options["image_size"]
        ).to(self.real_dtype)
        self.acquisition = self.make_physics()

    def make_physics(self) -> physops.FourierPtychography:
        """A fresh single-LED acquisition (identity design) in the task's precision."""
        o = self.options
        leds = physops.led_grid(
            o["leds_per_side"], spacing=o["led_spacing"], distance=o["led_distance"]
        )
        op = physops.FourierPtychography(
            o["image_size"],
            leds,
            na=o["na"],
            wavelength=o["wavelength"],
            pixel_size=o["pixel_size"],
            downsample=o["downsample"],
            learnable=False,
        )
        return op.to(self.real_dtype)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._index(index)
        n = len(self)
        gen = _generator(self.options["seed"], index, 0)
        partner = (index + 1 + int(torch.randint(n - 1, (1,), generator=gen))) % n if n > 1 else 0
        target = physops.ptychography_object(
            self.images[index],
            self.images[partner],
            max_phase=self.options["max_phase"],
            min_amplitude=self.options["min_amplitude"],
        )
        with torch.no_grad():
            y = self.acquisition(target[None])[0]
        return {"y": y, "target": target, "index": torch.tensor(index, dtype=torch.int64)}

    def collate(self, samples: Sequence[dict[str, Any]]) -> Batch:
        y = torch.stack([s["y"] for s in samples]).to(self.real_dtype)
        target = torch.stack([s["target"] for s in samples]).to(self.complex_dtype)
        return Batch(y=y, physics=self.make_physics(), target=target, x0=None)

    @property
    def model_kwargs(self) -> dict[str, Any]:
        """The geometry arguments of :class:`FPMNet` (``FPMNet(**data.model_kwargs)``)."""
        op = self.acquisition
        return {
            "image_size": op.image_size,
            "illumination_na": _tensor(op, "illumination_na").detach().clone(),
            "na": op.na,
            "wavelength": op.wavelength,
            "pixel_size": op.pixel_size,
            "downsample": op.downsample,
        }


def ptychography(
    split: str = "train",
    *,
    image_size: int = 32,
    downsample: int = 4,
    leds_per_side: int = 5,
    led_spacing: float = 6e-3,
    led_distance: float = 30e-3,
    na: float = 0.25,
    wavelength: float = 0.53e-6,
    pixel_size: float = 0.25e-6,
    max_phase: float = math.pi / 2,
    min_amplitude: float = 0.2,
    seed: int = 0,
    dtype: str = "float32",
) -> TaskDataset:
    r"""Fourier ptychography from real images (MEL Sec. 5.1 in miniature).

    A square LED array of ``leds_per_side**2`` LEDs (:func:`physops.led_grid`; defaults: 25
    LEDs, 5 bright-field, illumination NA up to 0.49 with an objective NA of 0.25, a synthetic
    aperture of NA 0.74), objects of ``image_size`` px and camera images of
    ``image_size / downsample`` px (defaults 32 and 8). Items: see :class:`PtychographyDataset`.
    The splits are the real-anatomy splits (28 / 8 / 8 samples).
    """
    _check_int("image_size", image_size, 4)
    _check_int("downsample", downsample, 1)
    _check_int("leds_per_side", leds_per_side, 1)
    _check_number("max_phase", max_phase, 0.0)
    _check_number("min_amplitude", min_amplitude, 0.0)
    _dtypes(dtype)
    options = {
        "image_size": image_size,
        "downsample": downsample,
        "leds_per_side": leds_per_side,
        "led_spacing": led_spacing,
        "led_distance": led_distance,
        "na": na,
        "wavelength": wavelength,
        "pixel_size": pixel_size,
        "max_phase": max_phase,
        "min_amplitude": min_amplitude,
        "seed": seed,
        "dtype": dtype,
    }
    return PtychographyDataset(split, options)
