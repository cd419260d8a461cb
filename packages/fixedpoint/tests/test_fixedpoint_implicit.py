"""Implicit layers: gradients equal unrolled backprop, gradcheck, variants' bias, memory, errors."""

from __future__ import annotations

import pytest
import torch
from fixedpoint_helpers import Block, contraction, gradients, rel_error, saved_bytes

import fixedpoint

F64 = torch.float64
TIGHT = {"tol": 1e-13, "max_iter": 300, "on_failure": "raise"}


def unrolled(f, z0, steps=400):
    """Plain backprop through a long, converged Picard iteration (the reference gradient)."""
    z = z0
    for _ in range(steps):
        z = f(z)
    return z


def assert_matches_unrolled(layer_loss, reference_loss, tensors):
    """The implicit layer's gradients equal backprop through the unrolled iteration (<= 1e-6)."""
    got = gradients(layer_loss, tensors)
    expected = gradients(reference_loss, tensors)
    for g, e in zip(got, expected):
        assert rel_error(g, e) <= 1e-6


@pytest.mark.parametrize("method", ["anderson", "banach"])
def test_gradients_reach_params_module_parameters_and_closures(method):
    """Explicit params, nn.Module parameters and closed-over tensors get the unrolled gradient."""
    n, batch = 7, 3
    block = Block(n)
    upstream = torch.randn(batch, n, dtype=F64, requires_grad=True)  # e.g. LUSER's d_k inputs
    scale = torch.tensor(0.8, dtype=F64, requires_grad=True)
    target = torch.randn(batch, n, dtype=F64)

    def loss_of(z):
        return ((z - target) ** 2).sum()

    def f(z, s):
        return s * block(z, upstream * 2)  # a closure over learnable tensors upstream

    z0 = torch.zeros(batch, n, dtype=F64)
    assert_matches_unrolled(
        lambda: loss_of(fixedpoint.implicit(f, z0, scale, method=method, **TIGHT)),
        lambda: loss_of(unrolled(lambda z: f(z, scale), z0)),
        (*block.parameters(), upstream, scale),
    )


def test_complex_state_with_a_non_holomorphic_map_matches_unrolled():
    n, batch = 6, 2
    W = (contraction(n, 0.5, torch.complex128)).requires_grad_()
    s = torch.tensor(0.3, dtype=F64, requires_grad=True)
    b = torch.randn(batch, n, dtype=torch.complex128, requires_grad=True)

    def f(z, W, s, b):
        return z @ W.T + s * z.conj() + b

    def loss_of(z):
        return (z.abs() ** 2).sum() + z.real.sum()

    z0 = torch.zeros(batch, n, dtype=torch.complex128)
    assert_matches_unrolled(
        lambda: loss_of(fixedpoint.implicit(f, z0, W, s, b, coefficients="real", **TIGHT)),
        lambda: loss_of(unrolled(lambda z: f(z, W, s, b), z0)),
        (W, s, b),
    )


def test_tuple_state_matches_unrolled():
    n, batch = 5, 2
    A = contraction(n, 0.4, F64).requires_grad_()
    B = contraction(n, 0.4, F64).requires_grad_()
    x = torch.randn(batch, n, dtype=F64, requires_grad=True)

    def f(state, A, B, x):
        u, v = state
        return (torch.tanh(u @ A.T + x), v @ B.T + 0.3 * torch.sin(u))

    def loss_of(state):
        return (state[0] ** 2).sum() + (state[1] ** 3).sum()

    z0 = (torch.zeros(batch, n, dtype=F64), torch.zeros(batch, n, dtype=F64))
    out = fixedpoint.implicit(f, z0, A, B, x, **TIGHT)
    assert isinstance(out, tuple)
    assert len(out) == 2
    assert_matches_unrolled(
        lambda: loss_of(fixedpoint.implicit(f, z0, A, B, x, **TIGHT)),
        lambda: loss_of(unrolled(lambda s: f(s, A, B, x), z0)),
        (A, B, x),
    )


