r"""MoDL and unrolled proximal gradient descent (GLEAM's two architectures, MEL's MRI network).

MoDL (Aggarwal et al.; GLEAM Eq. 7-8), ``iterations`` times:

.. math::

    z_k = R_k(x_k), \qquad x_{k+1} = (A^H A + \mu_k I)^{-1} (A^H y + \mu_k z_k)

Unrolled PGD (GLEAM Eq. 3-5; MEL Eq. 3-4), ``iterations`` times:

.. math::

    z_k = x_k - \alpha_k A^H (A x_k - y), \qquad x_{k+1} = \mathrm{prox}_k(z_k)

Both start from :math:`x_0 = A^H y` (or the given ``x0``). With an invertible prior
(``prior="coupling"`` or ``"iresnet"``) every stage is invertible and the models train with
``strategy="reversible"`` (MEL); the CG step is inverted algebraically, the gradient step by
backward Euler with :math:`\alpha_k L < 1` certified by :meth:`UnrolledPGD.certify`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

import physops
from revlayers import InvertibleModule, auto_tolerance

from .._base import Stage, UnrolledModel, make_stage
from .._strategy import Strategy
from .._validate import positive_int
from ..nn import (
    INVERTIBLE_PRIORS,
    CGStep,
    GradientStep,
    ImageAdapter,
    PriorLayer,
    build_prior,
    positive,
)

__all__ = ["MoDL", "UnrolledPGD", "lu_dncnn"]


def _prior_layers(prior: nn.Module | list[InvertibleModule]) -> list[nn.Module]:
    return list(prior) if isinstance(prior, list) else [PriorLayer(prior)]


class _Unrolled(UnrolledModel):
    """MoDL and unrolled PGD: ``iterations`` stages of a prior and a physics step."""

    prior_name: str

    def _unroll(
        self, stage: Callable[[], Stage], iterations: int, prior: str, share_weights: bool
    ) -> None:
        """Build ``iterations`` stages (one shared stage with ``share_weights``)."""
        self.prior_name = prior
        self.iterations = iterations
        if share_weights:
            shared = stage()
            self.stages = nn.ModuleList([shared] * iterations)
        else:
            self.stages = nn.ModuleList([stage() for _ in range(iterations)])

    def why_not_invertible(self) -> str:
        """Why the stages are not invertible: the prior (naming the invertible ones)."""
        return (
            f"prior={self.prior_name!r} is not invertible; the invertible priors are "
            f"{', '.join(INVERTIBLE_PRIORS)}"
        )


class MoDL(_Unrolled):
    r"""Model-based deep learning: learned regulariser and CG data consistency, unrolled.

    Parameters
    ----------
    iterations:
        Number of unrolls N (GLEAM 2D: 8).
    prior:
        The regulariser :math:`R_k` (:func:`unrolled.build_prior`): ``"resnet"`` (5 convs + ReLU
        with a skip, MoDL), ``"coupling"`` (RevNet-style invertible residual CNN, as GLEAM trains
        all its MoDL baselines) or ``"iresnet"`` (MEL). Default ``"coupling"``: valid for every
        strategy, so strategies compare on the same network.
    features, layers:
        Hidden features (GLEAM: 70) and convolutions of the regulariser.
    mu:
        Initial :math:`\mu` (GLEAM: 4.0 at R = 4, 0.05 at R = 16). Reversible training rebuilds
        :math:`z` from :math:`x'` with gain up to :math:`(L + \mu) / \mu`, so small :math:`\mu`
        amplifies rounding and CG errors layer after layer (measured at 10 unrolls, float32,
        without checkpoints or checks: gradient error 7e-6 at mu = 4, 1e-4 at mu = 1, 6e-3 at
        mu = 0.3, and divergence at mu = 0.05, where GLEAM also reports that MEL did not
        converge). With ``set_strategy("reversible")`` and no ``checkpoint_every`` the model
        therefore picks hybrid checkpoints from :math:`\mu` and the CG tolerance
        (:meth:`reversible_checkpoints`), and the default drift checks recompute what still
        drifts (``check_drift="auto"``).
    learn_mu:
        Train :math:`\mu_k` (one per unroll).
    share_weights:
        One regulariser and one :math:`\mu` for all unrolls (MoDL's original weight sharing).
    cg_max_iter, cg_tol:
        CG settings (CG stops early once the relative residual is below ``cg_tol``; reversible
        training needs a tight tolerance for the algebraic inverse to hold).
    complex, dims, color_channels:
        Image type (see :class:`~unrolled.ImageAdapter`): complex 2D MRI by default.
    couplings:
        Coupling layers per regulariser for ``prior="coupling"``.

    Examples
    --------
    >>> model = MoDL(iterations=4, features=16)                 # doctest: +SKIP
    >>> x_hat = model(y, physops.Sense(maps, mask))              # doctest: +SKIP
    >>> model.set_strategy("reversible")                         # doctest: +SKIP
    """

    def __init__(
        self,
        iterations: int = 8,
        prior: str = "coupling",
        features: int = 64,
        layers: int = 5,
        mu: float = 4.0,
        learn_mu: bool = True,
        share_weights: bool = False,
        cg_max_iter: int = 50,
        cg_tol: float | None = None,
        complex: bool = True,
        dims: int = 2,
        color_channels: int | None = None,
        couplings: int = 2,
    ):
        super().__init__(ImageAdapter(complex, dims, color_channels))
        positive_int("iterations", iterations)

        def stage() -> Stage:
            reg = build_prior(prior, self.adapter.channels, features, layers, dims, couplings)
            dc = CGStep(self.adapter, mu, learn_mu, cg_max_iter, cg_tol)
            return make_stage([*_prior_layers(reg), dc])

        self._unroll(stage, iterations, prior, share_weights)

    def cg_steps(self) -> list[CGStep]:
        """Return the CG data-consistency layers (one per distinct stage)."""
        return [m for s in self.unique_stages() for m in s.modules() if isinstance(m, CGStep)]

    def reversible_checkpoints(self, dtype: torch.dtype) -> int | None:
        r"""Return hybrid checkpoints for ``"reversible"`` when the strategy gives none.

        Returns the number of chain layers per stored state (a whole number of unrolls), or
        ``None`` when the whole chain stays within the drift tolerance without checkpoints.

        Rule: store the state every
        :math:`u = \max(1, \lfloor \log(\mathrm{tol} / \epsilon) / \log g \rfloor)` unrolls,
        with :math:`g = (L + \mu) / \mu` for the smallest current (learned) :math:`\mu`,
        :math:`\epsilon` the CG tolerance (``cg_tol``, at least 8 ulp of the dtype) and ``tol``
        the drift tolerance (``check_drift``, or :func:`revlayers.auto_tolerance`: 1e-5 in
        float32, 1e-10 in float64). Float32, default ``cg_tol``, 10 unrolls: no checkpoints at
        mu = 4, every 3 unrolls at mu = 1, every unroll at mu <= 0.25. Memory: one image per
        stored state.
        """
        # Why: the CG inverse z = ((A^H A + mu I) x' - A^H y) / mu amplifies an error in x' by up
        # to g = (L + mu) / mu, ~1/mu per unroll (L = lambda_max(A^H A) = 1 for physops' MRI
        # operators with normalised coil maps). From an exact stored state the first inverse
        # already carries the CG error eps times g, and u unrolls later the rebuilt state is off
        # by ~eps * g^u; the checkpoint check accepts it below tol. So u is the largest number
        # of unrolls with eps * g^u <= tol. What still drifts past tol (a larger L, a CG that
        # did not converge) the drift checks catch and recompute.
        steps = self.cg_steps()
        if not steps:
            return None
        check = self.strategy.check_drift
        tol = float(check) if isinstance(check, (int, float)) else auto_tolerance(dtype)
        real = torch.empty((), dtype=dtype).real.dtype if dtype.is_complex else dtype
        eps = max(max(s.tolerance(real) for s in steps), 8 * torch.finfo(real).eps)
        with torch.no_grad():
            mu = min(float(s.mu) for s in steps)
        gain = 1.0 + 1.0 / mu
        unrolls = math.floor(math.log(tol / eps) / math.log(gain)) if tol > eps else 1
        if unrolls >= self.iterations:
            return None
        per_unroll = len(self.stages[0].invertible_layers())  # type: ignore[operator]
        return max(1, unrolls) * per_unroll


class UnrolledPGD(_Unrolled):
    r"""Unrolled proximal gradient descent with a learned proximal network per iteration.

    Parameters
    ----------
    iterations:
        Number of unrolls N (GLEAM 2D: 8; LUSER's LU-DnCNN: 8).
    prior:
        The proximal network (:func:`unrolled.build_prior`): ``"resblocks"`` (GLEAM: 2 residual
        blocks of ReLU + conv, no normalisation), ``"dncnn"`` (LU-DnCNN), ``"resnet"``,
        ``"coupling"`` or ``"iresnet"`` (invertible, for ``strategy="reversible"``).
    features, layers:
        Hidden features (GLEAM: 100) and convolutions of the prior (where it has that knob).
    step:
        Initial gradient step size :math:`\alpha_k` (learned, one per iteration).
    learn_step:
        Train the step sizes.
    share_weights:
        One prox and one step for all iterations (LUSER's LU-DnCNN baseline shares them).
    complex, dims, color_channels:
        Image type (see :class:`~unrolled.ImageAdapter`).
    """

    def __init__(
        self,
        iterations: int = 8,
        prior: str = "resblocks",
        features: int = 64,
        layers: int = 5,
        step: float = 0.5,
        learn_step: bool = True,
        share_weights: bool = False,
        complex: bool = True,
        dims: int = 2,
        color_channels: int | None = None,
        couplings: int = 2,
    ):
        super().__init__(ImageAdapter(complex, dims, color_channels))
        positive_int("iterations", iterations)

        def stage() -> Stage:
            grad = GradientStep(self.adapter, step, learn_step)
            prox = build_prior(prior, self.adapter.channels, features, layers, dims, couplings)
            return make_stage([grad, *_prior_layers(prox)])

        self._unroll(stage, iterations, prior, share_weights)

    def gradient_steps(self) -> list[GradientStep]:
        """Return the gradient-step layers (one per distinct stage)."""
        return [m for s in self.unique_stages() for m in s.modules() if isinstance(m, GradientStep)]

    @torch.no_grad()
    def certify(
        self, physics: nn.Module, x_like: Tensor, iterations: int = 50, margin: float = 1.05
    ) -> float:
        r"""Bound :math:`L = \lambda_{\max}(A^H A)` and cap every step size below :math:`1 / L`.

        The bound comes from power iteration; under the cap each gradient step is invertible by
        backward Euler (MEL Eq. 7).

        Returns the certified ``L`` (the power-iteration estimate times ``margin``, the worst
        sample of the batch). Raises ``ValueError`` naming a valid step size when a current step
        has :math:`\alpha_k L \ge 1`. During training the steps are then used as
        :math:`\min(\alpha_k, 0.99 / L)`, so learning cannot make them non-invertible.
        """
        if not isinstance(physics, physops.LinearOperator):
            raise TypeError(
                "certify bounds lambda_max(A^H A) of a linear operator by power iteration; got "
                f"{type(physics).__name__}, which is not a physops.LinearOperator"
            )
        estimate = physops.power_iteration(physics, x_like, iterations=iterations)
        lip = float(torch.as_tensor(estimate).max()) * margin
        for g in self.gradient_steps():
            g.lipschitz.fill_(lip)
        self.check_step_sizes()
        return lip

    def strategy_problem(self, strategy: Strategy) -> str | None:
        problem = super().strategy_problem(strategy)
        if problem is None and strategy.forward_name == "reversible":
            for g in self.gradient_steps():
                if not bool(torch.isfinite(g.lipschitz)):
                    return (
                        "strategy 'reversible' inverts each gradient step by backward Euler, which "
                        "needs alpha * L < 1 (MEL Eq. 7): call model.certify(physics, x_like) on a "
                        "training batch first (unrolled.train does this for you)"
                    )
        return problem

    def check_step_sizes(self) -> None:
        r"""Raise when a learned step violates :math:`\alpha L < 1`, naming a valid step."""
        for k, g in enumerate(self.gradient_steps()):
            lip = float(g.lipschitz)
            alpha = float(positive(g.raw_step))
            if alpha * lip >= 1:
                raise ValueError(
                    f"gradient step {k}: alpha = {alpha:.4g} with L = {lip:.4g} gives alpha * L = "
                    f"{alpha * lip:.3g} >= 1, so the step cannot be inverted (MEL Eq. 7); a valid "
                    f"step is alpha < {1 / lip:.4g}"
                )


def lu_dncnn(iterations: int = 8, **kwargs: Any) -> UnrolledPGD:
    """LUSER's LU-DnCNN baseline: unrolled PGD with one shared 17-layer DnCNN prox."""
    kwargs.setdefault("prior", "dncnn")
    kwargs.setdefault("share_weights", True)
    kwargs.setdefault("features", 64)
    return UnrolledPGD(iterations=iterations, **kwargs)
