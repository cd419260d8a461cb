"""invert_step: inverse of a gradient step of a least-squares data term (MEL, Alg. 2)."""

from __future__ import annotations

import pytest
import torch

import fixedpoint

F64 = torch.float64


def least_squares(
    m: int, n: int, batch: int, dtype: torch.dtype, device: torch.device | str = "cpu"
):
    """A, b and grad D(x) = A^H (A x - b) for D(x) = ||A x - b||^2 / 2, and lambda_max(A^H A)."""
    A = torch.randn(m, n, dtype=dtype, device=device) / m**0.5
    b = torch.randn(batch, m, dtype=dtype, device=device)

    def grad(x):
        return (x @ A.T - b) @ A.conj()

    lmax = torch.linalg.eigvalsh((A.mH @ A).cpu()).max().item()
    return grad, lmax


@pytest.mark.parametrize("method", ["anderson", "banach"])
@pytest.mark.parametrize("dtype", [torch.float32, F64, torch.complex64, torch.complex128])
def test_inverts_a_gradient_step_of_least_squares(method, dtype, device):
    grad, lmax = least_squares(20, 12, 3, dtype, device)
    alpha = 0.8 / lmax
    x = torch.randn(3, 12, dtype=dtype, device=device)
    z = x - alpha * grad(x)  # the forward (gradient) step
    precise = dtype in (F64, torch.complex128)
    tol = 1e-12 if precise else 1e-6
    result = fixedpoint.invert_step(
        lambda v: alpha * grad(v),
        z,
        method=method,
        lipschitz=alpha * lmax,
        tol=tol,
        max_iter=500,
        on_failure="raise",
        return_result=True,
    )
    assert result.converged.all()
    assert (result.residuals <= tol).all()
    torch.testing.assert_close(
        result.x, x, rtol=1e-9 if precise else 2e-5, atol=1e-9 if precise else 2e-5
    )


def test_error_bound_from_the_lipschitz_constant():
    """||x_returned - x|| <= L / (1 - L) * absolute residual (Banach's a-posteriori bound)."""
    grad, lmax = least_squares(15, 10, 4, F64)
    L = 0.9
    alpha = L / lmax
    x = torch.randn(4, 10, dtype=F64)
    z = x - alpha * grad(x)
    result = fixedpoint.invert_step(
        lambda v: alpha * grad(v),
        z,
        method="banach",
        lipschitz=L,
        tol=1e-4,
        stop_mode="abs",
        return_result=True,
    )
    error = torch.linalg.vector_norm(result.x - x, dim=1)
    # Picard on this symmetric map makes the bound asymptotically tight: allow for rounding
    assert (error <= L / (1 - L) * result.residuals * (1 + 1e-9)).all()
    assert (error >= 0.5 * L / (1 - L) * result.residuals).all()
    assert (error > 0).all()  # a loose tolerance: the bound is not vacuous


def test_refuses_a_step_size_above_one_over_L_before_iterating():
    grad, lmax = least_squares(10, 6, 2, F64)
    alpha = 1.1 / lmax
    calls = []

    def g(v):
        calls.append(1)
        return alpha * grad(v)

    z = torch.randn(2, 6, dtype=F64)
    with pytest.raises(ValueError, match=r"Lipschitz bound of g is 1.1 >= 1.*MEL, Eq. 7"):
        fixedpoint.invert_step(g, z, lipschitz=alpha * lmax)
    with pytest.raises(ValueError, match=r">= 1 for samples \[1\]"):
        fixedpoint.invert_step(g, z, lipschitz=torch.tensor([0.5, 1.0]))
    assert not calls


def test_per_sample_lipschitz_bounds_below_one_are_accepted():
    grad, lmax = least_squares(10, 6, 2, F64)
    alpha = torch.tensor([[0.3], [0.7]], dtype=F64) / lmax
    x = torch.randn(2, 6, dtype=F64)
    z = x - alpha * grad(x)
    x_rec = fixedpoint.invert_step(
        lambda v: alpha * grad(v), z, lipschitz=alpha.flatten() * lmax, tol=1e-12
    )
    torch.testing.assert_close(x_rec, x, rtol=1e-10, atol=1e-10)


