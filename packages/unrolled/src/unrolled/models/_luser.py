r"""LUSER: loop unrolling with shallow equilibrium regularisers (Guan et al., Sec. 3).

:math:`K` stages (8 in the paper), each a gradient step and a shallow equilibrium proximal block
(:class:`~unrolled.LUSERProx`, Table 1):

.. math::

    d_k = x_k + \lambda_k A^H (y - A x_k), \qquad
    u_k = \mathrm{Inject}(d_k), \qquad
    r^* = \mathrm{Mix}\big(\mathrm{Data}(r^*) \oplus u_k\big) \ \text{from}\ r^{(0)} = 0,

.. math::

    x_{k+1} = d_k + \mathrm{Mix}\big(\mathrm{Data}(r^*) \oplus u_k\big) \qquad \text{(Eq. 7)}

with :math:`\lambda_k > 0` learned and :math:`r^*` found by Anderson acceleration
(:mod:`fixedpoint`). The injection runs once per stage; only the data and mix layers iterate.
:math:`x_0 = A^H y` (MRI, CT) or :math:`y` (deblurring, ``init="measurements"``).

Variants: LUSER-DW (``share_weights=False``, a block and a step size per stage) and LUSER-SW
(one block and one step size for all stages). Strategies: ``"implicit"`` (the paper's, and the
default) solves each block without a graph and differentiates it implicitly, with the backward
option of the strategy (``"implicit"``, ``"jacobian_free"``, ``"phantom"``);
``"backprop"``, ``"checkpoint"`` and ``"greedy"`` (LUSER-DW only) differentiate through the
solver's iterations (the reference those are checked against). ``"reversible"`` does not apply:
the blocks are not invertible.

Parameter counts against LUSER Table 3 (``features=32``; the tests check them):

=========================  ==========  =========  =================================================
task (channels)            paper       ours       difference
=========================  ==========  =========  =================================================
CT (1), LUSER-SW           93,954      93,954     none
MRI (2), LUSER-SW          95,107      95,107     none
deblurring (3), LUSER-SW   96,503      96,260     -243 = 3 x 9 x 9: the paper's count seems to
                                                  include its 9 x 9 blur kernel on 3 channels
                                                  (its LU-DnCNN count has the same +243; its
                                                  LUSER-DW count does not)
CT / MRI / deblurring, DW  751,625 /   751,632 /  +7: one step size per stage (the paper's counts
                           760,849 /   760,856 /  are 8 blocks + 1 shared step); per-stage steps
                           770,073     770,080    keep the stages independent for greedy training
=========================  ==========  =========  =================================================
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

import torch
from torch import Tensor, nn

import fixedpoint

from .._base import StageContext
from .._strategy import Strategy
from .._validate import finite_number, positive_int
from ..nn import GradientStep, ImageAdapter, LUSERProx
from ._equilibrium import EquilibriumSolver, EquilibriumStage, as_solver, equilibrium
from ._equilibrium_model import EquilibriumModel

__all__ = ["LUSER", "LUSERStage"]


class LUSERStage(EquilibriumStage):
    r"""One LUSER stage: the gradient step :math:`d_k` and the equilibrium block (Eq. 7).

    Parameters
    ----------
    step:
        The gradient step :math:`d = x + \lambda A^H(y - A x)` (shared between the stages of
        LUSER-SW).
    prox:
        The proximal block (shared in LUSER-SW).
    solver:
        The equilibrium settings.

    Attributes
    ----------
    diagnostics:
        :class:`fixedpoint.ImplicitDiagnostics` of the stage's last solve: ``forward`` (a
        :class:`fixedpoint.FixedPointResult` with per-sample ``iterations``, ``residuals``,
        ``converged``) and, in ``"implicit"`` mode once the backward pass ran, ``backward``.
    backward_mode:
        ``"implicit"``, ``"jacobian_free"``, ``"phantom"`` or ``"unrolled"``.
    """

    step: GradientStep
    prox: LUSERProx

    def __init__(self, step: GradientStep, prox: LUSERProx, solver: EquilibriumSolver):
        super().__init__(step, prox, solver)

    def forward(self, state: Tensor, context: StageContext) -> Tensor:
        d = self.step(state, context.y, context.physics)
        u = self.prox.inject(d)
        diagnostics = fixedpoint.ImplicitDiagnostics()
        r = equilibrium(
            self.prox.mix,
            torch.zeros_like(d),
            u,
            mode=self.backward_mode,
            solver=self.solver,
            diagnostics=diagnostics,
        )
        self.diagnostics = diagnostics
        return d + r


class LUSER(EquilibriumModel):
    r"""Loop unrolled shallow equilibrium regulariser (Guan et al.; see the module docstring).

    Parameters
    ----------
    iterations:
        Number of stages K (the paper: 8).
    share_weights:
        LUSER-SW (one block and step size for all stages) when true, else LUSER-DW.
    features, groups:
        Channels F of the block's injection and data layers (32) and GroupNorm groups.
    data_gain:
        Initial gain of the block's data path (:class:`~unrolled.LUSERProx`; 0.01 makes the
        equilibrium maps contractions at initialisation on the package's tasks, measured).
    step:
        Initial step size :math:`\lambda` (positive, learned through a softplus). 1 suits
        operators with :math:`\|A^H A\| \le 1` (Fourier sampling with an orthonormal FFT,
        normalised coil maps, blurs whose kernel sums to 1); for CT call
        :meth:`calibrate_steps` or pass about :math:`1 / \lambda_{\max}(A^H A)`.
    learn_step:
        Train the step sizes.
    init:
        :math:`x_0` when the call gives none: ``"adjoint"`` (:math:`A^H y`: MRI, CT) or
        ``"measurements"`` (:math:`y` itself: deblurring, where it is an image).
    aux_loss_weight:
        Weight :math:`w \ge 0` of the auxiliary loss on intermediate reconstructions (Sec. 4):
        the training loop adds :math:`w \sum_{k<K} \mathrm{MSE}(\hat x_k, x)` computed from
        :meth:`intermediates`. 0 turns it off.
    solver:
        :class:`~unrolled.EquilibriumSolver` (or a dict of its fields): method, tolerances,
        iteration caps and the failure policy of the forward and backward solves.
    complex, dims, color_channels:
        Image type (:class:`~unrolled.ImageAdapter`): complex 2D MRI by default; real with
        ``complex=False`` (CT, grey deblurring), ``color_channels=3`` for RGB.
    negative_slope:
        Of the block's LeakyReLUs (the paper does not give it).

    Shapes
    ------
    ==========  ====================================  ===========================================
    tensor      shape                                 dtype
    ==========  ====================================  ===========================================
    ``y``       as ``physics`` produces it            ``physics``' measurement dtype
    ``x0``      ``(B, [C,] *spatial)``                complex (MRI) or real (CT, deblurring)
    output      like ``x0``                           like ``x0``
    ==========  ====================================  ===========================================

    Examples
    --------
    >>> model = LUSER(iterations=8, complex=False)          # doctest: +SKIP
    >>> x_hat = model(y, physops.Radon(64, angles))         # doctest: +SKIP
    >>> model.equilibrium_diagnostics()[0].forward.iterations   # doctest: +SKIP
    """

    def __init__(
        self,
        iterations: int = 8,
        share_weights: bool = False,
        features: int = 32,
        groups: int = 8,
        data_gain: float = 0.01,
        step: float = 1.0,
        learn_step: bool = True,
        init: Literal["adjoint", "measurements"] = "adjoint",
        aux_loss_weight: float = 0.0,
        solver: EquilibriumSolver | dict[str, Any] | None = None,
        complex: bool = True,
        dims: int = 2,
        color_channels: int | None = None,
        negative_slope: float = 0.1,
    ):
        super().__init__(ImageAdapter(complex, dims, color_channels), init)
        positive_int("iterations", iterations)
        self.iterations = iterations
        self.share_weights = bool(share_weights)
        self.aux_loss_weight = aux_loss_weight
        chosen = as_solver(solver)
        channels = self.adapter.channels

        def block() -> tuple[GradientStep, LUSERProx]:
            prox = LUSERProx(channels, features, groups, dims, data_gain, negative_slope)
            return GradientStep(self.adapter, step, learn_step), prox

        if share_weights:
            shared = block()
            blocks = [shared] * iterations
        else:
            blocks = [block() for _ in range(iterations)]
        self.stages = nn.ModuleList([LUSERStage(g, p, chosen) for g, p in blocks])
        self.set_strategy("implicit")

    # ------------------------------------------------------------------ settings
    @property
    def aux_loss_weight(self) -> float:
        """Weight of the auxiliary loss on intermediate reconstructions (0: off)."""
        return self._aux_loss_weight

    @aux_loss_weight.setter
    def aux_loss_weight(self, value: float) -> None:
        self._aux_loss_weight = finite_number(
            "aux_loss_weight",
            value,
            low=0,
            expected="a finite number >= 0 (0 turns the auxiliary loss off)",
        )

    # ------------------------------------------------------------------ base hooks
    def strategy_problem(self, strategy: Strategy) -> str | None:
        if strategy.forward_name == "reversible":
            return (
                "strategy 'reversible' needs invertible stages, but LUSER's equilibrium blocks "
                "are not invertible: use 'implicit' (the paper's, constant memory in the solver "
                "iterations), 'checkpoint' or 'greedy'"
            )
        if strategy.name == "greedy" and self.share_weights:
            return (
                "strategy 'greedy' trains each module's own weights, but this LUSER-SW shares "
                "one block and step size across its stages: build LUSER(share_weights=False) "
                "(LUSER-DW), or use 'implicit' or 'checkpoint'"
            )
        if strategy.forward_name == "implicit":
            if strategy.name == "greedy":  # the module count, checked as for any inner mode
                return super().strategy_problem(replace(strategy, inner="backprop"))
            return None
        return super().strategy_problem(strategy)
