"""Backprop through the iterations: solve(differentiable=True) and implicit(backward="unrolled").

The unrolled mode is the reference of the implicit gradients: same iterations, stopping, freezing
and read-out as the default solve, recorded by autograd.
"""

from __future__ import annotations

import pytest
import torch
from fixedpoint_helpers import Block, contraction, gradients, rel_error, saved_bytes

import fixedpoint

F64 = torch.float64
TIGHT = {"tol": 1e-12, "max_iter": 300, "on_failure": "raise"}
METHODS = ["anderson", "banach"]


def _fields_match(a: fixedpoint.FixedPointResult, b: fixedpoint.FixedPointResult) -> None:
    assert torch.equal(a.iterations, b.iterations)
    assert torch.equal(a.converged, b.converged)
    torch.testing.assert_close(a.residuals, b.residuals, rtol=1e-6, atol=1e-15)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [F64, torch.complex128])
def test_differentiable_solve_equals_the_default_solve(method, dtype):
    A = contraction(8, 0.8, dtype)
    b = torch.randn(3, 8, dtype=dtype)

    def f(z):
        return torch.tanh(z @ A.T + b) if not dtype.is_complex else z @ A.T + b

    z0 = torch.zeros_like(b)
    plain = fixedpoint.solve(f, z0, method, **TIGHT)
    diff = fixedpoint.solve(f, z0, method, differentiable=True, **TIGHT)
    _fields_match(diff, plain)
    torch.testing.assert_close(diff.x, plain.x, rtol=0, atol=1e-12)


def test_differentiable_solve_of_a_tuple_state_is_differentiable():
    A = contraction(4, 0.5, F64).requires_grad_()
    x = torch.randn(2, 4, dtype=F64, requires_grad=True)

    def f(state):
        u, v = state
        return (torch.tanh(u @ A.T + x), 0.5 * v + torch.sin(u))

    z0 = (torch.zeros(2, 4, dtype=F64), torch.zeros(2, 4, dtype=F64))
    result = fixedpoint.solve(f, z0, differentiable=True, **TIGHT)
    assert isinstance(result.x, tuple)
    assert all(t.requires_grad for t in result.x)
    plain = fixedpoint.solve(f, z0, **TIGHT)
    for got, ref in zip(result.x, plain.x):
        torch.testing.assert_close(got.detach(), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_unrolled_gradients_equal_the_implicit_gradients_at_convergence(method):
    """Params, module parameters and closed-over tensors: relative difference <= 1e-6."""
    n, batch = 7, 3
    block = Block(n)
    upstream = torch.randn(batch, n, dtype=F64, requires_grad=True)
    scale = torch.tensor(0.8, dtype=F64, requires_grad=True)
    target = torch.randn(batch, n, dtype=F64)
    tensors = (*block.parameters(), upstream, scale)

    def loss(backward):
        d = upstream * 2  # a closure over learnable tensors

        def f(z, s):
            return s * block(z, d)

        z0 = torch.zeros(batch, n, dtype=F64)
        z = fixedpoint.implicit(f, z0, scale, backward=backward, method=method, **TIGHT)
        return ((z - target) ** 2).sum()

    unrolled = gradients(lambda: loss("unrolled"), tensors)
    implicit = gradients(lambda: loss("implicit"), tensors)
    for u, i in zip(unrolled, implicit):
        assert rel_error(u, i) <= 1e-6


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [F64, torch.complex128])
def test_unrolled_gradcheck(method, dtype):
    """A fixed number of iterations (tol=0): the layer is a smooth composition, checked exactly."""
    n, batch = 3, 2
    W = contraction(n, 0.4, dtype).requires_grad_()
    b = torch.randn(batch, n, dtype=dtype, requires_grad=True)
    z0 = torch.randn(batch, n, dtype=dtype, requires_grad=True)

    def layer(W, b, z0):
        return fixedpoint.implicit(
            lambda z, W, b: torch.tanh(z @ W.T + b) if not dtype.is_complex else z @ W.T + b,
            z0,
            W,
            b,
            backward="unrolled",
            method=method,
            tol=0.0,
            max_iter=8,
            on_failure="ignore",
        )

    assert torch.autograd.gradcheck(layer, (W, b, z0))