def test_inside_a_backward_pass_without_a_graph():
    """MEL's reverse recalculation: a custom Function recomputes its input in backward."""
    grad, lmax = least_squares(10, 6, 2, F64)
    alpha = 0.5 / lmax

    class GradientStep(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            z = x - alpha * grad(x)
            ctx.save_for_backward(z)  # the output only; the input is recomputed
            return z

        @staticmethod
        def backward(ctx, gz):
            (z,) = ctx.saved_tensors
            x = fixedpoint.invert_step(lambda v: alpha * grad(v), z, tol=1e-12)
            assert not x.requires_grad
            with torch.enable_grad():
                xr = x.detach().requires_grad_()
                (gx,) = torch.autograd.grad(xr - alpha * grad(xr), xr, gz)
            return gx

    x = torch.randn(2, 6, dtype=F64, requires_grad=True)
    (GradientStep.apply(x) ** 2).sum().backward()
    got = x.grad.clone()
    x.grad = None
    ((x - alpha * grad(x)) ** 2).sum().backward()
    torch.testing.assert_close(got, x.grad, rtol=1e-10, atol=1e-10)


def test_under_enable_grad_the_result_keeps_no_graph():
    w = torch.tensor(0.3, requires_grad=True)
    y = torch.randn(2, 3)
    x = fixedpoint.invert_step(lambda v: w * torch.tanh(v), y, lipschitz=0.3)
    assert not x.requires_grad
    torch.testing.assert_close(x, y + 0.3 * torch.tanh(x), rtol=1e-5, atol=1e-5)


def test_tuple_states_and_x0():
    y = (torch.randn(2, 3, dtype=F64), torch.randn(2, 1, dtype=F64))

    def g(state):
        u, v = state
        return (0.5 * torch.sin(u) + 0.1 * v, 0.2 * torch.cos(v))

    x = fixedpoint.invert_step(g, y, tol=1e-12, x0=(torch.zeros(2, 3, dtype=F64), y[1]))
    gx = g(x)
    torch.testing.assert_close(x[0], y[0] + gx[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(x[1], y[1] + gx[1], rtol=1e-10, atol=1e-10)


def test_non_convergence_reports_the_achieved_residual():
    with pytest.warns(
        fixedpoint.ConvergenceWarning, match=r"relative residuals \[.*\] > tol=1e-06"
    ):
        fixedpoint.invert_step(
            lambda v: 0.99 * torch.sin(v), torch.ones(1, 4), method="banach", max_iter=3
        )


# -- bad inputs -----------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [-0.1, float("nan")])
def test_lipschitz_must_be_finite_and_non_negative(bad):
    with pytest.raises(ValueError, match="lipschitz must be finite and >= 0"):
        fixedpoint.invert_step(lambda v: v, torch.zeros(1, 2), lipschitz=bad)


def test_lipschitz_of_the_wrong_type_or_shape():
    with pytest.raises(TypeError, match="lipschitz must be a number, a tensor or None, got str"):
        fixedpoint.invert_step(lambda v: v, torch.zeros(1, 2), lipschitz="0.5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"lipschitz has 3 entries but y has a batch of 2"):
        fixedpoint.invert_step(lambda v: v, torch.zeros(2, 2), lipschitz=torch.full((3,), 0.5))
    with pytest.raises(ValueError, match=r"real tensor of shape \(\) or \(batch,\)"):
        fixedpoint.invert_step(lambda v: v, torch.zeros(2, 2), lipschitz=torch.full((2, 2), 0.5))


def test_g_output_is_checked():
    with pytest.raises(ValueError, match=r"g has shape \(1, 3\), but the state has shape \(1, 2\)"):
        fixedpoint.invert_step(lambda v: torch.zeros(1, 3), torch.zeros(1, 2))


def test_x0_must_match_y():
    with pytest.raises(ValueError, match=r"x0 must be structured like y"):
        fixedpoint.invert_step(lambda v: 0.5 * v, torch.zeros(1, 2), x0=torch.zeros(1, 3))


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown fixed-point method 'fixed_point_iter'"):
        fixedpoint.invert_step(lambda v: 0.5 * v, torch.zeros(1, 2), method="fixed_point_iter")
