"""The i-RIM invertible layer ``y = U^T coupling(U x)`` and its residual block (i-RIM Sec. 2.2)."""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from ._base import InvertibleModule, has_forward_hooks
from ._coupling import AdditiveCoupling
from ._householder import HouseholderConv, channel_gradient, mix_channels
from ._reverse import ReverseContext, ReverseStep
from ._validate import integer, one_of, positive_int

__all__ = ["IRIMBlock", "IRIMResidual"]

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


class IRIMResidual(nn.Module):
    r"""i-RIM's residual block with spatial downsampling (the coupling function of IRIMBlock).

    ``g(x) = GLU(T(relu(C2(relu(C1(x))))))``: ``C1`` a convolution with kernel and stride ``d``
    (downsampling by ``d``, like a pixel shuffle followed by a 1x1 convolution), ``C2`` a
    ``kernel_size`` convolution with stride 1, ``T`` a transposed convolution with kernel and
    stride ``d`` back to full size and ``2 * out_channels`` outputs, gated by a GLU. Every
    convolution is weight-normalised (Salimans and Kingma) and ``T`` has no bias. The paper does
    not name the hidden activations; ReLU is used here.

    Shapes: ``(batch, in_channels, *spatial) -> (batch, out_channels, *spatial)`` with every
    spatial size divisible by ``downsample``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int = 64,
        downsample: int = 2,
        dims: int = 2,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        one_of("IRIMResidual", "dims", dims, (1, 2, 3), expected="to be 1, 2 or 3")
        for name, value in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("hidden_channels", hidden_channels),
            ("downsample", downsample),
        ):
            positive_int("IRIMResidual", name, value)
        if positive_int("IRIMResidual", "kernel_size", kernel_size) % 2 == 0:
            raise ValueError(
                f"IRIMResidual expects an odd kernel_size (same-size padding), got {kernel_size}."
            )
        d = downsample
        self.downsample = d
        self.dims = dims
        self.down = weight_norm(_CONV[dims](in_channels, hidden_channels, kernel_size=d, stride=d))
        self.conv = weight_norm(
            _CONV[dims](hidden_channels, hidden_channels, kernel_size, padding=kernel_size // 2)
        )
        # dim=1: one norm per output channel of the transposed convolution (in, out, *k).
        self.up = weight_norm(
            _CONV_T[dims](hidden_channels, 2 * out_channels, kernel_size=d, stride=d, bias=False),
            dim=1,
        )

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.down(x))
        h = F.relu(self.conv(h))
        return F.glu(self.up(h), dim=1)


class IRIMBlock(InvertibleModule):
    r"""i-RIM's invertible layer ``y = U^T coupling(U x)`` (Eqs. 12-15).

    ``x' = U x``, ``y'_1 = x'_1``, ``y'_2 = x'_2 + g(x'_1)``, ``y = U^T y'``.

    ``U`` is a :class:`HouseholderConv`, ``g`` an :class:`IRIMResidual` (strided convolution by
    ``downsample``, a 3x3 convolution, a transposed convolution back, GLU output, weight norm,
    no bias on the last). The back-projection by ``U^T`` keeps the channel semantics of the
    state for downstream layers (i-RIM Eqs. 12-15). The inverse is
    ``x = U^T (y'_1, y'_2 - g(y'_1))`` with ``y' = U y``. The layer reads no context.

    In a :class:`ReversibleSequence` its reverse step runs ``g`` forward and backward once and
    costs six channel-matrix products (no separate inverse pass).

    Parameters
    ----------
    channels : int
        Channels ``C`` of the state.
    hidden_channels : int
        Hidden channels ``k`` of the residual block.
    downsample : int
        Spatial downsampling factor ``d`` of the residual block (i-RIM fans it across layers).
    dims : {1, 2, 3}
        2 for images, 3 for volumes.
    reflections : int
        Householder reflections in ``U`` (default 3, as in the paper).
    split : int, optional
        Channels of ``x'_1`` (default ``C // 2``).

    Shapes
    ------
    ``x``, ``y``: ``(batch, C, *spatial)``, real, every spatial size divisible by ``downsample``.
    """

    def __init__(
        self,
        channels: int,
        hidden_channels: int = 64,
        downsample: int = 2,
        dims: int = 2,
        reflections: int = 3,
        split: int | None = None,
    ) -> None:
        super().__init__()
        positive_int("IRIMBlock", "channels", channels)
        first = channels // 2 if split is None else split
        within = f"to be an int with 0 < split < channels = {channels} (or None: channels // 2)"
        integer("IRIMBlock", "split", first, low=1, high=channels - 1, expected=within)
        self.rotation = HouseholderConv(channels, reflections=reflections, dims=dims)
        self.coupling = AdditiveCoupling(
            IRIMResidual(first, channels - first, hidden_channels, downsample, dims),
            split=first,
            pass_context=False,
        )
        self.downsample = downsample

    def check_state(self, x: Tensor) -> None:
        """Raise ``TypeError``/``ValueError`` unless ``x`` is a state this block accepts."""
        self.rotation.check_state(x)
        spatial = tuple(x.shape[2:])
        if any(s % self.downsample for s in spatial):
            raise ValueError(
                f"IRIMBlock(downsample={self.downsample}) needs every spatial size divisible by "
                f"{self.downsample}, got spatial shape {spatial}: pad or crop the state."
            )

    def forward(self, x: Tensor, *context: object) -> Tensor:
        """``U^T coupling(U x)``."""
        self.check_state(x)
        u = self.rotation.matrix()
        return mix_channels(u.T, self.coupling(mix_channels(u, x)))

    def inverse(self, y: Tensor, *context: object) -> Tensor:
        """``U^T coupling^{-1}(U y)``."""
        self.check_state(y)
        u = self.rotation.matrix()
        return mix_channels(u.T, self.coupling.inverse(mix_channels(u, y)))

    def forward_step(self, x: Tensor, context: tuple[object, ...], overwrite: bool) -> Tensor:
        """Run the forward pass without a graph; the coupling writes into the rotated state."""
        if torch.is_grad_enabled() or has_forward_hooks(self):
            return self(x, *context)
        self.check_state(x)
        u = self.rotation.matrix()
        rotated = self.coupling.forward_step(mix_channels(u, x), (), True)
        return mix_channels(u.T, rotated)

    def reverse_step(self, y: Tensor, grad_y: Tensor, step: ReverseContext) -> ReverseStep:
        """Undo ``U^T``, the coupling's fused step in place, undo ``U``; six channel products."""
        self.check_state(y)
        vectors = self.rotation.vectors
        u, u_graph = self.rotation.matrix_and_graph()
        y_rot = mix_channels(u, y)  # y' = U y
        grad_y_rot = mix_channels(u, grad_y)  # y = U^T y'  =>  dL/dy' = U dL/dy
        # U enters twice: x' = U x and y = U^T y', so dL/dU = gx' x^T + y' gy^T; the second
        # term now, before the coupling overwrites y'
        grad_u = channel_gradient(grad_y, y_rot).T if vectors.requires_grad else None
        inner_step = replace(
            step,
            tensors=tuple(t for t in step.tensors_of(self) if t is not vectors),
            x_known=None,
            overwrite_state=True,
            overwrite_grad=True,
        )
        inner = self.coupling.reverse_step(y_rot, grad_y_rot, inner_step)
        x = mix_channels(u.T, inner.x)  # x = U^T x'
        grad_x = mix_channels(u.T, inner.grad_x)  # x' = U x  =>  dL/dx = U^T dL/dx'
        grads = list(inner.grads)
        if grad_u is not None:
            grad_u = grad_u + channel_gradient(inner.grad_x, x)
            grads.append((vectors, self.rotation.vectors_grad(u_graph, grad_u)))
        return ReverseStep(x, grad_x, grads, inner.residual)
