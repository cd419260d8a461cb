"""Small MRI problems shared by the unrolled tests."""

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


@pytest.fixture
def sense_problem():
    return make_sense()
