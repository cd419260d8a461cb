"""Fixed-point solves run in full precision under torch.autocast (mixed-precision training)."""

from __future__ import annotations

import torch

import fixedpoint


def _layer():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.Tanh())
    with torch.no_grad():
        net[0].weight.mul_(0.3)
    return net


def test_solve_and_invert_step_ignore_autocast():
    net = _layer()
    x = torch.randn(4, 6)
    want = fixedpoint.solve(lambda z: net(z) + x, torch.zeros(4, 6), tol=1e-7).x
    inverse = fixedpoint.invert_step(lambda z: 0.5 * net(z), x, tol=1e-7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fixedpoint.solve(lambda z: net(z) + x, torch.zeros(4, 6), tol=1e-7).x
        got_inverse = fixedpoint.invert_step(lambda z: 0.5 * net(z), x.bfloat16(), tol=1e-7)
    assert got.dtype == got_inverse.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(got_inverse, fixedpoint.invert_step(
        lambda z: 0.5 * net(z), x.bfloat16().float(), tol=1e-7), rtol=0, atol=0)  # fmt: skip
    assert inverse.dtype == torch.float32


def test_implicit_forward_and_backward_ignore_autocast():
    net = _layer()
    x = torch.randn(4, 6, requires_grad=True)

    def solve():
        return fixedpoint.implicit(lambda z, x: net(z) + x, torch.zeros(4, 6), x, tol=1e-7)

    def grads(z):
        return torch.autograd.grad(z.square().sum(), [x, *net.parameters()])

    want = solve()
    want_grads = grads(want)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # forward under autocast, as in training
        got = solve()
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    for a, b in zip(grads(got), want_grads):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the adjoint solve under autocast too
        (grad_x,) = torch.autograd.grad(solve().square().sum(), [x])
    torch.testing.assert_close(grad_x, want_grads[0], rtol=0, atol=0)
