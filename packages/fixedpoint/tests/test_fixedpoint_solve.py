"""The solvers: solutions equal direct solves, per-sample stopping, tuple and complex states."""

from __future__ import annotations

import math

import pytest
import torch
from fixedpoint_helpers import contraction, direct_solution, linear_map, rtol_for, solver_tol_for
from hypothesis import given, settings
from hypothesis import strategies as st

import fixedpoint
from fixedpoint._anderson import _AndersonStep

METHODS = ["anderson", "banach", "broyden"]
DTYPES = [torch.float32, torch.float64, torch.complex64, torch.complex128]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_contraction_equals_direct_solve(method, dtype, device):
    A = contraction(12, 0.7, dtype).to(device)
    b = torch.randn(5, 12, dtype=dtype, device=device)
    result = fixedpoint.solve(
        linear_map(A, b),
        torch.zeros_like(b),
        method,
        tol=solver_tol_for(dtype),
        max_iter=500,
        on_failure="raise",
    )
    expected = direct_solution(A.cpu(), b.cpu()).to(device)
    assert result.x.dtype == dtype
    assert result.x.device == b.device
    torch.testing.assert_close(
        result.x.to(expected.dtype), expected, rtol=rtol_for(dtype), atol=rtol_for(dtype)
    )
    assert result.converged.all()
    assert result.iterations.shape == (5,)
    assert result.residuals.shape == (5,)
    assert not result.residuals.is_complex()


