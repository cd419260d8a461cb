r"""Physics steps of unrolled models as invertible layers.

Each layer maps a state of real channels ``(B, C, *spatial)`` to a state of the same shape and is
called as ``layer(state, y, physics)``, the convention of :class:`revlayers.ReversibleSequence`
context. Complex images are converted inside (:class:`~unrolled.nn.ImageAdapter`).

===================  ===============================================  ============================
layer                forward                                          inverse
===================  ===============================================  ============================
``GradientStep``     :math:`z = x - \alpha A^H (A x - y)`             backward Euler
                                                                      :math:`x = z + \alpha
                                                                      A^H(Ax - y)` by
                                                                      :func:`fixedpoint.invert_step`
                                                                      (MEL Alg. 2), valid for
                                                                      :math:`\alpha L < 1`
``CGStep``           :math:`x' = (A^H A + \mu I)^{-1}(A^H y + \mu z)`  :math:`z = ((A^H A + \mu I)
                     by :func:`physops.cg` (implicit backward)        x' - A^H y) / \mu` (GLEAM
                                                                      Eq. 11), exact when CG
                                                                      converged
===================  ===============================================  ============================
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor, nn

import fixedpoint
import physops
from revlayers import InvertibleModule, replaying

from .._validate import finite_number, positive_int
from ._adapter import ImageAdapter
from ._params import inverse_softplus, positive

__all__ = ["CGStep", "GradientStep", "PriorLayer", "calibrate_steps"]


def _real_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.empty((), dtype=dtype).real.dtype if dtype.is_complex else dtype


def _context(layer: str, context: tuple[object, ...]) -> tuple[Tensor, Any]:
    """Unpack the reversible chain's context ``(y, physics)`` with a clear error."""
    if len(context) != 2 or not isinstance(context[0], Tensor):
        raise TypeError(
            f"{layer} is called as layer(state, y, physics) (the context of an unrolled model), "
            f"got {len(context)} context argument(s) of types "
            f"{[type(c).__name__ for c in context]}"
        )
    return context[0], context[1]


class GradientStep(InvertibleModule):
    r"""The gradient step of proximal gradient descent on :math:`\tfrac12\|A x - y\|^2`.

    :math:`z = x - \alpha A^H(A x - y)` with a learnable :math:`\alpha > 0`. Its inverse is the
    backward-Euler step :math:`x = z + \alpha A^H(A x - y)`, solved by
    :func:`fixedpoint.invert_step`, which converges when :math:`\alpha L < 1` with
    :math:`L = \lambda_{\max}(A^H A)` (MEL Eq. 7). For reversible training the model caps
    :math:`\alpha` below :math:`1/L` (``max_step``) after certifying :math:`L` with
    :func:`physops.power_iteration`.

    Parameters
    ----------
    adapter:
        Converts the state channels to the physics' images.
    step:
        Initial :math:`\alpha`.
    learnable:
        Whether :math:`\alpha` is trained.
    inverse_tol, inverse_max_iter, inverse_method:
        Settings of the fixed-point inversion (``inverse_tol=None``: relative residual ``1e-6``
        in single and ``1e-12`` in double precision).

    Its inverse is a solve stopped at a tolerance (``exact_inverse = False``), so the reverse
    pass checks it wherever it is used (``check_drift="auto"``).
    """

    exact_inverse = False
    lipschitz: Tensor

    def __init__(
        self,
        adapter: ImageAdapter,
        step: float = 0.5,
        learnable: bool = True,
        inverse_tol: float | None = None,
        inverse_max_iter: int = 200,
        inverse_method: str = "anderson",
    ):
        super().__init__()
        step = finite_number(
            "step (the gradient step size alpha)", step, low=0, low_open=True, expected="positive"
        )
        self.adapter = adapter
        self.raw_step = nn.Parameter(torch.tensor(inverse_softplus(step)), requires_grad=learnable)
        self.inverse_tol = inverse_tol
        self.inverse_max_iter = inverse_max_iter
        self.inverse_method = inverse_method
        #: Certified bound ``L`` of ``lambda_max(A^H A)`` (set by the model for reversible use).
        self.register_buffer("lipschitz", torch.tensor(float("nan")), persistent=False)
        self.max_fraction = 0.99

    @property
    def step(self) -> Tensor:
        r"""The step size :math:`\alpha` in use (capped below ``1 / L`` once ``L`` is known)."""
        alpha = positive(self.raw_step)
        if torch.isfinite(self.lipschitz):
            alpha = torch.minimum(alpha, self.max_fraction / self.lipschitz.to(alpha.dtype))
        return alpha

    def _grad(self, image: Tensor, y: Tensor, physics: Any) -> Tensor:
        return cast(Tensor, physics.adjoint(physics(image) - y))

    # torch.compile runs the physics eagerly (a graph break): torch 2.13 cannot take a complex view
    # (view_as_complex) into a graph as an input, and CG loops on a data-dependent test
    @torch.compiler.disable
    def forward(self, state: Tensor, *context: object) -> Tensor:
        y, physics = _context("GradientStep", context)
        x = self.adapter.from_net(state)
        alpha = self.step.to(x.real.dtype if x.is_complex() else x.dtype)
        return self.adapter.to_net(x - alpha * self._grad(x, y, physics))

    def drift_cause(self, unrolls: int) -> str | None:
        """Return a likely cause of drift found where this step was inverted (for messages)."""
        alpha, lip = float(self.step.detach()), float(self.lipschitz)
        contraction = f"alpha * L = {alpha * lip:.3g}" if lip == lip else "alpha * L unknown"
        return (
            "a backward-Euler inverse of the gradient step (fixed point) that stopped before its "
            f"tolerance ({contraction}; it converges for alpha * L < 1, slowly near 1): raise "
            "inverse_max_iter or lower the step size."
        )

    def inverse(self, state: Tensor, *context: object) -> Tensor:
        y, physics = _context("GradientStep", context)
        z = self.adapter.from_net(state).detach()
        alpha = self.step.detach().to(z.real.dtype if z.is_complex() else z.dtype)
        bound = self.lipschitz
        lip = float(alpha * bound) if torch.isfinite(bound) else None
        tol = self.inverse_tol
        if tol is None:
            tol = 1e-12 if alpha.dtype == torch.float64 else 1e-6
        with torch.no_grad():
            x = fixedpoint.invert_step(
                lambda v: alpha * self._grad(v, y.detach(), physics),
                z,
                method=self.inverse_method,
                lipschitz=lip,
                tol=tol,
                max_iter=self.inverse_max_iter,
                on_failure="warn",
            )
        return self.adapter.to_net(cast(Tensor, x))