def test_unrolled_gradcheck_through_convergence():
    W = contraction(3, 0.4, F64).requires_grad_()
    b = torch.randn(2, 3, dtype=F64, requires_grad=True)

    def layer(W, b):
        z0 = torch.zeros(2, 3, dtype=F64)
        return fixedpoint.implicit(
            lambda z, W, b: torch.tanh(z @ W.T + b), z0, W, b, backward="unrolled", **TIGHT
        )

    assert torch.autograd.gradcheck(layer, (W, b))


@pytest.mark.parametrize("method", METHODS)
def test_unrolled_mode_freezes_each_sample_where_it_converged(method):
    """Sample 0 converges fast and is frozen: f keeps seeing its frozen state, and its gradient
    is that of its own solve, whatever its neighbour does."""
    rates = torch.tensor([[0.05], [0.9]], dtype=F64)
    b = torch.randn(2, 6, dtype=F64, requires_grad=True)
    inputs = []

    def f(z, b):
        inputs.append(z.detach().clone())
        return rates * torch.tanh(z) + b

    z0 = torch.zeros(2, 6, dtype=F64)
    diag = fixedpoint.ImplicitDiagnostics()
    plain = fixedpoint.solve(lambda z: f(z, b), z0, method, **TIGHT)
    inputs.clear()
    out = fixedpoint.implicit(
        f, z0, b, backward="unrolled", method=method, diagnostics=diag, **TIGHT
    )
    _fields_match(diag.forward, plain)
    k0, k1 = plain.iterations.tolist()
    assert k0 < k1
    assert len(inputs) == k1 + 1  # the solve's evaluations and the last step
    for later in inputs[k0:]:
        assert torch.equal(later[0], diag.forward.x[0])
    out[0].square().sum().backward()  # a loss of sample 0 alone, through the batched solve
    together = b.grad.clone()
    b.grad = None
    alone = fixedpoint.implicit(
        lambda z, b0: rates[:1] * torch.tanh(z) + b0,
        z0[:1],
        b[:1],
        backward="unrolled",
        method=method,
        **TIGHT,
    )
    alone.square().sum().backward()
    torch.testing.assert_close(together, b.grad, rtol=1e-10, atol=1e-14)


def test_unrolled_gradients_reach_z0():
    """Unlike the implicit modes, backprop through the iterations differentiates the start:
    four Picard steps and the last step of f(z) = z / 2 + b give d out / d z0 = 2^-5."""
    b = torch.randn(2, 3, dtype=F64)
    z0 = torch.randn(2, 3, dtype=F64, requires_grad=True)
    out = fixedpoint.implicit(
        lambda z: 0.5 * z + b,
        z0,
        backward="unrolled",
        method="banach",
        tol=0.0,
        max_iter=4,
        on_failure="ignore",
    )
    out.sum().backward()
    torch.testing.assert_close(z0.grad, torch.full((2, 3), 2.0**-5, dtype=F64))


