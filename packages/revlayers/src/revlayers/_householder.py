"""Orthogonal 1x1 (1x1x1) convolution built from Householder reflections (i-RIM Eqs. 12-16)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._base import InvertibleModule, _Context, _relative, _Reversed

__all__ = ["HouseholderConv"]


_CONVS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _rotate(matrix: Tensor, x: Tensor) -> Tensor:
    """Apply a ``(C, C)`` channel matrix to ``x`` of shape ``(B, C, *spatial)``.

    Real states use a 1x1 convolution (returns a fresh tensor, not a view); complex states a
    batched matrix product with the matrix cast to the complex dtype.
    """
    spatial = x.dim() - 2
    if not x.is_complex() and spatial in _CONVS:
        return _CONVS[spatial](x, matrix.reshape(*matrix.shape, *([1] * spatial)))
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    return torch.matmul(matrix.to(x.dtype), flat).reshape(x.shape)


def _outer_sum(a: Tensor, b: Tensor) -> Tensor:
    """``sum_{batch, pixels} Re(conj(a) b^T)``: the real gradient of a channel matrix.

    For ``z = M w`` with real ``M`` and upstream gradient ``a = dL/dz`` (torch's convention for
    complex tensors), ``dL/dM = Re(conj(a) w^T)`` summed over batch and pixels.
    """
    fa = a.reshape(a.shape[0], a.shape[1], -1)
    fb = b.reshape(b.shape[0], b.shape[1], -1)
    if fa.is_complex():
        return torch.matmul(fa.conj(), fb.transpose(1, 2)).sum(0).real
    return torch.matmul(fa, fb.transpose(1, 2)).sum(0)


class HouseholderConv(InvertibleModule):
    r"""Orthogonal channel mixing ``y = U x`` with ``U = H_K...H_1`` (a 1x1 or 1x1x1 convolution).

    Each reflection is ``H_k = I - 2 v_k v_k^T / ||v_k||^2`` with a learnable vector ``v_k``
    (Tomczak and Welling; i-RIM Eq. 16). ``U`` is orthogonal for any ``v_k``, so the layer
    neither vanishes nor explodes gradients and its inverse is the transpose: ``x = U^T y``.
    Complex states are mixed by the same real ``U`` (then unitary).

    Parameters
    ----------
    channels : int
        Number of channels ``C`` (dimension 1 of the state).
    reflections : int
        Number ``K`` of Householder reflections (i-RIM uses 3).
    dims : {1, 2, 3}
        Spatial dimensions of the state: ``2`` for images, ``3`` for volumes.

    Shapes
    ------
    ============  ==========================  ==============================
    tensor        shape                       dtype
    ============  ==========================  ==============================
    ``x``, ``y``  ``(batch, C, *spatial)``,   the parameters' dtype, or its
                  ``len(spatial) == dims``    complex counterpart
    ``vectors``   ``(K, C)``                  real
    ============  ==========================  ==============================
    """

    def __init__(self, channels: int, reflections: int = 3, dims: int = 2) -> None:
        super().__init__()
        for name, value, low in (("channels", channels, 2), ("reflections", reflections, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(
                    f"HouseholderConv expects {name} to be an int >= {low}, got {value!r}."
                )
        if dims not in (1, 2, 3):
            raise ValueError(
                f"HouseholderConv expects dims to be 1, 2 or 3 (spatial dimensions of the state), "
                f"got {dims!r}."
            )
        self.channels = channels
        self.reflections = reflections
        self.dims = dims
        self.vectors = nn.Parameter(torch.randn(reflections, channels))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, reflections={self.reflections}, dims={self.dims}"

    def matrix(self) -> Tensor:
        """The orthogonal ``(C, C)`` matrix ``U = H_K ... H_1``."""
        u = torch.eye(self.channels, dtype=self.vectors.dtype, device=self.vectors.device)
        for v in self.vectors:
            # H u = u - 2 v (v^T u) / ||v||^2, applied left to right: H_1 first.
            u = u - (2.0 / torch.dot(v, v)) * torch.outer(v, v @ u)
        return u

    def _check(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"HouseholderConv expects a tensor, got {type(x).__name__}.")
        if x.dim() != 2 + self.dims or x.shape[1] != self.channels:
            raise ValueError(
                f"HouseholderConv(channels={self.channels}, dims={self.dims}) expects a state of "
                f"shape (batch, {self.channels}, {', '.join(['*'] * self.dims)}), got "
                f"{tuple(x.shape)}."
            )
        real = x.real.dtype if x.is_complex() else x.dtype
        if real != self.vectors.dtype:
            raise TypeError(
                f"HouseholderConv has {self.vectors.dtype} parameters but the state is {x.dtype}: "
                f"convert the layer with .to({real}) (or the state to the layer's dtype)."
            )

    def forward(self, x: Tensor, *context: object) -> Tensor:
        self._check(x)
        return _rotate(self.matrix(), x)

    def inverse(self, y: Tensor, *context: object) -> Tensor:
        self._check(y)
        return _rotate(self.matrix().T, y)

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
            u = self.matrix()
            x = _rotate(u.T, y)
            grad_x = _rotate(u.T, grad_y)
        grads: list[tuple[Tensor, Tensor | None]] = []
        if self.vectors.requires_grad:
            with torch.enable_grad():
                u_graph = self.matrix()
            (g,) = torch.autograd.grad(u_graph, [self.vectors], _outer_sum(grad_y, x))
            grads.append((self.vectors, g))
        residual = None
        if want_residual:
            with torch.no_grad():
                residual = _relative(_rotate(u, x) - y, y)
        return _Reversed(x, grad_x, grads, residual)
