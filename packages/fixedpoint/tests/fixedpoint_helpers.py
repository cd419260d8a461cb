"""Small test problems with known solutions (shared by the test modules)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn


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


class Block(nn.Module):
    """A small contraction f(z, x) = tanh(W2 tanh(W1 z) * 0.5 + U x) with learnable weights."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.W1 = nn.Linear(n, n, dtype=torch.float64)
        self.W2 = nn.Linear(n, n, bias=False, dtype=torch.float64)
        self.U = nn.Linear(n, n, bias=False, dtype=torch.float64)
        with torch.no_grad():
            for lin in (self.W1, self.W2):
                lin.weight.mul_(0.9 / torch.linalg.matrix_norm(lin.weight, ord=2))

    def forward(self, z, x):
        return torch.tanh(0.5 * self.W2(torch.tanh(self.W1(z))) + self.U(x))


def gradients(loss: Callable[[], Tensor], tensors: Sequence[Tensor]) -> list[Tensor]:
    """The gradients of ``loss()`` with respect to ``tensors`` (their ``.grad`` reset first)."""
    for t in tensors:
        t.grad = None
    loss().backward()
    return [t.grad.clone() for t in tensors]


def rel_error(a: Tensor, b: Tensor) -> float:
    """``||a - b|| / ||b||``."""
    return float((a - b).norm() / b.norm())


def saved_bytes(fn: Callable[[], Tensor]) -> tuple[int, Tensor]:
    """The bytes autograd saves for backward while ``fn`` runs, and its output."""
    total = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return total, out
