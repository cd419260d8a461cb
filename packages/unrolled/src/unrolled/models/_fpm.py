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
from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import physops

from .._base import PlainStage, StageContext, UnrolledModel
from .._strategy import Strategy
from .._validate import finite_number, int_at_least, positive_int, unknown_name
from ..nn import INVERTIBLE_PRIORS, PRIORS, ImageAdapter, PriorLayer, build_prior
from ._fpm_step import FPMGradientStep, OnFailure, design_scale, gradient_lipschitz

__all__ = ["FPMNet"]


def _tensor(module: nn.Module, name: str) -> Tensor:
    """Return a module's buffer or parameter, typed as a tensor."""
    return cast(Tensor, getattr(module, name))


def _normalised_gradient(
    step: FPMGradientStep, context: StageContext
) -> Callable[[Tensor], Tensor]:
    return lambda v: step.data_gradient(v, context.y, context.physics)


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
        ``None`` (pure gradient steps) or a prior (:func:`unrolled.build_prior`) after each step:
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
        positive_int("iterations", iterations)
        if prior is not None and prior not in PRIORS:
            raise unknown_name("prior", prior, ["None (gradient steps only)", *PRIORS])
        self.noise_std = finite_number("noise_std", noise_std, low=0.0)
        if design is None:
            num_leds = int(illumination_na.shape[0]) if isinstance(illumination_na, Tensor) else 0
            m = int_at_least("num_measurements", num_measurements, 1)
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

        def stage() -> PlainStage:
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
            return PlainStage(mods)

        self.stages = nn.ModuleList([stage() for _ in range(iterations)])

    @classmethod
    def from_physics(cls, physics: physops.FourierPtychography, **kwargs: Any) -> FPMNet:
        """Return a model with the geometry of ``physics`` (not its design: pass ``design=``)."""
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
        """Return the gradient-step layers, one per unroll."""
        return [m for s in self.stages for m in s.modules() if isinstance(m, FPMGradientStep)]

    @torch.no_grad()
    def _clear_object_lipschitz(self) -> float:
        """:math:`L_{ref}`.

        Lip of the normalised data term at a clear object lit by every bright-field LED (a property
        of the geometry only, not of the design).
        """
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
        """Return the measurements the network reconstructs from, ``(B, M, n, n)``.

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
        """Return the measurements of objects ``target`` ``(B, N, N)`` with the current design.

        They are made in the graph (so the design gets gradients), plus noise of ``noise_std``.
        """
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
        """Return the first state and the context with the model's own acquisition.

        The measurements are simulated with the model's design from single-LED images (see
        :meth:`measurements`).
        """
        measured = self.measurements(y, physics)
        return super().prepare(measured, self.illumination, x0)

    def forward(
        self, y: Tensor, physics: nn.Module | None = None, x0: Tensor | None = None
    ) -> Tensor:
        """Reconstruct complex objects ``(B, N, N)`` (see the class docstring for ``physics``)."""
        return super().forward(y, physics, x0)  # type: ignore[arg-type]

    def why_not_invertible(self) -> str:
        """Why the stages are not invertible: the prior (naming the invertible ones)."""
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
        r"""Raise when a learned step has :math:`\alpha L \ge 1` for the estimated ``L``."""
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