class CGStep(InvertibleModule):
    r"""MoDL's data consistency :math:`x' = (A^H A + \mu I)^{-1}(A^H y + \mu z)`.

    A learnable :math:`\mu > 0`; solved by :func:`physops.cg` with its implicit (constant-memory)
    backward.

    The inverse is algebraic (GLEAM Eq. 11): :math:`z = ((A^H A + \mu I) x' - A^H y) / \mu`. It
    reproduces :math:`z` to the accuracy CG reached: keep ``cg_tol`` tight for reversible
    training (the relative error of the rebuilt :math:`z` is about
    ``cg_tol * ||A^H y + mu z|| / (mu ||z||)``).

    Parameters
    ----------
    adapter:
        Converts the state channels to the physics' images.
    mu:
        Initial :math:`\mu` (GLEAM: 4.0 at R = 4, 0.05 at R = 16).
    learnable:
        Whether :math:`\mu` is trained.
    cg_max_iter, cg_tol:
        CG's iteration cap and relative-residual tolerance (CG stops earlier once converged).
        ``cg_tol=None`` picks ``1e-6`` for single and ``1e-12`` for double precision, tight
        enough for the algebraic inverse (measured: reversible gradients within 1e-4 of backprop
        in float32 and 1e-12 in float64 at 10 unrolls with ``mu = 1``).

    Attributes
    ----------
    cg_residual : Tensor or None
        The largest relative CG residual of the forward solves since :meth:`reset_solves`
        (``None`` before any): what a drift diagnosis reads to tell "CG not converged" from
        "small mu".

    Notes
    -----
    The inverse is exact only to CG's accuracy, so the layer says ``exact_inverse = False``:
    with ``check_drift="auto"`` the reverse pass checks every CG step where it recomputes it
    (``||CG(z_rebuilt) - x'|| / ||x'||``), which costs nothing extra.
    """

    exact_inverse = False
    cg_residual: Tensor | None

    def __init__(
        self,
        adapter: ImageAdapter,
        mu: float = 0.05,
        learnable: bool = True,
        cg_max_iter: int = 50,
        cg_tol: float | None = None,
    ):
        super().__init__()
        mu = finite_number(
            "mu (MoDL's data-consistency weight)",
            mu,
            low=0,
            low_open=True,
            expected="positive",
            suffix=": (A^H A + mu I) is only invertible for mu > 0",
        )
        self.adapter = adapter
        self.raw_mu = nn.Parameter(torch.tensor(inverse_softplus(mu)), requires_grad=learnable)
        self.cg_max_iter = positive_int("cg_max_iter", cg_max_iter)
        self.cg_tol = cg_tol
        self.cg_residual = None

    @property
    def mu(self) -> Tensor:
        return positive(self.raw_mu)

    def tolerance(self, dtype: torch.dtype) -> float:
        """CG's relative-residual tolerance for a state of ``dtype`` (``cg_tol`` or its default)."""
        if self.cg_tol is not None:
            return float(self.cg_tol)
        return 1e-12 if _real_dtype(dtype) == torch.float64 else 1e-6

    def reset_solves(self) -> None:
        """Forget the recorded CG residuals (a model calls it before each forward pass)."""
        self.cg_residual = None

    def drift_cause(self, unrolls: int) -> str | None:
        """Return a likely cause of drift found where this step was inverted, in words.

        Parameters
        ----------
        unrolls:
            How many unrolls the reverse pass went through from its last exact state.
        """
        mu = float(self.mu.detach())
        tol = self.tolerance(torch.float64 if self.raw_mu.dtype == torch.float64 else torch.float32)
        worst = None if self.cg_residual is None else float(self.cg_residual)
        if worst is not None and not worst <= tol:
            return (
                f"CG not converged: this CG step's forward solves stopped at relative residual "
                f"{worst:.2g} > cg_tol = {tol:g} (cg_max_iter = {self.cg_max_iter}), so its "
                f"algebraic inverse is off by about that residual / mu (mu = {mu:.3g}); raise "
                "cg_max_iter."
            )
        gain = 1.0 + 1.0 / mu
        return (
            f"small mu: mu = {mu:.3g} makes the CG inverse z = ((A^H A + mu I) x' - A^H y) / mu "
            f"amplify reconstruction errors up to (L + mu) / mu = {gain:.3g}x per unroll "
            f"(L = lambda_max(A^H A) = 1 for normalised coil maps), ~{gain**unrolls:.2g}x over "
            f"the {unrolls} unroll(s) reversed from the last stored state; store checkpoints more "
            "often (checkpoint_every=None lets MoDL choose them) or train in float64."
        )

    # torch.compile runs the physics eagerly (a graph break): torch 2.13 cannot take a complex view
    # (view_as_complex) into a graph as an input, and CG loops on a data-dependent test
    @torch.compiler.disable
    def forward(self, state: Tensor, *context: object) -> Tensor:
        y, physics = _context("CGStep", context)
        z = self.adapter.from_net(state)
        mu = self.mu.to(z.real.dtype if z.is_complex() else z.dtype)
        rhs = physics.adjoint(y) + mu * z
        result = physops.cg(
            lambda v: physics.normal(v) + mu * v,
            rhs,
            x0=z.detach(),
            max_iter=self.cg_max_iter,
            tol=self.tolerance(mu.dtype),
        )
        if not replaying():  # the forward pass' solves (a reverse pass re-solves from rebuilt z)
            worst = result.residuals.detach().max()
            previous = self.cg_residual
            self.cg_residual = worst if previous is None else torch.maximum(previous, worst)
        return self.adapter.to_net(result.x)

    # torch.compile runs the physics eagerly (a graph break): torch 2.13 cannot take a complex view
    # (view_as_complex) into a graph as an input, and CG loops on a data-dependent test
    @torch.compiler.disable
    def inverse(self, state: Tensor, *context: object) -> Tensor:
        y, physics = _context("CGStep", context)
        x = self.adapter.from_net(state)
        mu = self.mu.to(x.real.dtype if x.is_complex() else x.dtype)
        z = (physics.normal(x) + mu * x - physics.adjoint(y)) / mu
        return self.adapter.to_net(z)


class PriorLayer(nn.Module):
    """A non-invertible learned prior applied to the state (for the other strategies)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, state: Tensor, y: Tensor, physics: nn.Module) -> Tensor:
        return self.net(state)


@torch.no_grad()
def calibrate_steps(
    steps: list[GradientStep],
    physics: physops.LinearOperator,
    x_like: Tensor,
    fraction: float = 1.0,
    iterations: int = 30,
) -> float:
    r"""Set every step size to ``fraction / L`` and return ``L``.

    :math:`L = \lambda_{\max}(A^H A)` is estimated by :func:`physops.power_iteration` (the
    largest over the batch).
    """
    finite_number(
        "fraction",
        fraction,
        low=0,
        high=2,
        low_open=True,
        high_open=True,
        expected="in (0, 2) (a gradient step alpha = fraction / L converges for alpha L < 2)",
    )
    lip = float(
        torch.as_tensor(physops.power_iteration(physics, x_like, iterations=iterations)).max()
    )
    if not lip > 0:
        raise ValueError(f"the power iteration gave lambda_max(A^H A) = {lip:g}; expected > 0")
    for g in steps:
        g.raw_step.fill_(inverse_softplus(fraction / lip))
    return lip
