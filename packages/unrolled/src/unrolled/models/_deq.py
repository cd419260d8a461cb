r"""DEQ4IP: the proximal-gradient iteration as one deep equilibrium (Gilton et al. 2021).

Where an unrolled network runs a fixed number of iterations, DEQ4IP runs the learned iteration to
its fixed point:

.. math::

    x^* = f(x^*), \qquad f(x) = \mathrm{prox}_\theta\big(x - \alpha A^H (A x - y)\big),

with :math:`\mathrm{prox}_\theta` a DnCNN (:class:`~unrolled.DnCNN`, residual output
:math:`z - \mathrm{body}(z)`, spectrally normalised, BatchNorm optional) and a learned step
:math:`\alpha > 0`, solved by Anderson acceleration from :math:`x_0 = A^H y` (or :math:`y` for
deblurring) and differentiated implicitly, so that training memory does not grow with the number
of iterations (LUSER Sec. 2.2; LUSER uses it as a baseline). Note that every iteration applies
:math:`A` and :math:`A^H` once, and that the map is a contraction only if the prox is: with
:math:`\alpha \lambda_{\max}(A^H A) \le 2` the gradient step is non-expansive, and spectral
normalisation bounds the Lipschitz constant of ``body`` by 1, so that of the prox by 2 (not 1);
read the solver diagnostics, and pretrain the prox as a denoiser as Gilton et al. advise.

:class:`~unrolled.UnrolledModel` is a list of stages; a DEQ is one stage (the equilibrium), so
``model.stages`` has length 1 and :meth:`intermediates` returns one image. Strategies:
``"implicit"`` (default; its ``backward`` option as for LUSER) and ``"backprop"`` (autograd
through the solver's iterations, memory growing with them: the reference). ``"checkpoint"``,
``"reversible"`` and ``"greedy"`` are refused, saying why.

The paper's DnCNN has BatchNorm (LUSER Table 3 counts DEQ4IP like LU-DnCNN: 556,033 parameters on
CT): ``batchnorm=True`` gives exactly that count. A fixed point under batch statistics would couple
the samples of a batch and move the running statistics at every solver iteration, so the
BatchNorm of a DEQ is ``unrolled.nn.EquilibriumBatchNorm``: the map normalises by the running
statistics (in training mode too), and the statistics are updated once per training forward, by
one pass of the prox without gradients at the fixed point it found. The map is then a fixed
function between optimizer steps, what the implicit backward pass differentiates. Without
BatchNorm (the default) every hidden convolution has a bias, 555,137 parameters on CT (-0.16%).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

import fixedpoint

from .._base import StageContext
from .._strategy import Strategy
from .._validate import finite_number
from ..nn import DnCNN, EquilibriumBatchNorm, GradientStep, ImageAdapter
from ._equilibrium import EquilibriumSolver, EquilibriumStage, as_solver, equilibrium
from ._equilibrium_model import EquilibriumModel

__all__ = ["DEQ", "DEQStage"]


class DEQStage(EquilibriumStage):
    r"""The equilibrium :math:`x^* = \mathrm{prox}(x^* - \alpha A^H(A x^* - y))` as one stage.

    Attributes
    ----------
    diagnostics:
        :class:`fixedpoint.ImplicitDiagnostics` of the last solve (see
        :meth:`LUSER.equilibrium_diagnostics`).
    backward_mode:
        ``"implicit"``, ``"jacobian_free"``, ``"phantom"`` or ``"unrolled"``.
    """

    step: GradientStep
    prox: nn.Module

    def __init__(self, step: GradientStep, prox: nn.Module, solver: EquilibriumSolver):
        super().__init__(step, prox, solver)

    #: Factor of the prox's output (``contraction / 2``; 1 for the paper's prox).
    prox_scale: float = 1.0

    def iteration(self, x: Tensor, context: StageContext) -> Tensor:
        """One application of the map :math:`f(x)` (real channels in, real channels out)."""
        out: Tensor = self.prox(self.step(x, context.y, context.physics))
        return out * self.prox_scale if self.prox_scale != 1.0 else out

    def forward(self, state: Tensor, context: StageContext) -> Tensor:
        diagnostics = fixedpoint.ImplicitDiagnostics()
        out = equilibrium(
            lambda x: self.iteration(x, context),
            state,
            mode=self.backward_mode,
            solver=self.solver,
            diagnostics=diagnostics,
        )
        self.diagnostics = diagnostics
        has_norms = any(isinstance(m, EquilibriumBatchNorm) for m in self.prox.modules())
        if self.training and has_norms:  # the BatchNorm statistics at the fixed point, once
            with torch.no_grad(), EquilibriumBatchNorm.collecting(self.prox):
                self.iteration(out.detach(), context)
        return out


class DEQ(EquilibriumModel):
    r"""DEQ4IP (Gilton et al.), the deep-equilibrium proximal gradient method, with a DnCNN prox.

    Parameters
    ----------
    features, depth:
        DnCNN hidden features (64) and convolutions (17).
    spectral_norm:
        Spectrally normalise the DnCNN's convolutions by their operator norms (the paper's
        stabilisation; default).
    batchnorm:
        The paper's BatchNorm after every hidden convolution (convolutions without bias; 556,033
        parameters on CT), as ``unrolled.nn.EquilibriumBatchNorm`` (see above).
    contraction:
        ``None`` (the paper's prox) or ``c`` in (0, 1]: the prox becomes
        :math:`\tfrac{c}{2}(z - \mathrm{body}(z))`, Lipschitz constant at most ``c`` with
        ``spectral_norm`` and without ``batchnorm``.
    step:
        Initial :math:`\alpha` (positive, learned through a softplus); see :class:`LUSER` and
        :meth:`calibrate_steps` for CT.
    learn_step:
        Train :math:`\alpha`.
    init:
        ``"adjoint"`` (:math:`x_0 = A^H y`) or ``"measurements"`` (:math:`x_0 = y`, deblurring).
    solver:
        :class:`~unrolled.EquilibriumSolver` (or a dict of its fields). DEQ4IP iterates "until
        convergence (in practice, usually around 50 iterations)" (LUSER Sec. 2.2): the default
        caps the forward solve at 50 evaluations.
    complex, dims, color_channels:
        Image type (:class:`~unrolled.ImageAdapter`).

    Examples
    --------
    >>> model = DEQ(features=64, complex=False)             # doctest: +SKIP
    >>> x_hat = model(y, physops.Blur(kernel), x0=y)        # doctest: +SKIP
    >>> model.equilibrium_diagnostics()[0].forward.converged  # doctest: +SKIP
    """

    def __init__(
        self,
        features: int = 64,
        depth: int = 17,
        spectral_norm: bool = True,
        batchnorm: bool = False,
        contraction: float | None = None,
        step: float = 1.0,
        learn_step: bool = True,
        init: Literal["adjoint", "measurements"] = "adjoint",
        solver: EquilibriumSolver | dict[str, Any] | None = None,
        complex: bool = True,
        dims: int = 2,
        color_channels: int | None = None,
    ):
        super().__init__(ImageAdapter(complex, dims, color_channels), init)
        prox = DnCNN(
            self.adapter.channels,
            features,
            depth,
            dims,
            batchnorm=batchnorm,
            spectral_norm=spectral_norm,
            running_stats=True,
        )
        step_layer = GradientStep(self.adapter, step, learn_step)
        stage = DEQStage(step_layer, prox, as_solver(solver))
        if contraction is not None:
            finite_number(
                "contraction", contraction, low=0, low_open=True, high=1,
                expected="a number in (0, 1] (the Lipschitz bound of the prox) or None",
            )  # fmt: skip
            stage.prox_scale = float(contraction) / 2
        self.stages = nn.ModuleList([stage])
        self.set_strategy("implicit")

    def strategy_problem(self, strategy: Strategy) -> str | None:
        name = strategy.name
        if name == "greedy":
            return (
                "strategy 'greedy' splits a model's stages into modules, but a DEQ is a single "
                "equilibrium stage: use 'implicit' (constant memory in the iterations) or "
                "'backprop'"
            )
        if name == "checkpoint":
            return (
                "strategy 'checkpoint' recomputes stages in the backward pass, but a DEQ is a "
                "single equilibrium stage, so it would store just as much: use 'implicit' "
                "(constant memory in the iterations) or 'backprop'"
            )
        if name == "reversible":
            return (
                "strategy 'reversible' needs invertible stages, but the DEQ's DnCNN prox is not "
                "invertible: use 'implicit' (constant memory in the iterations) or 'backprop'"
            )
        return None
