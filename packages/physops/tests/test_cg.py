"""cg and least_squares: direct-solve agreement, per-sample stopping, implicit gradients, errors."""

from __future__ import annotations

import pytest
import torch

import physops
from physops import ConvergenceError, ConvergenceWarning, Sense, SolveResult, cg, least_squares


def spd(batch: int, n: int, dtype=torch.float64, shift: float = 1.0) -> torch.Tensor:
    m = torch.randn(batch, n, n, dtype=dtype)
    return m @ m.mH + shift * torch.eye(n, dtype=dtype)


def matvec(a: torch.Tensor):
    return lambda v: (a @ v[..., None])[..., 0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64, torch.complex128])
def test_cg_equals_direct_solve(dtype, device):
    a = spd(4, 6, dtype).to(device)
    b = torch.randn(4, 6, dtype=dtype, device=device)
    tol = 1e-6 if dtype in (torch.float32, torch.complex64) else 1e-12
    res = cg(matvec(a), b, tol=tol)
    assert isinstance(res, SolveResult)
    assert res.x.dtype == dtype
    assert bool(res.converged.all())
    assert res.iterations.shape == (4,)
    assert res.residuals.shape == (4,)
    atol = 1e-3 if dtype in (torch.float32, torch.complex64) else 1e-9
    torch.testing.assert_close(res.x, torch.linalg.solve(a, b), atol=atol, rtol=atol)


def test_cg_over_image_shaped_systems_with_several_batch_dims():
    # A x = d * x + blur-like symmetric coupling; each (i, j) sample is its own 3x4 "image" system.
    d = torch.rand(2, 3, 3, 4, dtype=torch.float64) + 1.0
    b = torch.randn(2, 3, 3, 4, dtype=torch.float64)
    res = cg(lambda v: d * v, b, batch_dims=2, tol=1e-12)
    assert res.iterations.shape == (2, 3)
    torch.testing.assert_close(res.x, b / d)


def test_per_sample_stopping():
    a = torch.stack([torch.eye(8, dtype=torch.float64), spd(1, 8, shift=0.1)[0]])
    b = torch.randn(2, 8, dtype=torch.float64)
    b[1] = b[1]
    res = cg(matvec(a), b, tol=1e-10)
    assert int(res.iterations[0]) == 1  # the identity is solved in one step ...
    assert int(res.iterations[1]) > 1  # ... while the other system keeps iterating
    torch.testing.assert_close(res.x, torch.linalg.solve(a, b))


def test_zero_right_hand_side_converges_at_once_to_zero():
    a = spd(2, 5)
    b = torch.randn(2, 5, dtype=torch.float64)
    b[0] = 0
    res = cg(matvec(a), b, x0=torch.ones(2, 5, dtype=torch.float64), tol=1e-12)
    assert int(res.iterations[0]) == 0
    assert bool(res.converged[0])
    torch.testing.assert_close(res.x[0], torch.zeros(5, dtype=torch.float64))


def test_warm_start_takes_fewer_iterations_and_gets_no_gradient():
    a = spd(3, 80, shift=20.0)
    b = torch.randn(3, 80, dtype=torch.float64)
    exact = torch.linalg.solve(a, b)
    cold = cg(matvec(a), b, tol=1e-10)
    x0 = (exact + 1e-6 * torch.randn_like(exact)).requires_grad_()
    warm = cg(matvec(a), b, x0=x0, tol=1e-10)
    assert bool((cold.iterations < 80).all())  # a well-conditioned system: no finite termination
    assert bool((warm.iterations < cold.iterations).all())
    torch.testing.assert_close(warm.x, exact)
    assert not warm.x.requires_grad  # nothing but x0 needs grad, and x0 gets none


def test_nonconvergence_is_reported():
    res = cg(matvec(spd(2, 30, shift=1e-3)), torch.randn(2, 30, dtype=torch.float64), max_iter=3)
    assert not bool(res.converged.any())
    assert bool((res.iterations == 3).all())
    assert bool((res.residuals > 1e-5).all())


def test_on_fail_warn():
    with pytest.warns(
        RuntimeWarning, match=r"cg did not converge for 2 of 2 systems within max_iter=2"
    ):
        cg(
            matvec(spd(2, 30, shift=1e-3)),
            torch.randn(2, 30, dtype=torch.float64),
            max_iter=2,
            on_failure="warn",
        )


def test_on_fail_raise():
    with pytest.raises(RuntimeError, match=r"cg did not converge for 2 of 2 systems"):
        cg(
            matvec(spd(2, 30, shift=1e-3)),
            torch.randn(2, 30, dtype=torch.float64),
            max_iter=2,
            on_failure="raise",
        )