@settings(max_examples=20, deadline=None)
@given(
    batch=st.integers(1, 4),
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    radius=st.floats(0.05, 0.9),
    method=st.sampled_from(METHODS),
    complex_state=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_any_shape_matches_direct_solve(batch, shape, radius, method, complex_state, seed):
    """Property: for any state shape, the solver finds the fixed point of a contraction."""
    gen = torch.Generator().manual_seed(seed)
    dtype = torch.complex128 if complex_state else torch.float64
    n = math.prod(shape)
    A = torch.randn(n, n, dtype=dtype, generator=gen)
    A = A * (radius / torch.linalg.matrix_norm(A, ord=2))
    b = torch.randn(batch, n, dtype=dtype, generator=gen)

    def f(z):
        return (z.reshape(batch, n) @ A.T + b).reshape(batch, *shape)

    result = fixedpoint.solve(
        f, torch.zeros(batch, *shape, dtype=dtype), method, tol=1e-12, max_iter=1000
    )
    expected = direct_solution(A, b).reshape(batch, *shape)
    torch.testing.assert_close(result.x, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_tuple_state_with_mixed_dtypes(method, device):
    """A (complex, real) tuple state with coupled components equals the direct solve."""
    n, k, batch = 6, 4, 3
    Azz = contraction(n, 0.4, torch.complex128).to(device)
    Azr = (0.1 * torch.randn(n, k, dtype=torch.float64)).to(device)
    Arz = (0.1 * torch.randn(k, n, dtype=torch.float64)).to(device)
    Arr = contraction(k, 0.4, torch.float64).to(device)
    bz = torch.randn(batch, n, dtype=torch.complex128, device=device)
    br = torch.randn(batch, k, dtype=torch.float64, device=device)

    def f(state):
        zc, zr = state
        return (zc @ Azz.T + (zr @ Azr.T).to(zc.dtype) + bz, zc.real @ Arz.T + zr @ Arr.T + br)

    z0 = (torch.zeros_like(bz), torch.zeros_like(br))
    result = fixedpoint.solve(f, z0, method, tol=1e-13, max_iter=500, on_failure="raise")
    assert isinstance(result.x, tuple)
    assert len(result.x) == 2
    zc, zr = result.x
    assert zc.dtype == torch.complex128
    assert zr.dtype == torch.float64
    # independent check: the fixed-point equations hold
    fc, fr = f((zc, zr))
    torch.testing.assert_close(fc, zc, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(fr, zr, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("method", METHODS)
def test_tuple_of_real_tensors_matches_concatenated_direct_solve(method):
    n1, n2, batch = 3, 5, 2
    A = contraction(n1 + n2, 0.6, torch.float64)
    b = torch.randn(batch, n1 + n2, dtype=torch.float64)

    def f(state):
        z = torch.cat([state[0].reshape(batch, n1), state[1]], dim=1) @ A.T + b
        return (z[:, :n1].reshape(batch, n1, 1), z[:, n1:])

    z0 = (
        torch.zeros(batch, n1, 1, dtype=torch.float64),
        torch.zeros(batch, n2, dtype=torch.float64),
    )
    result = fixedpoint.solve(f, z0, method, tol=1e-13, max_iter=500)
    expected = direct_solution(A, b)
    got = torch.cat([result.x[0].reshape(batch, n1), result.x[1]], dim=1)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", METHODS)
def test_per_sample_stopping_freezes_converged_samples(method):
    """Sample 0 contracts fast, sample 1 slowly: once 0 stops, f keeps seeing its frozen state."""
    rates = torch.tensor([[0.05], [0.9]], dtype=torch.float64)
    b = torch.randn(2, 8, dtype=torch.float64)
    inputs = []

    def f(z):
        inputs.append(z.clone())
        return rates * torch.tanh(z) + b

    tol = 1e-10
    result = fixedpoint.solve(f, torch.zeros_like(b), method, tol=tol, max_iter=500)
    k0, k1 = result.iterations.tolist()
    assert k0 < k1
    assert len(inputs) == k1
    assert result.converged.all()
    # after its stop, sample 0's state is its solution f(x) and never changes again
    for later in inputs[k0:]:
        assert torch.equal(later[0], result.x[0])
    assert torch.equal(inputs[k0][0], result.x[0])
    # the slow sample is unaffected by its neighbour: same result as alone
    alone = fixedpoint.solve(
        lambda z: rates[1:] * torch.tanh(z) + b[1:],
        torch.zeros_like(b[1:]),
        method,
        tol=tol,
        max_iter=500,
    )
    assert alone.iterations.item() == k1
    torch.testing.assert_close(alone.x[0], result.x[1], rtol=1e-14, atol=1e-14)
    # trace: NaN after a sample stopped, finite before
    assert result.trace.shape == (k1, 2)
    assert torch.isfinite(result.trace[:k0, 0]).all()
    assert result.trace[k0:, 0].isnan().all()
    assert result.trace[k0 - 1, 0] == result.residuals[0]


@pytest.mark.parametrize("method", METHODS)
def test_relative_stopping_is_scale_invariant_and_absolute_is_not(method):
    A = contraction(10, 0.8, torch.float64)
    b = torch.randn(3, 10, dtype=torch.float64)
    z0 = torch.zeros_like(b)
    counts = {}
    for mode in ("rel", "abs"):
        for scale in (1.0, 1e6):
            result = fixedpoint.solve(
                linear_map(A, scale * b), z0, method, tol=1e-8, stop_mode=mode, max_iter=1000
            )
            counts[mode, scale] = result.iterations.tolist()
    assert counts["rel", 1.0] == counts["rel", 1e6]
    assert all(a < c for a, c in zip(counts["abs", 1.0], counts["abs", 1e6]))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("mode", ["rel", "abs"])
def test_reported_residual_bounds_the_true_error(method, mode):
    """residuals is the residual of the last iterate; z = f(x) is within L/(1-L) of the solution."""
    L = 0.8
    A = contraction(10, L, torch.float64)
    b = torch.randn(4, 10, dtype=torch.float64)
    result = fixedpoint.solve(
        linear_map(A, b), torch.zeros_like(b), method, tol=1e-5, stop_mode=mode
    )
    f = linear_map(A, b)
    absolute = result.residuals.clone()
    if mode == "rel":
        # ||f(x) - x|| / ||f(x)|| with f(x) = z
        absolute = absolute * torch.linalg.vector_norm(result.x, dim=1)
    error = torch.linalg.vector_norm(result.x - direct_solution(A, b), dim=1)
    assert (error <= L / (1 - L) * absolute * (1 + 1e-9)).all()
    assert (
        torch.linalg.vector_norm(f(result.x) - result.x, dim=1) <= L * absolute * (1 + 1e-9)
    ).all()


def test_anderson_beats_picard_on_a_slow_linear_contraction():
    A = contraction(30, 0.9, torch.float64, hermitian=True)
    b = torch.randn(2, 30, dtype=torch.float64)
    kwargs = {"tol": 1e-8, "max_iter": 1000}
    aa = fixedpoint.solve(linear_map(A, b), torch.zeros_like(b), "anderson", **kwargs)
    picard = fixedpoint.solve(linear_map(A, b), torch.zeros_like(b), "banach", **kwargs)
    assert (aa.iterations * 2 < picard.iterations).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_broyden_solves_a_linear_system_in_at_most_2n_steps(dtype):
    """Gay's theorem: keeping every rank-one term, good Broyden ends in 2n steps on linear maps."""
    n = 6
    A = contraction(n, 0.9, dtype)
    b = torch.randn(3, n, dtype=dtype)
    result = fixedpoint.broyden(
        linear_map(A, b), torch.zeros_like(b), tol=1e-11, max_iter=100, m=2 * n
    )
    assert (result.iterations <= 2 * n + 1).all()
    torch.testing.assert_close(result.x, direct_solution(A, b), rtol=1e-9, atol=1e-9)


def test_banach_relaxation_is_krasnoselskii_mann():
    """tau-relaxed Picard on f equals plain Picard on (1 - tau) z + tau f(z)."""
    A = contraction(6, 0.5, torch.float64)
    b = torch.randn(2, 6, dtype=torch.float64)
    f = linear_map(A, b)
    tau = 0.6
    relaxed = fixedpoint.banach(
        f, torch.zeros_like(b), tol=0.0, max_iter=7, relaxation=tau, on_failure="ignore"
    )
    x = torch.zeros_like(b)
    for _ in range(6):
        x = (1 - tau) * x + tau * f(x)
    torch.testing.assert_close(relaxed.x, f(x), rtol=1e-14, atol=1e-14)


def test_anderson_with_m1_and_beta_is_damped_picard():
    A = contraction(6, 0.5, torch.float64)
    b = torch.randn(2, 6, dtype=torch.float64)
    f = linear_map(A, b)
    aa = fixedpoint.anderson(
        f, torch.zeros_like(b), tol=0.0, max_iter=9, m=1, beta=0.7, on_failure="ignore"
    )
    km = fixedpoint.banach(
        f, torch.zeros_like(b), tol=0.0, max_iter=9, relaxation=0.7, on_failure="ignore"
    )
    torch.testing.assert_close(aa.x, km.x, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(aa.trace, km.trace, rtol=1e-12, atol=0.0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_anderson_coefficients_solve_the_constrained_least_squares(dtype):
    """Independent check of the mixing weights: minimise ||G^T a|| subject to sum(a) = 1.

    Eliminating the constraint (a = e_last + N c, N a basis of {sum = 0}) gives an ordinary
    least-squares problem, solved by torch.linalg.lstsq (QR based, not a Gram matrix).
    """
    batch, m, n = 3, 4, 30
    residuals = torch.randn(batch, m, n, dtype=dtype)
    step = _AndersonStep(torch.zeros(batch, n, dtype=dtype), m=m, lam=0.0, beta=1.0)
    gram = torch.einsum("bin,bjn->bij", residuals.conj(), residuals)
    a = step._coefficients(gram.to(step.reg.dtype), newest=m - 1)
    basis = torch.zeros(m, m - 1, dtype=dtype)
    basis[: m - 1] = torch.eye(m - 1, dtype=dtype)
    basis[m - 1] = -1
    last = torch.zeros(m, dtype=dtype)
    last[m - 1] = 1
    Gt = residuals.transpose(1, 2)  # (batch, n, m): columns are the residuals
    c = torch.linalg.lstsq(Gt @ basis, -(Gt @ last).unsqueeze(-1)).solution.squeeze(-1)
    expected = last + c @ basis.T
    torch.testing.assert_close(a, expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(a.sum(-1), torch.ones(batch, dtype=dtype), rtol=1e-12, atol=1e-12)


def test_anderson_singular_least_squares_falls_back_instead_of_crashing():
    """f = 0.5 z + b makes consecutive residuals exactly parallel (g_1 = g_0 / 2): with lam=0 the
    Gram matrix is singular, which crashes a plain linear solve."""
    b = torch.randn(3, 5, dtype=torch.float64)
    result = fixedpoint.anderson(
        lambda z: 0.5 * z + b,
        torch.zeros_like(b),
        lam=0.0,
        tol=1e-12,
        max_iter=200,
        on_failure="raise",
    )
    torch.testing.assert_close(result.x, 2 * b, rtol=1e-12, atol=1e-12)
    gram = torch.tensor([[[4.0, 2.0], [2.0, 1.0]]], dtype=torch.float64)
    step = _AndersonStep(torch.zeros(1, 5, dtype=torch.float64), m=2, lam=0.0, beta=1.0)
    with pytest.raises(RuntimeError):
        torch.linalg.cholesky(gram)
    torch.testing.assert_close(
        step._coefficients(gram, newest=1), torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    )


def test_complex_anderson_uses_a_hermitian_gram_matrix():
    """On a complex Hermitian contraction, complex (Hermitian) mixing needs no more iterations
    than Anderson on the real view, and coefficients="real" is the real view exactly."""
    n, batch = 64, 3
    A = contraction(n, 0.9, torch.complex128, hermitian=True)
    b = torch.randn(batch, n, dtype=torch.complex128)
    f = linear_map(A, b)

    def f_real(x):
        return torch.view_as_real(f(torch.view_as_complex(x)))

    z0 = torch.zeros_like(b)
    kwargs = {"tol": 1e-10, "max_iter": 500, "on_failure": "raise"}
    cplx = fixedpoint.anderson(f, z0, **kwargs)
    real = fixedpoint.anderson(f, z0, coefficients="real", **kwargs)
    view = fixedpoint.anderson(f_real, torch.view_as_real(z0), **kwargs)
    assert (cplx.iterations <= view.iterations).all()
    assert torch.equal(real.iterations, view.iterations)
    torch.testing.assert_close(torch.view_as_real(real.x), view.x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cplx.x, direct_solution(A, b), rtol=1e-9, atol=1e-9)


def test_complex_map_that_is_not_complex_linear_converges_with_real_coefficients():
    """f(z) = A z + B conj(z) + b is only real-linear: real coefficients match the real view."""
    n = 16
    A = contraction(n, 0.4, torch.complex128)
    B = contraction(n, 0.4, torch.complex128)
    b = torch.randn(2, n, dtype=torch.complex128)

    def f(z):
        return z @ A.T + z.conj() @ B.T + b

    for coefficients in ("complex", "real"):
        result = fixedpoint.anderson(
            f,
            torch.zeros_like(b),
            coefficients=coefficients,
            tol=1e-12,
            max_iter=500,
            on_failure="raise",
        )
        torch.testing.assert_close(f(result.x), result.x, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", METHODS)
def test_f_is_always_called_on_the_whole_batch_and_z0_is_untouched(method):
    b = torch.randn(4, 3)
    shapes = []
    z0 = torch.zeros(4, 3)
    z0_copy = z0.clone()

    def f(z):
        shapes.append(tuple(z.shape))
        return 0.5 * z + b * torch.arange(1, 5).unsqueeze(1)

    fixedpoint.solve(f, z0, method, tol=1e-6)
    assert set(shapes) == {(4, 3)}
    assert torch.equal(z0, z0_copy)


def test_solve_keeps_no_graph():
    w = torch.tensor(0.5, requires_grad=True)
    b = torch.randn(2, 3, requires_grad=True)
    result = fixedpoint.solve(lambda z: w * z + b, torch.zeros(2, 3))
    assert not result.x.requires_grad
    assert result.x.grad_fn is None


@pytest.mark.parametrize("method", METHODS)
def test_batch_of_zero_samples(method):
    result = fixedpoint.solve(lambda z: 0.5 * z, torch.zeros(0, 3), method)
    assert result.x.shape == (0, 3)
    assert result.converged.shape == (0,)
