"""Small test problems with known solutions (shared by the test modules)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def contraction(n: int, radius: float, dtype: torch.dtype, *, hermitian: bool = False) -> Tensor:
    """A random ``n x n`` matrix of spectral norm ``radius`` (Hermitian if asked)."""
    wide = torch.complex128 if dtype.is_complex else torch.float64
    a = torch.randn(n, n, dtype=wide)
    if hermitian:
        a = a + a.mH
    a = a * (radius / torch.linalg.matrix_norm(a, ord=2))
    return a.to(dtype)


def linear_map(A: Tensor, b: Tensor) -> Callable[[Tensor], Tensor]:
    """``f(z) = z A^T + b`` for a batch of row vectors ``z`` (``(batch, n)``)."""

    def f(z: Tensor) -> Tensor:
        return z @ A.T + b

    return f


def direct_solution(A: Tensor, b: Tensor) -> Tensor:
    """The fixed point of ``z = z A^T + b``: ``(I - A) z_b = b_b`` for every sample, in float64."""
    wide = torch.complex128 if A.is_complex() else torch.float64
    eye = torch.eye(A.shape[0], dtype=wide)
    return torch.linalg.solve(eye - A.to(wide), b.to(wide).T).T


def rtol_for(dtype: torch.dtype) -> float:
    """A relative tolerance for comparing solutions of a given precision."""
    return 1e-4 if dtype in (torch.float32, torch.complex64) else 1e-10


def solver_tol_for(dtype: torch.dtype) -> float:
    """A solver tolerance reachable in a given precision."""
    return 1e-6 if dtype in (torch.float32, torch.complex64) else 1e-12