# -- gradients -----------------------------------------------------------------------------------
def grads(backward: str, dtype=torch.float64):
    """Gradients of a loss through cg w.r.t. b, mu, a matrix factor and a closure tensor."""
    torch.manual_seed(1)
    m = torch.randn(3, 6, 6, dtype=dtype, requires_grad=True)
    mu = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    d = (torch.rand(3, 6, dtype=torch.float64) + 0.5).requires_grad_()  # closed over, not an input
    b = torch.randn(3, 6, dtype=dtype, requires_grad=True)
    target = torch.randn(3, 6, dtype=dtype)

    def apply_a(v):
        return (m.mH @ (m @ v[..., None]))[..., 0] + mu * v + d * v

    x = cg(apply_a, b, tol=1e-13, max_iter=200, backward=backward).x
    (x - target).abs().square().sum().backward()
    return x.detach(), b.grad, mu.grad, m.grad, d.grad


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_implicit_gradients_equal_backprop_through_the_iterations(dtype):
    implicit = grads("implicit", dtype)
    unrolled = grads("unrolled", dtype)
    for a, b in zip(implicit, unrolled):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


def test_implicit_gradients_equal_the_direct_solve():
    torch.manual_seed(1)
    a = spd(2, 5, shift=0.5).requires_grad_()
    b = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    x = cg(matvec(a), b, tol=1e-13).x
    x.square().sum().backward()
    a2 = a.detach().clone().requires_grad_()
    b2 = b.detach().clone().requires_grad_()
    torch.linalg.solve(a2, b2).square().sum().backward()
    torch.testing.assert_close(b.grad, b2.grad)
    torch.testing.assert_close(a.grad, a2.grad)


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_gradcheck_through_cg(dtype):
    m = torch.randn(2, 4, 4, dtype=dtype)

    def solve(b, mu, scale):
        def apply_a(v):
            return scale * (m.mH @ (m @ v[..., None]))[..., 0] + mu * v

        return cg(apply_a, b, tol=1e-14, max_iter=100).x

    b = torch.randn(2, 4, dtype=dtype, requires_grad=True)
    mu = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(solve, (b, mu, scale))


