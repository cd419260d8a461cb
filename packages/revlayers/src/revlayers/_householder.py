"""Orthogonal 1x1 (1x1x1) convolution built from Householder reflections (i-RIM Eqs. 12-16)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._base import InvertibleModule
from ._precision import full_precision
from ._reverse import ReverseContext, ReverseStep, relative_error
from ._validate import integer, one_of

__all__ = ["HouseholderConv", "channel_gradient", "mix_channels"]


def mix_channels(matrix: Tensor, x: Tensor) -> Tensor:
    """Apply a ``(C, C)`` channel matrix to ``x`` of shape ``(B, C, *spatial)``: ``M x`` per pixel.

    A matrix product over the channels, computed in full float32 precision whatever the TF32
    settings (:func:`~revlayers.full_precision`), so that an orthogonal ``M`` followed by
    ``M^T`` gives back ``x`` to float32 rounding on any GPU. Complex states are mixed by the
    real matrix cast to their dtype. Returns a new tensor.
    """
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    m = matrix.to(x.dtype) if x.is_complex() else matrix
    with full_precision(x, convolutions=False):
        out = torch.matmul(m, flat)
    return out.reshape(x.shape)


def channel_gradient(a: Tensor, b: Tensor) -> Tensor:
    """``sum_{batch, pixels} Re(conj(a) b^T)``: the real gradient of a channel matrix.

    For ``z = M w`` with real ``M`` and upstream gradient ``a = dL/dz`` (torch's convention for
    complex tensors), ``dL/dM = Re(conj(a) w^T)`` summed over batch and pixels.
    """
    fa = a.reshape(a.shape[0], a.shape[1], -1)
    fb = b.reshape(b.shape[0], b.shape[1], -1)
    with full_precision(a, convolutions=False):
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
        integer("HouseholderConv", "channels", channels, low=2)
        integer("HouseholderConv", "reflections", reflections, low=1)
        one_of(
            "HouseholderConv",
            "dims",
            dims,
            (1, 2, 3),
            expected="to be 1, 2 or 3 (spatial dimensions of the state)",
        )
        self.channels = channels
        self.reflections = reflections
        self.dims = dims
        self.vectors = nn.Parameter(torch.randn(reflections, channels))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, reflections={self.reflections}, dims={self.dims}"

    def matrix(self) -> Tensor:
        """Return the orthogonal ``(C, C)`` matrix ``U = H_K ... H_1`` (in full precision)."""
        v = self.vectors
        u = torch.eye(self.channels, dtype=v.dtype, device=v.device)
        with full_precision(v, convolutions=False):
            for k in range(self.reflections):
                # H u = u - 2 v (v^T u) / ||v||^2, applied left to right: H_1 first.
                u = u - (2.0 / torch.dot(v[k], v[k])) * torch.outer(v[k], v[k] @ u)
        return u

    def matrix_and_graph(self) -> tuple[Tensor, Tensor]:
        """``U`` detached and ``U`` with a graph to the vectors (for :meth:`vectors_grad`)."""
        with torch.enable_grad():
            u_graph = self.matrix()
        return u_graph.detach(), u_graph

    def vectors_grad(self, u_graph: Tensor, grad_u: Tensor) -> Tensor:
        """``dL/dvectors`` from ``dL/dU`` through the Householder product."""
        (g,) = torch.autograd.grad(u_graph, [self.vectors], grad_u)
        return g

    def check_state(self, x: Tensor) -> None:
        """Raise ``TypeError``/``ValueError`` unless ``x`` is a ``(batch, C, *spatial)`` state."""
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
        """``U x`` over the channels."""
        self.check_state(x)
        return mix_channels(self.matrix(), x)

    def inverse(self, y: Tensor, *context: object) -> Tensor:
        """``U^T y`` over the channels."""
        self.check_state(y)
        return mix_channels(self.matrix().T, y)

    def reverse_step(self, y: Tensor, grad_y: Tensor, step: ReverseContext) -> ReverseStep:
        """``x = U^T y``, ``dL/dx = U^T dL/dy``, ``dL/dU = dL/dy x^T`` (no recomputation)."""
        self.check_state(y)
        u, u_graph = self.matrix_and_graph()
        x = mix_channels(u.T, y)
        grad_x = mix_channels(u.T, grad_y)
        grads: list[tuple[Tensor, Tensor | None]] = []
        if self.vectors.requires_grad:
            grads.append((self.vectors, self.vectors_grad(u_graph, channel_gradient(grad_y, x))))
        residual = relative_error(mix_channels(u, x) - y, y) if step.want_residual else None
        return ReverseStep(x, grad_x, grads, residual)
