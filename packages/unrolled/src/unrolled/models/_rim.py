r"""The recurrent inference machine (RIM; Putzky & Welling 2017, as the i-RIM paper trains it).

The machine state is :math:`(\eta_t, h^1_t, h^2_t)`: the image estimate :math:`\eta` as real
channels and the hidden states of two convolutional GRU cells. Every time step reads the
gradient of the data term :math:`D(\eta) = \tfrac12 \|A \eta - y\|^2` (i-RIM Eqs. 6-7 with the
identity link :math:`\Psi`, i-RIM Sec. 3.1):

.. math::

    g_t &= \nabla D(\eta_t) = A^H (A \eta_t - y) \\
    h^1_{t+1} &= \mathrm{GRU}_1\big(\mathrm{ReLU}(\mathrm{conv}_1([\eta_t, g_t])),\ h^1_t\big) \\
    h^2_{t+1} &= \mathrm{GRU}_2\big(\mathrm{ReLU}(\mathrm{conv}_2(h^1_{t+1})),\ h^2_t\big) \\
    \eta_{t+1} &= \eta_t + \mathrm{conv}_3(h^2_{t+1})

with one set of weights for every time step (a RIM is a recurrent network) and the loss summed
over all time steps (``loss_over_stages = True``; i-RIM Sec. 3.3 averages it).

==============  ===========================================================================
layer           settings (i-RIM Sec. 3.3, after Lønning et al.)
==============  ===========================================================================
``conv1``       :math:`5 \times 5`, ``2 * channels -> features``, ReLU
``gru1``        :class:`~unrolled.nn.ConvGRUCell`, ``hidden`` channels (64)
``conv2``       :math:`3 \times 3`, dilation 2, ``hidden -> features``, ReLU
``gru2``        :class:`~unrolled.nn.ConvGRUCell`, ``hidden`` channels (64)
``conv3``       :math:`3 \times 3`, ``hidden -> channels``, no bias: the update of :math:`\eta`
==============  ===========================================================================

The update of :math:`\eta` depends on :math:`\eta` itself, so a RIM step is not invertible
(i-RIM Sec. 2.1): train it with ``"backprop"`` or ``"checkpoint"``, and use
:class:`~unrolled.IRIM` for reversible (constant-memory) training.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._base import Stage, StageContext, UnrolledModel
from .._strategy import Strategy
from .._validate import positive_int
from ..nn import ConvGRUCell, ImageAdapter, conv_nd

__all__ = ["RIM", "data_gradient"]

Init = Literal["zeros", "adjoint"]
_INITS = ("zeros", "adjoint")


# torch.compile runs the physics eagerly (a graph break): torch 2.13 cannot take a complex view
# (view_as_complex) into a graph as an input
@torch.compiler.disable
def data_gradient(physics: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    r"""Return :math:`A^H(A x - y)`, the gradient of :math:`D(x) = \tfrac12 \|A x - y\|^2`.

    Linear operators (with ``forward`` and ``adjoint``) use that formula; a nonlinear model
    without an adjoint (:class:`physops.FourierPtychography`) supplies its own data-term
    gradient as ``physics.gradient(x, y)``.
    """
    adjoint = getattr(physics, "adjoint", None)
    if callable(adjoint):
        return adjoint(physics(x) - y)
    gradient = getattr(physics, "gradient")  # noqa: B009 - nn.Module attributes type as Tensor
    return gradient(x, y)


def check_gradient_physics(model: str, physics: object) -> None:
    """Raise ``TypeError`` unless ``physics`` has a data-term gradient (:func:`data_gradient`)."""
    linear = all(callable(getattr(physics, name, None)) for name in ("forward", "adjoint"))
    if not linear and not callable(getattr(physics, "gradient", None)):
        raise TypeError(
            f"{model} needs a physics operator with forward(x) and adjoint(y) (a "
            "physops.LinearOperator), or a nonlinear model with gradient(x, y) (the data-term "
            f"gradient, like physops.FourierPtychography), got {type(physics).__name__}"
        )


def check_init(init: str) -> str:
    if init not in _INITS:
        raise ValueError(
            f"init must be one of {', '.join(_INITS)} ('zeros': the machine state starts at zero "
            f"as in i-RIM Sec. 3.3; 'adjoint': the image starts at A^H y), got {init!r}"
        )
    return init


def initial_image(
    model: str, adapter: ImageAdapter, init: str, y: Tensor, physics: nn.Module, x0: Tensor | None
) -> Tensor:
    """Return the starting image as real channels ``(B, channels, *spatial)``.

    ``x0`` when given (already validated); else ``A^H y`` for ``init="adjoint"`` and zeros shaped
    like ``A^H y`` for ``init="zeros"``. Nonlinear physics without an adjoint need ``x0``.
    """
    if x0 is not None:
        return adapter.to_net(x0)
    adjoint = getattr(physics, "adjoint", None)
    if not callable(adjoint):
        raise ValueError(
            f"{model} cannot size its initial state from {type(physics).__name__}, which has no "
            "adjoint: pass x0 (an initial image of shape (batch, *image_shape), e.g. a "
            "low-resolution estimate; at zero the data-term gradient of intensity measurements "
            "vanishes, so the machine would not move)"
        )
    image = adjoint(y)
    if not isinstance(image, Tensor):
        raise TypeError(
            f"{model}: physics.adjoint(y) returned {type(image).__name__}, expected a tensor"
        )
    adapter.check(image, "the adjoint image A^H y")
    net = adapter.to_net(image)
    return net if init == "adjoint" else torch.zeros_like(net)


class _RIMStep(Stage):
    """One RIM time step on the state ``(eta, h1, h2)`` (shared by every time step)."""

    def __init__(self, adapter: ImageAdapter, hidden: int, features: int, dims: int):
        super().__init__()
        self.adapter = adapter
        c = adapter.channels
        self.conv1 = conv_nd(dims, 2 * c, features, 5, padding=2)
        self.gru1 = ConvGRUCell(features, hidden, dims)
        self.conv2 = conv_nd(dims, hidden, features, 3, padding=2, dilation=2)
        self.gru2 = ConvGRUCell(features, hidden, dims)
        self.conv3 = conv_nd(dims, hidden, c, 3, padding=1, bias=False)

    def forward(
        self, state: tuple[Tensor, Tensor, Tensor], context: StageContext
    ) -> tuple[Tensor, Tensor, Tensor]:
        eta, h1, h2 = state
        grad = self.adapter.to_net(
            data_gradient(context.physics, self.adapter.from_net(eta), context.y)
        )
        h1 = self.gru1(F.relu(self.conv1(torch.cat([eta, grad], dim=1))), h1)
        h2 = self.gru2(F.relu(self.conv2(h1)), h2)
        return eta + self.conv3(h2), h1, h2


class RIM(UnrolledModel):
    r"""Recurrent inference machine: ``x_hat = model(y, physics, x0=None)``.

    See the module docstring for the update equations. One set of weights serves all
    ``steps`` time steps; the training loop sums the loss over every step's estimate
    (:meth:`intermediates`), as ``loss_over_stages`` tells it.

    Parameters
    ----------
    steps:
        Number of time steps T (i-RIM paper: 8).
    hidden:
        Hidden channels of each GRU cell (64).
    features:
        Output channels of ``conv1`` and ``conv2`` (default: ``hidden``; 64 in the paper).
    init:
        ``"zeros"`` (default; the machine state starts at zero, i-RIM Sec. 3.3) or
        ``"adjoint"`` (the image starts at :math:`A^H y`). A given ``x0`` always starts the image;
        the hidden states always start at zero.
    complex, dims, color_channels:
        Image type (see :class:`~unrolled.ImageAdapter`): complex 2D MRI by default;
        ``dims=3`` for volumes (3D convolutions).

    Shapes
    ------
    =========================  ==========================================  ===============
    tensor                     shape                                       dtype
    =========================  ==========================================  ===============
    ``y``                      as ``physics`` produces it                  physics' dtype
    state ``(eta, h1, h2)``    ``(B, c, *S)``, ``(B, hidden, *S)`` twice   real
    ``x_hat``                  ``(B, *S)`` (``(B, C, *S)`` with colour)     image dtype
    =========================  ==========================================  ===============

    ``c`` is 2 for complex images and 1 (or ``color_channels``) for real ones.

    Strategies
    ----------
    ``"backprop"`` and ``"checkpoint"``. ``"reversible"`` is refused (the RIM step is not
    invertible: use :class:`~unrolled.IRIM`), ``"greedy"`` too (all time steps share one set of
    weights) and ``"implicit"`` (no fixed point).

    Examples
    --------
    >>> model = RIM(steps=4, hidden=16)                          # doctest: +SKIP
    >>> estimates = model.intermediates(y, physops.Sense(maps, mask))  # doctest: +SKIP
    >>> loss = sum(((x - target).abs() ** 2).mean() for x in estimates)  # doctest: +SKIP
    """

    loss_over_stages = True

    def __init__(
        self,
        steps: int = 8,
        hidden: int = 64,
        features: int | None = None,
        init: Init = "zeros",
        complex: bool = True,
        dims: int = 2,
        color_channels: int | None = None,
    ):
        super().__init__(ImageAdapter(complex, dims, color_channels))
        positive_int("steps", steps)
        positive_int("hidden", hidden)
        features = positive_int("features", features, optional=True) or hidden
        self.init = check_init(init)
        self.steps = steps
        self.hidden = hidden
        self.cell = _RIMStep(self.adapter, hidden, features, dims)
        # the same stage T times: shared weights over time (a recurrent network)
        self.stages = nn.ModuleList([self.cell] * steps)

    def check_physics(self, physics: object) -> None:
        check_gradient_physics(type(self).__name__, physics)

    def initial_state(
        self, y: Tensor, physics: nn.Module, x0: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        eta = initial_image(type(self).__name__, self.adapter, self.init, y, physics, x0)
        h = eta.new_zeros(eta.shape[0], self.hidden, *eta.shape[2:])
        return eta, h, h.clone()

    def readout(self, state: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        return self.adapter.from_net(state[0])

    def strategy_problem(self, strategy: Strategy) -> str | None:
        forward = strategy.forward_name
        if strategy.name == "greedy":
            return (
                "strategy 'greedy' trains separate modules with their own weights, but the RIM "
                f"shares one set of weights across all {self.steps} time steps (it is a recurrent "
                "network): use 'checkpoint' to save memory, or unrolled.IRIM (no weight sharing) "
                "with 'greedy'"
            )
        if forward == "reversible":
            return (
                "strategy 'reversible' needs invertible steps, but the RIM's update "
                "eta += f(grad D(eta), eta, h) depends on eta itself and its GRU states are "
                "overwritten, so a step cannot be inverted (i-RIM Sec. 2.1): use unrolled.IRIM, "
                "the invertible RIM, for reversible training, or 'checkpoint' with the RIM"
            )
        if forward == "implicit":
            return (
                "strategy 'implicit' needs a model with a fixed point (LUSER, DEQ); the RIM runs "
                "a fixed number of time steps and has none: use 'checkpoint' to save memory (or "
                "unrolled.IRIM with 'reversible')"
            )
        return None
