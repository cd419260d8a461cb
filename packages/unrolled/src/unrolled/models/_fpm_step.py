r"""The gradient step of Fourier ptychography, its curvature scale and its Lipschitz estimate.

The pieces :class:`~unrolled.FPMNet` unrolls (see :mod:`unrolled.models._fpm` for the model and
the reasoning behind the normalisation and the estimate): :func:`design_scale`,
:func:`gradient_lipschitz` and :class:`FPMGradientStep`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

import fixedpoint
import physops
from revlayers import InvertibleModule

from .._validate import finite_number, one_of, positive_int
from ..nn import ImageAdapter, inverse_softplus, positive

__all__ = ["DARKFIELD_FLOOR", "FPMGradientStep", "OnFailure", "design_scale", "gradient_lipschitz"]

OnFailure = Literal["warn", "raise", "ignore"]


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
    positive_int("iterations", iterations)
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
    r"""Return the curvature scale of the FPM data term under a design, :math:`s(w)^2`.

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

    The inverse is a solve stopped at a tolerance (``exact_inverse = False``): with
    ``check_drift="auto"`` the reverse pass checks it wherever it is used.
    """

    exact_inverse = False
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
        step = finite_number(
            "step", step, low=0, low_open=True, expected="a positive number (units of 1 / L_ref)"
        )
        finite_number(
            "reference (L_ref)", reference, low=0, low_open=True, expected="a positive number"
        )
        one_of("inverse_on_failure", inverse_on_failure, ("warn", "raise", "ignore"), listing=False)
        self.adapter = adapter
        self.raw_step = nn.Parameter(
            torch.tensor(inverse_softplus(float(step))), requires_grad=learnable
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
        r"""The learned step in units of :math:`1 / L_{\mathrm{ref}}` (before the cap)."""
        return positive(self.raw_step)

    @property
    def step(self) -> Tensor:
        r""":math:`\alpha` in use: ``relative_step / L_ref``, capped at ``max_fraction / L``."""
        alpha = self.relative_step / self.reference.to(self.raw_step.dtype)
        if bool(torch.isfinite(self.lipschitz)):
            alpha = torch.minimum(alpha, self.max_fraction / self.lipschitz.to(alpha.dtype))
        return alpha

    def _alpha(self, like: Tensor) -> Tensor:
        return self.step.to(like.real.dtype)

    def data_gradient(self, x: Tensor, y: Tensor, physics: nn.Module) -> Tensor:
        r"""Return the gradient of the normalised data term :math:`D(x) / s(w)^2`.

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
        """Return the input whose step gives ``state``; ``context`` = ``(y, physics)``."""
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