def test_singular_gram_sample_takes_the_picard_step_with_finite_gradients():
    """Sample 0 has f = z / 2 + b with ||b|| = 3: from z0 = 0 its residuals are exactly parallel
    (b, b / 2, b / 4, ...) and its Cholesky factorisation is exact (3, 1.5, then a zero pivot), so
    with lam = 0 its Gram matrix is singular at every step and Anderson falls back to Picard;
    sample 1 is an ordinary contraction. The gradients are finite, sample 0's equal plain backprop
    through Picard and sample 1's the implicit gradient."""
    A = contraction(4, 0.6, F64)
    b = torch.tensor([[1.0, 2.0, 2.0, 0.0], [0.5, -1.0, 2.0, 1.0]], dtype=F64, requires_grad=True)

    def f(z, b):
        return torch.cat([0.5 * z[:1] + b[:1], torch.tanh(z[1:] @ A.T + b[1:])])

    z0 = torch.zeros(2, 4, dtype=F64)
    aa = fixedpoint.solve(lambda z: f(z, b), z0, lam=0.0, **TIGHT)
    picard = fixedpoint.solve(lambda z: f(z, b), z0, "banach", **TIGHT)
    assert aa.iterations[0] == picard.iterations[0]  # every step of sample 0 was a Picard step
    assert aa.iterations[1] < picard.iterations[1]

    def loss(backward, method="anderson"):
        options = {"lam": 0.0} if method == "anderson" else {}
        out = fixedpoint.implicit(f, z0, b, backward=backward, method=method, **options, **TIGHT)
        return (out**2).sum()

    (unrolled,) = gradients(lambda: loss("unrolled"), [b])
    assert bool(torch.isfinite(unrolled).all())
    (through_picard,) = gradients(lambda: loss("unrolled", "banach"), [b])
    torch.testing.assert_close(unrolled[0], through_picard[0], rtol=1e-10, atol=1e-14)
    (implicit,) = gradients(lambda: loss("implicit"), [b])
    assert rel_error(unrolled[1], implicit[1]) <= 1e-6


def test_unrolled_memory_grows_with_the_iterations_and_implicit_does_not():
    n, batch = 16, 2
    block = Block(n)
    x = torch.randn(batch, n, dtype=F64)
    z0 = torch.zeros(batch, n, dtype=F64)
    sizes = {}
    for backward in ("unrolled", "implicit"):
        for iters in (3, 30):
            sizes[backward, iters], _ = saved_bytes(
                lambda backward=backward, iters=iters: fixedpoint.implicit(
                    block, z0, x, backward=backward, tol=0.0, max_iter=iters, on_failure="ignore"
                )
            )
    assert sizes["implicit", 3] == sizes["implicit", 30] > 0
    assert sizes["unrolled", 30] > 5 * sizes["unrolled", 3] > 0


def test_unrolled_diagnostics_hold_the_detached_forward_result():
    b = torch.randn(2, 3, dtype=F64, requires_grad=True)
    diag = fixedpoint.ImplicitDiagnostics()
    out = fixedpoint.implicit(
        lambda z, b: 0.5 * z + b,
        torch.zeros(2, 3, dtype=F64),
        b,
        backward="unrolled",
        diagnostics=diag,
        spectral_radius_iterations=20,
        **TIGHT,
    )
    assert out.requires_grad
    assert diag.forward is not None
    assert not diag.forward.x.requires_grad
    assert bool(diag.forward.converged.all())
    torch.testing.assert_close(diag.spectral_radius, torch.full((2,), 0.5, dtype=F64))
    out.sum().backward()
    assert diag.backward is None  # no backward solve: autograd ran through the iterations


def test_differentiable_mode_needs_a_solver_that_runs_under_autograd():
    with pytest.raises(
        ValueError,
        match=r"backward='unrolled' differentiates the iterations of 'anderson' or 'banach' "
        r"\(the solvers that run under autograd\), got method 'broyden'",
    ):
        fixedpoint.implicit(
            lambda z: 0.5 * z, torch.zeros(1, 2), backward="unrolled", method="broyden"
        )
    with pytest.raises(
        ValueError,
        match=r"differentiable=True differentiates the iterations of 'anderson' or 'banach' "
        r".*got method 'broyden'",
    ):
        fixedpoint.solve(lambda z: 0.5 * z, torch.zeros(1, 2), "broyden", differentiable=True)
    with pytest.raises(TypeError, match="differentiable must be True or False, got 'yes'"):
        fixedpoint.solve(lambda z: 0.5 * z, torch.zeros(1, 2), differentiable="yes")
    with pytest.raises(TypeError, match="differentiable must be True or False, got 1"):
        fixedpoint.anderson(lambda z: 0.5 * z, torch.zeros(1, 2), differentiable=1)
