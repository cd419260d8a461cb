r"""The invertible recurrent inference machine (i-RIM; Putzky & Welling 2019, Eq. 10).

The machine state :math:`(\eta_t, s_t)` is ONE real tensor of ``channels`` channels: the image
estimate :math:`\eta` in the first ``c`` channels (2 for complex images, the real and imaginary
parts; 1 for real images) and the memory :math:`s` in the rest. Each time step :math:`t`:

.. math::

    \text{forward:}\quad \eta'_t &= \eta_t, &
    s'_t &= s_t + g_t(\nabla D(\eta'_t)), &
    (\eta_{t+1}, s_{t+1}) &= h_t(\eta'_t, s'_t) \\
    \text{reverse:}\quad (\eta'_t, s'_t) &= h_t^{-1}(\eta_{t+1}, s_{t+1}), &
    s_t &= s'_t - g_t(\nabla D(\eta'_t)), &
    \eta_t &= \eta'_t

with :math:`\nabla D(\eta) = A^H(A\eta - y)` (identity link :math:`\Psi`, i-RIM Sec. 3.1) and
:math:`g_t` the simplest injection of Eq. 19: the gradient is added to the first ``c`` channels
of :math:`s` and nothing to the others. The injection is an additive coupling
(:class:`revlayers.AdditiveCoupling` reading :math:`\eta` and the context ``(y, physics)``), so
its reverse step costs one gradient evaluation and one backward of it. :math:`h_t` is a stack of
``blocks`` :class:`revlayers.IRIMBlock` s, :math:`y = U^\top \mathrm{coupling}(U x)` with an
orthogonal Householder :math:`1\times1` convolution :math:`U` (Eqs. 12-16) and a residual block
with spatial downsampling by a factor that fans out and back in across the stack
(:func:`fanned_downsampling`). No weights are shared across time steps. Every stage is an
:class:`~unrolled.InvertibleStage`, so ``strategy="reversible"`` trains the whole machine
without storing activations: beyond the parameters, training memory does not grow with the number
of steps and blocks (i-RIM Table 1).

The loss is taken on the last step only (i-RIM Sec. 3.3); the read-out is the :math:`\eta`
channels of the final state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

import revlayers

from .._base import InvertibleStage, UnrolledModel
from .._strategy import Strategy
from .._validate import positive_int
from ..nn import ImageAdapter
from ._rim import Init, check_gradient_physics, check_init, data_gradient, initial_image

__all__ = ["IRIM", "fanned_downsampling"]


def fanned_downsampling(blocks: int, max_factor: int = 8) -> tuple[int, ...]:
    """Downsampling factors that fan out to ``max_factor`` and back in, one per block.

    The first ``ceil(blocks / 2)`` factors climb the powers of two from 1 towards
    ``max_factor`` evenly, at most one power per block; the rest mirror them.
    ``fanned_downsampling(10)`` is ``(1, 1, 2, 4, 8, 8, 4, 2, 1, 1)``, ``fanned_downsampling(12)``
    is ``(1, 1, 2, 2, 4, 8, 8, 4, 2, 2, 1, 1)`` (the factors of the i-RIM reference code's
    fastMRI-challenge model) and ``fanned_downsampling(5)`` is ``(1, 2, 4, 2, 1)``. The i-RIM
    paper uses "a fanned downsampling structure" of 10 layers per step but leaves the factors to
    an appendix that this implementation did not have.

    Parameters
    ----------
    blocks:
        Number of :class:`revlayers.IRIMBlock` s per time step.
    max_factor:
        Largest factor, a power of two (image sizes must be divisible by it).
    """
    positive_int("blocks", blocks)
    if (
        isinstance(max_factor, bool)
        or not isinstance(max_factor, int)
        or max_factor < 1
        or max_factor & (max_factor - 1)
    ):
        raise ValueError(f"max_factor must be a power of two (1, 2, 4, 8, ...), got {max_factor!r}")
    top = max_factor.bit_length() - 1  # max_factor = 2**top
    half = (blocks + 1) // 2
    # exponents climb evenly from 0 to top, never by more than one level per block
    rising = [2 ** min(i * top // max(half - 1, 1), i) for i in range(half)]
    return tuple(rising + rising[: blocks // 2][::-1])


def _per_block(name: str, value: int | Sequence[int], blocks: int) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        values: tuple[object, ...] = (value,) * blocks
    elif isinstance(value, Sequence) and not isinstance(value, str):
        values = tuple(value)
    else:
        raise TypeError(
            f"{name} must be one integer or a sequence of one integer per block, got "
            f"{type(value).__name__} {value!r}"
        )
    if len(values) != blocks:
        raise ValueError(
            f"{name} must be one integer or one per block ({blocks} values), got {len(values)}: "
            f"{value!r}"
        )
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must hold positive integers, got {value!r}")
    return values  # type: ignore[return-value]


class _GradientInjection(nn.Module):
    """``g_t`` of i-RIM Eq. 19 as an additive-coupling function: ``eta -> grad D(eta)``."""

    def __init__(self, adapter: ImageAdapter):
        super().__init__()
        self.adapter = adapter

    def forward(self, eta: Tensor, y: Tensor, physics: nn.Module) -> Tensor:
        image = self.adapter.from_net(eta)
        return self.adapter.to_net(data_gradient(physics, image, y))


class IRIM(UnrolledModel):
    r"""Invertible recurrent inference machine (i-RIM Eq. 10), ``x_hat = model(y, physics, x0)``.

    See the module docstring for the update equations.

    Parameters
    ----------
    steps:
        Number of time steps T (i-RIM paper: 8).
    channels:
        Channels of the machine state :math:`(\eta, s)` (paper: 64). At least twice the image
        channels: the gradient is injected into the first image-channels of :math:`s`.
    blocks:
        :class:`revlayers.IRIMBlock` s per time step (paper: 10).
    hidden:
        Hidden channels of each block's residual function, one integer or one per block (64).
    downsampling:
        Spatial downsampling factor of each block's residual function, one per block (default:
        :func:`fanned_downsampling` ``(blocks)``). Image sizes must be divisible by each factor.
    reflections:
        Householder reflections per orthogonal :math:`1\times1` convolution (paper: 3).
    init:
        ``"zeros"`` (default; the whole machine state starts at zero, i-RIM Sec. 3.3) or
        ``"adjoint"`` (:math:`\eta_0 = A^H y`, :math:`s_0 = 0`). A given ``x0`` always starts
        :math:`\eta`.
    complex, dims, color_channels:
        Image type (see :class:`~unrolled.ImageAdapter`): complex 2D MRI by default;
        ``dims=3`` for volumes (3D convolutions in every block; the paper's i-RIM 3D).

    Shapes
    ------
    =====================  ===========================================  ===============
    tensor                 shape                                        dtype
    =====================  ===========================================  ===============
    ``y``                  as ``physics`` produces it                   physics' dtype
    state                  ``(B, channels, *S)``; ``[:, :c]`` is eta    real
    ``x_hat``              ``(B, *S)`` (``(B, C, *S)`` with colour)      image dtype
    =====================  ===========================================  ===============

    Strategies
    ----------
    ``"backprop"``, ``"checkpoint"``, ``"reversible"`` (memory flat in depth; hybrid
    checkpoints and drift checks through ``checkpoint_every`` and ``check_drift``) and
    ``"greedy"`` (the steps share no weights). ``"implicit"`` is refused (no fixed point).

    Examples
    --------
    The paper's 2D and 3D models (64 state channels, 10 blocks of 64 hidden channels, 8 steps)
    and a miniature that trains in seconds on a CPU:

    >>> irim_2d = IRIM(steps=8, channels=64, blocks=10, hidden=64)            # doctest: +SKIP
    >>> irim_3d = IRIM(steps=8, channels=64, blocks=10, hidden=64, dims=3)    # doctest: +SKIP
    >>> tiny = IRIM(steps=2, channels=8, blocks=2, hidden=8, downsampling=(1, 2))
    >>> tiny.set_strategy("reversible").strategy.name
    'reversible'
    """

    def __init__(
        self,
        steps: int = 8,
        channels: int = 64,
        blocks: int = 10,
        hidden: int | Sequence[int] = 64,
        downsampling: Sequence[int] | None = None,
        reflections: int = 3,
        init: Init = "zeros",
        complex: bool = True,
        dims: int = 2,
        color_channels: int | None = None,
    ):
        super().__init__(ImageAdapter(complex, dims, color_channels))
        for name, value in (("steps", steps), ("channels", channels), ("blocks", blocks)):
            positive_int(name, value)
        c = self.adapter.channels
        if channels < 2 * c:
            raise ValueError(
                f"channels (of the machine state) must be at least {2 * c}: the image takes {c} "
                f"channel(s) and the data-term gradient is injected into the next {c} (i-RIM "
                f"Eq. 19); got channels={channels} (the paper uses 64)"
            )
        self.init = check_init(init)
        factors = fanned_downsampling(blocks) if downsampling is None else downsampling
        self.downsampling = _per_block("downsampling", factors, blocks)
        self.hidden = _per_block("hidden", hidden, blocks)
        self.steps = steps
        self.channels = channels
        # lcm of the factors: every spatial size must be divisible by it
        self._divisor = math.lcm(*self.downsampling)

        def stage() -> InvertibleStage:
            inject = revlayers.AdditiveCoupling(
                _GradientInjection(self.adapter),
                split=c,
                pass_through=channels - 2 * c,
                update="second",
                pass_context=True,
            )
            h = [
                revlayers.IRIMBlock(channels, k, d, dims=dims, reflections=reflections)
                for k, d in zip(self.hidden, self.downsampling)
            ]
            return InvertibleStage([inject, *h])

        self.stages = nn.ModuleList([stage() for _ in range(steps)])

    def check_physics(self, physics: object) -> None:
        check_gradient_physics(type(self).__name__, physics)

    def initial_state(self, y: Tensor, physics: nn.Module, x0: Tensor | None) -> Tensor:
        eta = initial_image(type(self).__name__, self.adapter, self.init, y, physics, x0)
        spatial = tuple(eta.shape[2:])
        if any(s % self._divisor for s in spatial):
            raise ValueError(
                f"IRIM downsamples by {self._divisor} (downsampling={self.downsampling}), so every "
                f"image size must be divisible by {self._divisor}; got image shape {spatial}: pad "
                "or crop the images, or pass smaller downsampling factors"
            )
        s = eta.new_zeros(eta.shape[0], self.channels - eta.shape[1], *spatial)
        return torch.cat([eta, s], dim=1)

    def readout(self, state: Tensor) -> Tensor:
        return self.adapter.from_net(state[:, : self.adapter.channels])

    def strategy_problem(self, strategy: Strategy) -> str | None:
        if strategy.forward_name == "implicit":
            return (
                "strategy 'implicit' needs a model with a fixed point (LUSER, DEQ); the i-RIM runs "
                "a fixed number of time steps and has none: use 'reversible' (memory flat in "
                "depth), 'checkpoint' or 'greedy'"
            )
        return super().strategy_problem(strategy)
