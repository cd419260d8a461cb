r"""Power iteration for the largest eigenvalue of :math:`A^H A`.

That eigenvalue is the Lipschitz constant of the data-term gradient, for step sizes
:math:`\alpha < 1/L`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from physops._linop import LinearOperator, ensure_operator
from physops._precision import in_full_precision
from physops._validate import finite_number, integer, positive_int

__all__ = ["power_iteration"]


@torch.no_grad()
@in_full_precision
def power_iteration(
    op: LinearOperator,
    x_like: Tensor,
    iterations: int = 50,
    *,
    tol: float = 1e-6,
    batch_dims: int = 0,
    seed: int = 0,
) -> Tensor:
    r"""Largest eigenvalue :math:`L = \lambda_{\max}(A^H A) = \|A\|_2^2` by power iteration.

    Iterates :math:`v \leftarrow A^H A v / \|A^H A v\|` from a seeded random start and returns the
    Rayleigh quotient :math:`\langle v, A^H A v \rangle / \langle v, v \rangle` (a lower bound
    that converges to :math:`L`), stopping early once it changes by less than ``tol`` (relative)
    for every sample. Runs without recording a graph; the result is detached.

    Parameters
    ----------
    op
        The operator :math:`A` (its ``normal`` is used).
    x_like
        A tensor whose shape, dtype and device the iterate takes (its values are ignored), e.g.
        ``physics.adjoint(y)``.
    iterations
        Maximum number of iterations (>= 1).
    tol
        Relative change of the estimate at which to stop early (0 runs all iterations).
    batch_dims
        0 (default): one eigenvalue for the whole batch, the largest over samples, as a 0-dim
        tensor. 1: one per sample, shape ``x_like.shape[:1]`` (per-sample masks and maps differ).
    seed
        Seed of the random start (a private generator: the global RNG is left alone).

    Returns
    -------
    Tensor
        Real, in ``x_like``'s precision, shape ``x_like.shape[:batch_dims]``.
    """
    op = ensure_operator(op, "power_iteration: op")
    if not isinstance(x_like, Tensor) or not (x_like.is_floating_point() or x_like.is_complex()):
        got = f"dtype {x_like.dtype}" if isinstance(x_like, Tensor) else type(x_like).__name__
        raise TypeError(
            f"power_iteration: x_like must be a floating or complex tensor, got {got}: pass a "
            "tensor shaped like the operator's input, e.g. physics.adjoint(y)."
        )
    iterations = positive_int(iterations, "iterations", "power_iteration")
    tol = finite_number(tol, "tol", "power_iteration", low=0)
    batch_dims = integer(
        batch_dims,
        "batch_dims",
        "power_iteration",
        low=0,
        high=min(1, x_like.ndim - 1),
        expected=f"0 or 1 (and < x_like.ndim = {x_like.ndim})",
    )
    dims = tuple(range(batch_dims, x_like.ndim))
    generator = torch.Generator().manual_seed(seed)
    v = torch.randn(x_like.shape, dtype=x_like.dtype, generator=generator).to(x_like.device)

    def norm(t: Tensor) -> Tensor:
        return torch.linalg.vector_norm(t, dim=dims, keepdim=True)

    v = v / norm(v)
    estimate = torch.full(x_like.shape[:batch_dims], -1.0, dtype=x_like.real.dtype)
    estimate = estimate.to(x_like.device)
    for _ in range(iterations):
        w = op.normal(v)
        rayleigh = (v.conj() * w).real.sum(dim=dims)
        change = (rayleigh - estimate).abs()
        estimate = rayleigh
        scale = norm(w)
        v = w / torch.where(scale > 0, scale, torch.ones_like(scale))
        if bool((change <= tol * rayleigh.abs()).all()):
            break
    return estimate