def test_chained_implicit_layers_like_luser_stages():
    """Two stages whose injections depend on the previous stage and on a learnable projection."""
    n, batch = 5, 2
    block = Block(n)
    P = torch.randn(n, n, dtype=F64, requires_grad=True)
    x = torch.randn(batch, n, dtype=F64)

    def forward(solve):
        d = x @ P
        for _ in range(2):
            d = d + solve(lambda r, d=d: block(r, d), torch.zeros(batch, n, dtype=F64))
        return (d**2).sum()

    assert_matches_unrolled(
        lambda: forward(lambda f, z0: fixedpoint.implicit(f, z0, **TIGHT)),
        lambda: forward(unrolled),
        (*block.parameters(), P),
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_gradcheck(dtype):
    n, batch = 3, 2
    W = contraction(n, 0.4, dtype).requires_grad_()
    b = torch.randn(batch, n, dtype=dtype, requires_grad=True)

    def layer(W, b):
        if dtype.is_complex:
            return fixedpoint.implicit(
                lambda z, W, b: z @ W.T + b, torch.zeros_like(b), W, b, **TIGHT
            )
        return fixedpoint.implicit(
            lambda z, W, b: torch.tanh(z @ W.T + b), torch.zeros_like(b), W, b, **TIGHT
        )

    assert torch.autograd.gradcheck(layer, (W, b))


@pytest.mark.parametrize("backward", ["implicit", "jacobian_free", "phantom"])
def test_backward_variants_equal_their_closed_forms(backward):
    """For f(z) = z A^T + b, dL/db = u; each variant's u has a closed form."""
    n = 6
    A = contraction(n, 0.8, F64)
    b = torch.randn(1, n, dtype=F64, requires_grad=True)
    v = torch.randn(1, n, dtype=F64)
    k, lam = 4, 0.6
    z = fixedpoint.implicit(
        lambda z, b: z @ A.T + b,
        torch.zeros(1, n, dtype=F64),
        b,
        backward=backward,
        phantom_steps=k,
        phantom_damping=lam,
        **TIGHT,
    )
    (z * v).sum().backward()
    eye = torch.eye(n, dtype=F64)
    if backward == "implicit":
        expected = torch.linalg.solve(eye - A.T, v[0])
    elif backward == "jacobian_free":
        expected = v[0]
    else:
        M = (1 - lam) * eye + lam * A.T
        expected = lam * sum(torch.linalg.matrix_power(M, i) for i in range(k)) @ v[0]
    torch.testing.assert_close(b.grad[0], expected, rtol=1e-10, atol=1e-12)


def test_bias_of_jacobian_free_and_phantom_gradients():
    """The bias of the cheap gradients, measured against the implicit gradient on a nonlinear
    contraction (rate 0.8): Jacobian-free is biased by O(||J||) and phantom's bias shrinks
    geometrically with its number of steps."""
    n, batch = 8, 4
    W = contraction(n, 0.8, F64)
    x = torch.randn(batch, n, dtype=F64, requires_grad=True)

    def grad_for(**kwargs):
        x.grad = None
        z = fixedpoint.implicit(
            lambda z, x: torch.tanh(z @ W.T + x),
            torch.zeros(batch, n, dtype=F64),
            x,
            **TIGHT,
            **kwargs,
        )
        (z.sum(dim=1) ** 2).sum().backward()
        return x.grad.clone()

    exact = grad_for(backward="implicit")
    bias = {"jacobian_free": rel_error(grad_for(backward="jacobian_free"), exact)}
    for k in (1, 5, 20, 80):
        bias[f"phantom_{k}"] = rel_error(
            grad_for(backward="phantom", phantom_steps=k, phantom_damping=1.0), exact
        )
    # measured (float64, this seed): jacobian_free ~0.6, phantom k=1: same as Jacobian-free,
    # then decreasing to ~1e-7 at k=80
    assert bias["jacobian_free"] > 0.1
    assert bias["phantom_1"] == pytest.approx(bias["jacobian_free"], rel=1e-12)
    assert bias["phantom_1"] > bias["phantom_5"] > bias["phantom_20"] > bias["phantom_80"]
    assert bias["phantom_80"] < 1e-5


def test_training_memory_is_independent_of_iteration_counts():
    """The graph kept for backward does not grow with the forward iterations, and the backward
    pass evaluates f once (one rebuilt graph) whatever its number of iterations."""
    n, batch = 16, 2
    block = Block(n)
    x = torch.randn(batch, n, dtype=F64)
    grad_mode_calls = []

    def f(z):
        grad_mode_calls.append(torch.is_grad_enabled())
        return block(z, x)

    sizes = []
    for iters in (3, 30):
        size, z = saved_bytes(
            lambda iters=iters: fixedpoint.implicit(
                f, torch.zeros(batch, n, dtype=F64), tol=0.0, max_iter=iters, on_failure="ignore"
            )
        )
        sizes.append(size)
        grad_mode_calls.clear()
        z.sum().backward()
        # one rebuilt graph (the only call with grad enabled), then the backward iterations
        assert grad_mode_calls.count(True) == 1
        assert len(grad_mode_calls) == 1
    assert sizes[0] == sizes[1] > 0


def test_diagnostics_report_both_solves_and_the_spectral_radius():
    n = 10
    A = contraction(n, 0.7, F64, hermitian=True)
    b = torch.randn(3, n, dtype=F64, requires_grad=True)
    diag = fixedpoint.ImplicitDiagnostics()
    z = fixedpoint.implicit(
        lambda z, b: z @ A.T + b,
        torch.zeros(3, n, dtype=F64),
        b,
        tol=1e-10,
        backward_tol=1e-8,
        diagnostics=diag,
        spectral_radius_iterations=200,
    )
    assert diag.forward is not None
    assert diag.forward.converged.all()
    assert diag.backward is None  # not yet run
    z.sum().backward()
    assert diag.backward is not None
    assert diag.backward.converged.all()
    assert (diag.backward.residuals <= 1e-8).all()
    expected = torch.linalg.eigvalsh(A).abs().max()
    torch.testing.assert_close(diag.spectral_radius, expected.expand(3), rtol=1e-6, atol=0.0)


def test_output_supports_in_place_ops_and_z0_gets_no_gradient():
    b = torch.randn(2, 3, requires_grad=True)
    z0 = torch.zeros(2, 3, requires_grad=True)
    z = fixedpoint.implicit(lambda z, b: 0.5 * z + b, z0, b)
    z.mul_(2)
    z.sum().backward()
    assert z0.grad is None
    torch.testing.assert_close(b.grad, torch.full((2, 3), 4.0), rtol=1e-3, atol=1e-3)


def test_no_grad_mode_returns_a_plain_tensor():
    b = torch.randn(2, 3, requires_grad=True)
    with torch.no_grad():
        z = fixedpoint.implicit(lambda z, b: 0.5 * z + b, torch.zeros(2, 3), b)
    assert z.grad_fn is None
    assert not z.requires_grad


def test_backward_solve_follows_the_failure_policy():
    b = torch.randn(2, 3, dtype=F64, requires_grad=True)
    A = contraction(3, 0.9, F64)
    z = fixedpoint.implicit(
        lambda z, b: z @ A.T + b,
        torch.zeros(2, 3, dtype=F64),
        b,
        method="banach",
        max_iter=500,
        tol=1e-10,
        backward_max_iter=2,
        backward_tol=1e-12,
    )
    with pytest.warns(fixedpoint.ConvergenceWarning, match=r"did not converge.*max_iter=2"):
        z.sum().backward()


def test_backward_options_default_to_the_forward_options():
    b = torch.randn(2, 3, dtype=F64, requires_grad=True)
    diag = fixedpoint.ImplicitDiagnostics()
    z = fixedpoint.implicit(
        lambda z, b: 0.5 * z + b, torch.zeros(2, 3, dtype=F64), b, m=1, tol=1e-12, diagnostics=diag
    )
    z.sum().backward()
    # m=1 is Picard: the adjoint iteration u = v + 0.5 u converges linearly, not in 3 steps
    assert diag.backward is not None
    assert (diag.backward.iterations > 20).all()


# -- bad inputs -----------------------------------------------------------------------------------
def test_unknown_backward_mode():
    with pytest.raises(
        ValueError, match=r"backward must be one of 'implicit', 'jacobian_free', 'phantom'"
    ):
        fixedpoint.implicit(lambda z: z, torch.zeros(1, 2), backward="ift")


def test_params_must_be_tensors():
    with pytest.raises(TypeError, match=r"params\[0\] must be a tensor, got float; pass other"):
        fixedpoint.implicit(lambda z, a: a * z, torch.zeros(1, 2), 0.5)


def test_bad_phantom_settings():
    with pytest.raises(ValueError, match="phantom_steps must be an integer >= 1, got 0"):
        fixedpoint.implicit(lambda z: z, torch.zeros(1, 2), backward="phantom", phantom_steps=0)
    with pytest.raises(ValueError, match=r"phantom_damping must be a number in \(0, 1\]"):
        fixedpoint.implicit(lambda z: z, torch.zeros(1, 2), backward="phantom", phantom_damping=2)


def test_spectral_radius_needs_diagnostics():
    with pytest.raises(ValueError, match=r"pass diagnostics=fixedpoint\.ImplicitDiagnostics\(\)"):
        fixedpoint.implicit(lambda z: 0.5 * z, torch.zeros(1, 2), spectral_radius_iterations=5)
    with pytest.raises(ValueError, match="spectral_radius_iterations must be an integer >= 0"):
        fixedpoint.implicit(lambda z: 0.5 * z, torch.zeros(1, 2), spectral_radius_iterations=-1)


def test_bad_backward_solver_settings():
    with pytest.raises(ValueError, match=r"unknown fixed-point method 'cg'.*'anderson', 'banach'"):
        fixedpoint.implicit(lambda z: 0.5 * z, torch.zeros(1, 2), backward_method="cg")
    with pytest.raises(TypeError, match=r"method 'banach' got unknown option\(s\) 'm'"):
        fixedpoint.implicit(
            lambda z: 0.5 * z,
            torch.zeros(1, 2),
            backward_method="banach",
            backward_options={"m": 3},
        )
    with pytest.raises(ValueError, match="max_iter must be an integer >= 1, got 0"):
        fixedpoint.implicit(lambda z: 0.5 * z, torch.zeros(1, 2), backward_max_iter=0)
