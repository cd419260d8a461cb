"""The benchmark's fixed-point maps (deterministic: every map is built from a fixed seed).

* ``conv``: ``f(z) = tanh(W * z + u)``, a 32 -> 32 channel 3x3 convolution whose operator norm
  (on the benchmark's image size, zero padding) is scaled to 0.9 by power iteration, with an input
  injection ``u``; state ``(batch, 32, H, W)``, float32. A contraction with constant <= 0.9.
* ``hermitian``: ``f(z) = A z + b`` with ``A = U diag(lambda) U^H`` Hermitian, eigenvalues uniform
  in [-0.9, 0.9], ``U`` Haar-random unitary; state ``(batch, n)`` complex64.
* ``nonnormal``: ``f(z) = A z + b`` with ``A`` a complex Gaussian (Ginibre) matrix scaled to
  spectral radius 0.9 (its spectral norm is about twice that: Picard converges after a transient).
* ``*_real``: the same complex map on the real view ``(batch, n, 2)`` float32.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

Map = Callable[[Tensor], Tensor]


def conv_map(
    batch: int = 4,
    channels: int = 32,
    size: int = 64,
    contraction: float = 0.9,
    device: str = "cpu",
) -> tuple[Map, Tensor, dict[str, Tensor]]:
    """The conv map, its initial state (zeros) and its tensors (``weight``, ``injection``)."""
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(channels, channels, 3, 3, generator=gen) / (3 * channels**0.5)
    # operator norm of the convolution on (channels, size, size) with zero padding
    v = torch.randn(1, channels, size, size, generator=gen)
    for _ in range(100):
        w = F.conv_transpose2d(F.conv2d(v, weight, padding=1), weight, padding=1)
        v = w / w.norm()
    norm = F.conv2d(v, weight, padding=1).norm()
    weight = (weight * (contraction / norm)).to(device)
    injection = torch.randn(batch, channels, size, size, generator=gen).to(device)

    def f(z: Tensor) -> Tensor:
        return torch.tanh(F.conv2d(z, weight, padding=1) + injection)

    z0 = torch.zeros(batch, channels, size, size, device=device)
    return f, z0, {"weight": weight, "injection": injection}


def complex_map(
    kind: str, n: int = 256, batch: int = 4, radius: float = 0.9, device: str = "cpu"
) -> tuple[Map, Tensor, Tensor]:
    """``f(z) = z A^T + b`` on complex64 ``(batch, n)``; returns ``f``, ``z0`` and ``A``."""
    gen = torch.Generator().manual_seed(2)
    if kind == "hermitian":
        q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.complex128, generator=gen))
        eig = (torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1) * radius
        A = (q * eig) @ q.mH
    elif kind == "nonnormal":
        A = torch.randn(n, n, dtype=torch.complex128, generator=gen)
        A = A * (radius / torch.linalg.eigvals(A).abs().max())
    else:
        raise ValueError(f"kind must be 'hermitian' or 'nonnormal', got {kind!r}")
    b = torch.randn(batch, n, dtype=torch.complex128, generator=gen)
    A64, b64 = A.to(device, torch.complex64), b.to(device, torch.complex64)
    At = A64.T.contiguous()

    def f(z: Tensor) -> Tensor:
        return torch.addmm(b64, z, At)

    return f, torch.zeros(batch, n, dtype=torch.complex64, device=device), A64


def real_view(f: Map) -> Map:
    """The same map on the real view ``(batch, n, 2)`` of a complex state."""

    def g(x: Tensor) -> Tensor:
        return torch.view_as_real(f(torch.view_as_complex(x)))

    return g