def saved_bytes(max_iter: int, backward: str) -> int:
    """Bytes autograd keeps for the backward of a cg solve, counted by saved-tensor hooks."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    a = spd(2, 64, shift=1e-2).requires_grad_()
    b = torch.randn(2, 64, dtype=torch.float64, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        cg(matvec(a), b, tol=0.0, max_iter=max_iter, backward=backward)
    return total


def test_implicit_backward_memory_does_not_grow_with_iterations():
    assert saved_bytes(5, "implicit") == saved_bytes(50, "implicit")
    assert saved_bytes(50, "unrolled") > 5 * saved_bytes(5, "implicit")
    assert saved_bytes(50, "unrolled") > 4 * saved_bytes(5, "unrolled")


def test_no_graph_in_no_grad_mode():
    b = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        x = cg(matvec(spd(2, 5)), b).x
    assert x.grad_fn is None


# -- least_squares: MoDL's data consistency -------------------------------------------------------
def dense_sense(op: Sense, shape) -> torch.Tensor:
    n = int(torch.tensor(shape).prod())
    eye = torch.eye(n, dtype=torch.complex128).reshape(n, *shape)
    return op(eye).reshape(n, -1).T  # columns = A e_i


def test_least_squares_equals_the_normal_equations():
    maps = torch.randn(1, 3, 4, 5, dtype=torch.complex128)
    mask = (torch.rand(4, 5) < 0.5).double()
    op = Sense(maps, mask)
    a = dense_sense(op, (4, 5))
    x_true = torch.randn(1, 4, 5, dtype=torch.complex128)
    y = op(x_true)
    z = torch.randn(1, 4, 5, dtype=torch.complex128)
    mu = 0.3
    res = least_squares(op, y, mu, z, max_iter=200, tol=1e-13)
    lhs = a.mH @ a + mu * torch.eye(20, dtype=torch.complex128)
    rhs = a.mH @ y.reshape(-1) + mu * z.reshape(-1)
    torch.testing.assert_close(res.x.reshape(-1), torch.linalg.solve(lhs, rhs))


def test_least_squares_gradients_reach_mu_z_y_and_learnable_maps():
    def run(backward):
        torch.manual_seed(3)
        maps = torch.nn.Parameter(torch.randn(2, 3, 4, 5, dtype=torch.complex128))
        op = Sense(maps, (torch.rand(2, 1, 5) < 0.6).double())
        mu = torch.nn.Parameter(torch.tensor(0.5, dtype=torch.float64))
        y = torch.randn(2, 3, 4, 5, dtype=torch.complex128, requires_grad=True)
        z = torch.randn(2, 4, 5, dtype=torch.complex128, requires_grad=True)
        res = least_squares(op, y, mu, z, max_iter=300, tol=1e-13, backward=backward)
        res.x.abs().sum().backward()
        return maps.grad, mu.grad, y.grad, z.grad

    for g_implicit, g_unrolled in zip(run("implicit"), run("unrolled")):
        assert g_implicit is not None
        torch.testing.assert_close(g_implicit, g_unrolled, rtol=1e-7, atol=1e-9)


def test_least_squares_per_sample_mu_keeps_single_precision():
    maps = torch.randn(2, 2, 4, 4, dtype=torch.complex64)
    y = torch.randn(2, 2, 4, 4, dtype=torch.complex64)
    mu = torch.tensor([0.5, 2.0], dtype=torch.float64).reshape(2, 1, 1)
    res = least_squares(Sense(maps), y, mu)
    assert res.x.dtype == torch.complex64
    for i in range(2):
        single = least_squares(Sense(maps[i : i + 1]), y[i : i + 1], float(mu[i]))
        torch.testing.assert_close(res.x[i : i + 1], single.x, rtol=1e-4, atol=1e-5)


# -- errors: one test per message -----------------------------------------------------------------
def test_mu_zero():
    op = Sense(torch.randn(1, 2, 4, 4, dtype=torch.complex64))
    with pytest.raises(
        ValueError, match=r"mu must be positive and finite, got 0\.0: \(A\^H A \+ mu I\)"
    ):
        least_squares(op, torch.zeros(1, 2, 4, 4, dtype=torch.complex64), 0.0)


def test_mu_negative_tensor():
    op = Sense(torch.randn(1, 2, 4, 4, dtype=torch.complex64))
    with pytest.raises(ValueError, match=r"got a tensor with minimum -0.1.*softplus"):
        least_squares(
            op,
            torch.zeros(1, 2, 4, 4, dtype=torch.complex64),
            torch.tensor([0.5, -0.1]).reshape(2, 1, 1),
        )


def test_mu_wrong_type():
    op = Sense(torch.randn(1, 2, 4, 4, dtype=torch.complex64))
    with pytest.raises(TypeError, match=r"mu must be a positive number or a real tensor, got str"):
        least_squares(op, torch.zeros(1, 2, 4, 4, dtype=torch.complex64), "1")  # type: ignore[arg-type]


def test_least_squares_needs_an_operator():
    with pytest.raises(TypeError, match=r"op must be a physops.LinearOperator, got function"):
        least_squares(lambda v: v, torch.zeros(1, 4), 1.0)  # type: ignore[arg-type]


def test_apply_a_must_be_square():
    op = Sense(torch.randn(1, 2, 4, 4, dtype=torch.complex64))
    with pytest.raises(
        ValueError, match=r"got shape \(1, 2, 4, 4\) and dtype torch\.complex64: A must be square"
    ):
        cg(op, torch.randn(1, 4, 4, dtype=torch.complex64))


def test_apply_a_must_be_callable():
    with pytest.raises(TypeError, match=r"apply_A must be callable"):
        cg(torch.eye(3), torch.zeros(1, 3))  # type: ignore[arg-type]


def test_b_must_be_a_tensor():
    with pytest.raises(TypeError, match=r"b must be a torch.Tensor, got list"):
        cg(lambda v: v, [1.0, 2.0])  # type: ignore[arg-type]


def test_b_must_be_floating():
    with pytest.raises(TypeError, match=r"b must be floating or complex, got dtype torch\.int64"):
        cg(lambda v: v, torch.zeros(1, 3, dtype=torch.int64))


def test_x0_shape():
    with pytest.raises(
        ValueError,
        match=r"x0 must have the shape and dtype of b \(\(2, 3\), torch\.float32\), got \(\(3,\)",
    ):
        cg(lambda v: v, torch.zeros(2, 3), x0=torch.zeros(3))


def test_max_iter_negative():
    with pytest.raises(ValueError, match=r"max_iter must be a non-negative integer, got -1"):
        cg(lambda v: v, torch.zeros(1, 3), max_iter=-1)


def test_tol_negative():
    with pytest.raises(ValueError, match=r"tol must be a finite number >= 0, got -1e-05"):
        cg(lambda v: v, torch.zeros(1, 3), tol=-1e-5)


def test_batch_dims_leaves_no_system_dims():
    with pytest.raises(
        ValueError, match=r"batch_dims must satisfy 0 <= batch_dims < b.ndim = 2, got 2"
    ):
        cg(lambda v: v, torch.zeros(1, 3), batch_dims=2)


def test_unknown_backward():
    with pytest.raises(
        ValueError, match=r"unknown backward 'adjoint'; valid names are implicit, unrolled"
    ):
        cg(lambda v: v, torch.zeros(1, 3), backward="adjoint")


def test_unknown_on_failure():
    with pytest.raises(
        ValueError, match=r"unknown on_failure 'stop'; valid names are ignore, warn, raise"
    ):
        cg(lambda v: v, torch.zeros(1, 3), on_failure="stop")


def test_max_iter_not_an_integer():
    with pytest.raises(TypeError, match=r"cg: max_iter must be a non-negative integer, got True"):
        cg(lambda v: v, torch.zeros(1, 3), max_iter=True)
    with pytest.raises(TypeError, match=r"cg: max_iter must be a non-negative integer, got 2\.5"):
        cg(lambda v: v, torch.zeros(1, 3), max_iter=2.5)  # type: ignore[arg-type]


def test_tol_not_a_number():
    with pytest.raises(TypeError, match=r"cg: tol must be a real number, got str"):
        cg(lambda v: v, torch.zeros(1, 3), tol="1e-5")  # type: ignore[arg-type]


def test_batch_dims_bool_is_refused():
    with pytest.raises(TypeError, match=r"cg: batch_dims must be an integer, got True"):
        cg(lambda v: v, torch.zeros(1, 3), batch_dims=True)


# -- the solver convention shared with fixedpoint ------------------------------------------------
def _hard_system():
    return matvec(spd(2, 30, shift=1e-3)), torch.randn(2, 30, dtype=torch.float64)


def test_result_fields_and_tuple_unpacking():
    a = spd(3, 5)
    b = torch.randn(3, 5, dtype=torch.float64)
    res = cg(matvec(a), b, tol=1e-12)
    assert SolveResult._fields == ("x", "iterations", "residuals", "converged")
    x, iterations, residuals, converged = res
    assert x is res.x
    assert iterations is res.iterations
    assert residuals is res.residuals
    assert converged is res.converged


def test_convergence_classes_are_exported_and_subclass_the_builtins():
    assert issubclass(physops.ConvergenceWarning, RuntimeWarning)
    assert issubclass(physops.ConvergenceError, RuntimeError)
    assert {"ConvergenceWarning", "ConvergenceError"} <= set(physops.__all__)


def test_on_failure_warn_warns_a_convergence_warning():
    apply_a, b = _hard_system()
    with pytest.warns(ConvergenceWarning, match=r"cg did not converge for 2 of 2 systems"):
        res = cg(apply_a, b, max_iter=2, on_failure="warn")
    assert not bool(res.converged.any())


def test_on_failure_raise_carries_the_result():
    apply_a, b = _hard_system()
    with pytest.raises(ConvergenceError, match=r"raise max_iter, loosen tol") as caught:
        cg(apply_a, b, max_iter=2, on_failure="raise")
    result = caught.value.result
    assert isinstance(result, SolveResult)
    assert bool((result.iterations == 2).all())
    assert not bool(result.converged.any())


def test_on_failure_ignore_is_the_default_and_silent():
    apply_a, b = _hard_system()
    res = cg(apply_a, b, max_iter=2)  # warnings are errors in this suite
    assert not bool(res.converged.any())


def test_least_squares_takes_on_failure():
    op = Sense(torch.randn(1, 2, 4, 4, dtype=torch.complex128))
    y = torch.randn(1, 2, 4, 4, dtype=torch.complex128)
    with pytest.raises(ConvergenceError, match=r"cg did not converge for 1 of 1 systems"):
        least_squares(op, y, 1e-3, max_iter=1, tol=0.0, on_failure="raise")


# -- deprecated aliases (physops 0.1 names; removed in 0.3) ---------------------------------------
def test_deprecated_residual_alias():
    res = cg(matvec(spd(2, 4)), torch.randn(2, 4, dtype=torch.float64))
    with pytest.warns(DeprecationWarning, match=r"SolveResult\.residual is deprecated.*residuals"):
        alias = res.residual
    assert alias is res.residuals


def test_deprecated_on_fail_alias_of_cg():
    apply_a, b = _hard_system()
    with (
        pytest.warns(DeprecationWarning, match=r"cg\(on_fail=\.\.\.\) is deprecated"),
        pytest.raises(ConvergenceError),
    ):
        cg(apply_a, b, max_iter=2, on_fail="raise")


def test_deprecated_on_fail_alias_of_least_squares():
    op = Sense(torch.randn(1, 2, 4, 4, dtype=torch.complex128))
    y = torch.randn(1, 2, 4, 4, dtype=torch.complex128)
    with pytest.warns(DeprecationWarning, match=r"least_squares\(on_fail=\.\.\.\) is deprecated"):
        res = least_squares(op, y, 1.0, on_fail="ignore")
    assert res.x.shape == (1, 4, 4)


def test_on_fail_and_on_failure_disagreeing():
    with (
        pytest.warns(DeprecationWarning, match="on_fail"),
        pytest.raises(ValueError, match=r"pass on_failure only"),
    ):
        cg(lambda v: v, torch.zeros(1, 3), on_failure="warn", on_fail="raise")
