"""power_iteration against eigvalsh; check_adjoint and check_gradients catch broken operators."""

from __future__ import annotations

import pytest
import torch

from physops import (
    Blur,
    Identity,
    LinearOperator,
    Sense,
    check_adjoint,
    check_gradients,
    gaussian_kernel,
    power_iteration,
)


class Matrix(LinearOperator):
    def __init__(self, m: torch.Tensor, wrong_adjoint: bool = False) -> None:
        super().__init__(in_shape=(m.shape[-1],), out_shape=(m.shape[-2],))
        self.register_buffer("m", m)
        self.wrong_adjoint = wrong_adjoint

    def forward(self, x):
        return (self.m.to(x.dtype) @ x[..., None])[..., 0]

    def adjoint(self, y):
        m = self.m.to(y.dtype)
        m = m.mT if self.wrong_adjoint else m.mH  # the bug: transpose without conjugation
        return (m @ y[..., None])[..., 0]


def dense_sense(op: Sense, shape) -> torch.Tensor:
    n = int(torch.tensor(shape).prod())
    eye = torch.eye(n, dtype=torch.complex128).reshape(n, *shape)
    return op(eye).reshape(n, -1).T


# -- power_iteration -------------------------------------------------------------------------------
def test_power_iteration_equals_largest_eigenvalue_of_the_normal_matrix():
    maps = torch.randn(1, 3, 4, 5, dtype=torch.complex128)
    op = Sense(maps, (torch.rand(4, 5) < 0.6).double())
    a = dense_sense(op, (4, 5))
    expected = torch.linalg.eigvalsh(a.mH @ a)[-1]
    estimate = power_iteration(op, torch.zeros(1, 4, 5, dtype=torch.complex128), 500, tol=1e-12)
    torch.testing.assert_close(estimate, expected, rtol=1e-6, atol=0)
    assert estimate.dtype == torch.float64


def test_power_iteration_per_sample_and_batch_max():
    maps = torch.randn(3, 2, 4, 4, dtype=torch.complex128) * torch.tensor([1.0, 2.0, 0.5]).reshape(
        3, 1, 1, 1
    )
    op = Sense(maps)
    x_like = torch.zeros(3, 4, 4, dtype=torch.complex128)
    per_sample = power_iteration(op, x_like, 500, tol=1e-13, batch_dims=1)
    assert per_sample.shape == (3,)
    for i in range(3):
        a = dense_sense(Sense(maps[i : i + 1]), (4, 4))
        torch.testing.assert_close(
            per_sample[i], torch.linalg.eigvalsh(a.mH @ a)[-1], rtol=1e-6, atol=0
        )
    overall = power_iteration(op, x_like, 500, tol=1e-13)
    assert overall.shape == ()
    torch.testing.assert_close(overall, per_sample.max(), rtol=1e-6, atol=0)


def test_power_iteration_of_a_normalised_blur_is_one():
    # A Gaussian kernel sums to one and is positive, so its largest frequency response is 1 (DC).
    op = Blur(gaussian_kernel(dtype=torch.float64))
    estimate = power_iteration(op, torch.zeros(1, 16, 16, dtype=torch.float64), 300, tol=1e-12)
    torch.testing.assert_close(estimate, torch.tensor(1.0, dtype=torch.float64), rtol=1e-4, atol=0)


def test_power_iteration_leaves_global_rng_alone_and_is_deterministic():
    state = torch.get_rng_state()
    op = 2.0 * Identity()
    first = power_iteration(op, torch.zeros(2, 3))
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(first, torch.tensor(4.0))
    assert not first.requires_grad


def test_power_iteration_bad_iterations():
    with pytest.raises(ValueError, match=r"iterations must be a positive integer, got 0"):
        power_iteration(Identity(), torch.zeros(2, 3), 0)


def test_power_iteration_bad_x_like():
    with pytest.raises(
        TypeError, match=r"x_like must be a floating or complex tensor, got dtype torch\.int64"
    ):
        power_iteration(Identity(), torch.zeros(2, 3, dtype=torch.int64))


def test_power_iteration_bad_batch_dims():
    with pytest.raises(ValueError, match=r"batch_dims must be 0 or 1"):
        power_iteration(Identity(), torch.zeros(2, 3), batch_dims=2)


def test_power_iteration_bad_op():
    with pytest.raises(TypeError, match=r"op must be a physops.LinearOperator, got Tensor"):
        power_iteration(torch.eye(3), torch.zeros(3))  # type: ignore[arg-type]


# -- check_adjoint ---------------------------------------------------------------------------------
def test_check_adjoint_passes_a_correct_operator_and_returns_the_error():
    op = Matrix(torch.randn(4, 3, dtype=torch.complex128))
    error = check_adjoint(op, torch.zeros(2, 3, dtype=torch.complex128))
    assert 0 <= error < 1e-12


def test_check_adjoint_catches_a_missing_conjugation():
    op = Matrix(torch.randn(4, 3, dtype=torch.complex128), wrong_adjoint=True)
    with pytest.raises(
        AssertionError,
        match=r"Matrix fails <Ax, y> = <x, A\^H y>: relative error \d\.\d+e[-+]\d+ > tol 1\.0e-10",
    ):
        check_adjoint(op, torch.zeros(2, 3, dtype=torch.complex128))


def test_check_adjoint_catches_a_wrong_normal():
    class BadNormal(Matrix):
        def normal(self, x):
            return 2 * super().normal(x)

    with pytest.raises(AssertionError, match=r"normal\(x\) differs from adjoint\(forward\(x\)\)"):
        check_adjoint(BadNormal(torch.randn(4, 3)), torch.zeros(3))


def test_check_adjoint_catches_a_wrong_adjoint_shape():
    class Cropping(Matrix):
        def adjoint(self, y):
            return super().adjoint(y)[..., :2]

    with pytest.raises(
        AssertionError, match=r"adjoint returned shape \(2,\) for an input of shape \(3,\)"
    ):
        check_adjoint(Cropping(torch.randn(4, 3)), torch.zeros(3))


def test_check_adjoint_bad_x_like():
    with pytest.raises(TypeError, match=r"x_like must be a floating or complex tensor .* got list"):
        check_adjoint(Identity(), [1.0])  # type: ignore[arg-type]


# -- check_gradients -------------------------------------------------------------------------------
class _BrokenScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, grad):
        return 3 * grad  # wrong on purpose


class BrokenGradient(LinearOperator):
    def forward(self, x):
        return _BrokenScale.apply(x)

    def adjoint(self, y):
        return 2 * y


def test_check_gradients_catches_a_wrong_backward():
    with pytest.raises(AssertionError, match=r"gradients of BrokenGradient\.forward disagree"):
        check_gradients(BrokenGradient(), torch.zeros(3))


def test_check_gradients_checks_learnable_parameters():
    class LeakyParameter(LinearOperator):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor(1.5))

        def forward(self, x):
            return self.w.detach() * x + 0 * self.w  # the parameter's gradient is lost

        def adjoint(self, y):
            return self.w * y

    assert check_gradients(LeakyParameter(), torch.zeros(3), parameters=False)
    with pytest.raises(AssertionError, match=r"LeakyParameter\.forward .* parameters w"):
        check_gradients(LeakyParameter(), torch.zeros(3))


def test_check_gradients_passes_a_scaled_composition():
    mu = torch.nn.Parameter(torch.tensor(0.5))
    op = Blur(gaussian_kernel(3, 1.0)) @ (mu * Identity())
    assert check_gradients(op, torch.zeros(1, 5, 5))
