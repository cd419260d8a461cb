"""Operators and CG run in full precision under torch.autocast (mixed-precision training)."""

from __future__ import annotations

import pytest
import torch

import physops


def _operators():
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(2, 3, 8, 8, dtype=torch.complex64, generator=g)
    mask = (torch.rand(8, 8, generator=g) < 0.5).float()
    return {
        "Sense": (physops.Sense(maps, mask), torch.randn(2, 8, 8, dtype=torch.complex64)),
        "Blur": (physops.Blur(physops.gaussian_kernel(5, 1.0)), torch.randn(2, 8, 8)),
        "Radon": (physops.Radon(8, physops.uniform_angles(6)), torch.randn(2, 8, 8)),
        "composed": (
            physops.Blur(physops.gaussian_kernel(3, 1.0)).H
            @ physops.Blur(physops.gaussian_kernel(3, 1.0)),
            torch.randn(2, 8, 8),
        ),
    }


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["Sense", "Blur", "Radon", "composed"])
def test_operators_ignore_autocast(name, dtype):
    op, x = _operators()[name]
    want = (op(x), op.adjoint(op(x)), op.normal(x))
    with torch.autocast("cpu", dtype=dtype):
        got = (op(x), op.adjoint(op(x)), op.normal(x))
    for a, b in zip(got, want):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_half_precision_input_is_brought_to_float32():
    op, x = _operators()["Blur"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = op(x.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, op(x.bfloat16().float()), rtol=0, atol=0)


def test_cg_and_its_backward_ignore_autocast():
    g = torch.Generator().manual_seed(1)
    m = torch.randn(3, 6, 6, generator=g)
    spd = m @ m.mT + 6 * torch.eye(6)
    b = torch.randn(3, 6, generator=g, requires_grad=True)

    def solve():
        x = physops.cg(lambda v: (spd @ v[..., None])[..., 0], b, tol=1e-7).x
        (grad,) = torch.autograd.grad(x.square().sum(), b)
        return x, grad

    want = solve()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = solve()
    for a, w in zip(got, want):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, w, rtol=0, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the backward pass under autocast too
        x = physops.cg(lambda v: (spd @ v[..., None])[..., 0], b, tol=1e-7).x
        (grad,) = torch.autograd.grad(x.square().sum(), b)
    torch.testing.assert_close(grad, want[1], rtol=0, atol=0)


def test_ptychography_ignores_autocast():
    op = physops.FourierPtychography(32, physops.led_grid(5), downsample=4)
    x = physops.ptychography_object(torch.rand(1, 32, 32), torch.rand(1, 32, 32))
    want = (op(x), op.gradient(x, op(x) * 1.1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = (op(x), op.gradient(x, op(x) * 1.1))
    for a, w in zip(got, want):
        torch.testing.assert_close(a, w, rtol=0, atol=0)
