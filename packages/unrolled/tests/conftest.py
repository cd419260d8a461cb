"""Small MRI problems and gradient helpers shared by the unrolled tests."""

from __future__ import annotations

import pytest
import torch

import physops


def make_sense(
    batch: int = 2, coils: int = 4, size: int = 24, dtype=torch.complex64, seed: int = 0
):
    """A random multi-coil problem: normalised maps, a 40% random mask, x and y = A x."""
    g = torch.Generator().manual_seed(seed)
    maps = torch.randn(batch, coils, size, size, dtype=dtype, generator=g)
    maps = maps / (maps.abs() ** 2).sum(1, keepdim=True).sqrt()
    mask = (torch.rand(size, size, generator=g) < 0.4).to(maps.real.dtype)
    A = physops.Sense(maps, mask)
    x = torch.randn(batch, size, size, dtype=dtype, generator=g)
    return A, x, A(x)


def make_fourier(batch: int = 2, size: int = 16, dtype=torch.complex64, seed: int = 0):
    """Single-coil Cartesian MRI (the i-RIM paper's setting): y = M F x."""
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(size, size, generator=g) < 0.4).to(torch.empty((), dtype=dtype).real.dtype)
    A = physops.FourierSampling(mask)
    x = torch.randn(batch, size, size, dtype=dtype, generator=g)
    return A, x, A(x)


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||."""
    return float((a - b).norm() / b.norm())


def strategy_grads(model, y, A, target, strategy="backprop", x0=None, **options):
    """Every parameter's gradient (concatenated) of the squared error under ``strategy``, and
    the reconstruction."""
    model.set_strategy(strategy, **options)
    model.zero_grad()
    out = model(y, A, x0)
    (out - target).abs().square().sum().backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return grads, out.detach()


@pytest.fixture
def sense_problem():
    return make_sense()
