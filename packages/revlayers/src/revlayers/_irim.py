"""The i-RIM invertible layer ``y = U^T coupling(U x)`` and its residual block (i-RIM Sec. 2.2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from ._base import InvertibleModule, _Context, _Reversed
from ._coupling import AdditiveCoupling
from ._householder import HouseholderConv, _outer_sum, _rotate

__all__ = ["IRIMBlock", "IRIMResidual"]

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


def _positive_int(owner: str, name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner} expects {name} to be an int >= 1, got {value!r}.")
    return value


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
        if dims not in _CONV:
            raise ValueError(f"IRIMResidual expects dims to be 1, 2 or 3, got {dims!r}.")
        for name, value in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("hidden_channels", hidden_channels),
            ("downsample", downsample),
        ):
            _positive_int("IRIMResidual", name, value)
        if _positive_int("IRIMResidual", "kernel_size", kernel_size) % 2 == 0:
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
        _positive_int("IRIMBlock", "channels", channels)
        first = channels // 2 if split is None else split
        if isinstance(first, bool) or not isinstance(first, int) or not 0 < first < channels:
            raise ValueError(
                f"IRIMBlock expects 0 < split < channels = {channels}, got split={split!r}."
            )
        self.rotation = HouseholderConv(channels, reflections=reflections, dims=dims)
        self.coupling = AdditiveCoupling(
            IRIMResidual(first, channels - first, hidden_channels, downsample, dims),
            split=first,
            pass_context=False,
        )
        self.downsample = downsample

    def _check(self, x: Tensor) -> None:
        self.rotation._check(x)
        spatial = tuple(x.shape[2:])
        if any(s % self.downsample for s in spatial):
            raise ValueError(
                f"IRIMBlock(downsample={self.downsample}) needs every spatial size divisible by "
                f"{self.downsample}, got spatial shape {spatial}: pad or crop the state."
            )

    def forward(self, x: Tensor, *context: object) -> Tensor:
        self._check(x)
        u = self.rotation.matrix()
        return _rotate(u.T, self.coupling(_rotate(u, x)))

    def inverse(self, y: Tensor, *context: object) -> Tensor:
        self._check(y)
        u = self.rotation.matrix()
        return _rotate(u.T, self.coupling.inverse(_rotate(u, y)))

    def _reverse(
        self,
        y: Tensor,
        grad_y: Tensor,
        context: _Context,
        x_known: Tensor | None,
        want_residual: bool,
    ) -> _Reversed:
        self._check(y)
        with torch.no_grad():
            u = self.rotation.matrix()
            y_rot = _rotate(u, y)  # y' = U y
            grad_y_rot = _rotate(u, grad_y)  # y = U^T y'  =>  dL/dy' = U dL/dy
        inner = self.coupling._reverse(y_rot, grad_y_rot, context, None, want_residual)
        with torch.no_grad():
            x = _rotate(u.T, inner.x)  # x = U^T x'
            grad_x = _rotate(u.T, inner.grad_x)  # x' = U x  =>  dL/dx = U^T dL/dx'
        grads = list(inner.grads)
        vectors = self.rotation.vectors
        if vectors.requires_grad:
            # U enters twice: x' = U x and y = U^T y'. dL/dU = gx' x^T + y' gy^T.
            grad_u = _outer_sum(inner.grad_x, x) + _outer_sum(grad_y, y_rot).T
            with torch.enable_grad():
                u_graph = self.rotation.matrix()
            (g,) = torch.autograd.grad(u_graph, [vectors], grad_u)
            grads.append((vectors, g))
        return _Reversed(x, grad_x, grads, inner.residual)
