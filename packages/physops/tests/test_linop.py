"""The LinearOperator algebra: adjoint cache, composition, sums, scalar multiples, identity."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from physops import Identity, LinearOperator
from physops._linop import operand, register_operand


class Matrix(LinearOperator):
    """A dense matrix acting on the last dimension: the test bed for the algebra."""

    def __init__(self, m: torch.Tensor) -> None:
        super().__init__(in_shape=(m.shape[1],), out_shape=(m.shape[0],))
        register_operand(self, "m", m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ operand(self, "m", x).T

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return y @ operand(self, "m", y).conj()


def dense(op: LinearOperator, n: int, dtype: torch.dtype) -> torch.Tensor:
    """The matrix of ``op`` built column by column."""
    return op(torch.eye(n, dtype=dtype)).T


@pytest.fixture
def mats():
    a = torch.randn(5, 3, dtype=torch.complex128)
    b = torch.randn(3, 4, dtype=torch.complex128)
    c = torch.randn(5, 3, dtype=torch.complex128)
    return a, b, c


def test_adjoint_is_cached_unregistered_and_involutive(mats):
    a = Matrix(mats[0])
    assert a.H is a.H
    assert a.H.H is a
    assert list(a.children()) == []  # the cache is not a submodule: no cycle a -> a.H -> a
    assert "m" in a.state_dict()
    torch.testing.assert_close(dense(a.H, 5, torch.complex128), mats[0].conj().T)
    copied = copy.deepcopy(a)  # a cached .H must not break copying
    assert copied.H.H is copied


def test_adjoint_follows_dtype_moves(mats):
    a = Matrix(mats[0])
    h = a.H
    a.to(torch.float32)  # complex operands are stored as real views: precision changes, data stays
    assert h.op.m.dtype == torch.float32  # the cached adjoint sees the moved buffers
    y = torch.randn(5, dtype=torch.complex64)
    out = h(y)
    assert out.dtype == torch.complex64
    torch.testing.assert_close(out, (y.to(torch.complex128) @ mats[0].conj()).to(out.dtype))


def test_operands_follow_the_input_precision(mats):
    a = Matrix(mats[0].to(torch.complex64))
    x = torch.randn(3, dtype=torch.complex128)
    assert a(x).dtype == torch.complex128
    assert operand(a, "m", x).dtype == torch.complex128
    assert operand(a, "m", torch.zeros(1)).dtype == torch.complex64


def test_operand_on_another_device_raises(mats):
    a = Matrix(mats[0]).to("meta")
    with pytest.raises(ValueError, match=r"Matrix.m is on meta but the input is on cpu: move"):
        a(torch.randn(3, dtype=torch.complex128))


def test_matmul_composes_and_applies(mats):
    a, b = Matrix(mats[0]), Matrix(mats[1])
    ab = a @ b
    assert ab.in_shape == (4,)
    assert ab.out_shape == (5,)
    torch.testing.assert_close(dense(ab, 4, torch.complex128), mats[0] @ mats[1])
    torch.testing.assert_close(dense(ab.H, 5, torch.complex128), (mats[0] @ mats[1]).conj().T)
    x = torch.randn(2, 4, dtype=torch.complex128)
    torch.testing.assert_close(ab @ x, ab(x))
    torch.testing.assert_close(ab.normal(x), ab.adjoint(ab(x)))


def test_sum_difference_and_negation(mats):
    a, c = Matrix(mats[0]), Matrix(mats[2])
    torch.testing.assert_close(dense(a + c, 3, torch.complex128), mats[0] + mats[2])
    torch.testing.assert_close(dense(a - c, 3, torch.complex128), mats[0] - mats[2])
    torch.testing.assert_close(dense(-a, 3, torch.complex128), -mats[0])
    torch.testing.assert_close(dense((a - c).H, 5, torch.complex128), (mats[0] - mats[2]).conj().T)


@pytest.mark.parametrize("scale", [2.5, 1.5 - 2j, torch.tensor(0.7), torch.tensor(0.3 + 0.4j)])
def test_scalar_multiple_and_its_adjoint_conjugates(mats, scale):
    a = Matrix(mats[0])
    s = complex(scale) if isinstance(scale, torch.Tensor) else scale
    for op in (scale * a, a * scale):
        torch.testing.assert_close(dense(op, 3, torch.complex128), s * mats[0])
        torch.testing.assert_close(dense(op.H, 5, torch.complex128), (s * mats[0]).conj().T)
        x = torch.randn(3, dtype=torch.complex128)
        torch.testing.assert_close(op.normal(x), op.adjoint(op(x)))
    torch.testing.assert_close(dense(a / 4, 3, torch.complex128), mats[0] / 4)


def test_learnable_scale_gets_gradients_and_is_a_parameter(mats):
    mu = nn.Parameter(torch.tensor(0.5, dtype=torch.float64))
    a = Matrix(mats[0])
    system = a.H @ a + mu * Identity()
    assert any(p is mu for p in system.parameters())
    x = torch.randn(3, dtype=torch.complex128)
    system(x).abs().square().sum().backward()
    expected = 2 * torch.vdot(x, (a.normal(x) + 0.5 * x)).real  # d/dmu ||(N + mu) x||^2
    torch.testing.assert_close(mu.grad, expected)


def test_tensor_scale_is_a_non_persistent_buffer(mats):
    op = torch.tensor(2.0) * Matrix(mats[0])
    assert "scale" not in op.state_dict()
    assert op.to(torch.float64).scale.dtype == torch.float64


def test_identity():
    x = torch.randn(2, 3, 4)
    eye = Identity()
    assert eye(x) is x
    assert eye.adjoint(x) is x
    assert eye.normal(x) is x
    assert eye.H is eye


def test_batched_over_leading_dims(mats):
    a = Matrix(mats[0])
    x = torch.randn(2, 6, 3, dtype=torch.complex128)
    torch.testing.assert_close(a(x)[1, 4], a(x[1, 4]))


def test_subclass_must_implement_adjoint():
    class NoAdjoint(LinearOperator):
        def forward(self, x):
            return x

    with pytest.raises(TypeError, match="abstract method"):
        NoAdjoint()  # type: ignore[abstract]


def test_compose_shape_mismatch_raises(mats):
    with pytest.raises(ValueError, match=r"out_shape \(5,\) differs from the outer .* \(3,\)"):
        Matrix(mats[0]) @ Matrix(mats[0])


def test_sum_shape_mismatch_raises(mats):
    with pytest.raises(ValueError, match=r"cannot add operators with different shapes: \(3,\)"):
        Matrix(mats[0]) + Matrix(mats[1])


def test_add_non_operator_raises(mats):
    with pytest.raises(TypeError, match="unsupported operand"):
        Matrix(mats[0]) + 1.0  # type: ignore[operator]


def test_multiply_by_tensor_with_dims_raises(mats):
    with pytest.raises(TypeError, match=r"got a tensor of shape \(3,\)"):
        Matrix(mats[0]) * torch.ones(3)


def test_multiply_by_integer_tensor_raises(mats):
    with pytest.raises(TypeError, match=r"got dtype torch\.int64"):
        Matrix(mats[0]) * torch.tensor(2)


def test_multiply_by_string_raises(mats):
    with pytest.raises(TypeError, match="got str"):
        Matrix(mats[0]) * "2"  # type: ignore[operator]


def test_multiply_two_operators_raises(mats):
    with pytest.raises(TypeError, match="use A @ B for the composition"):
        Matrix(mats[0]) * Matrix(mats[1])


def test_bad_in_shape_raises():
    with pytest.raises(TypeError, match="in_shape must be a sequence of ints"):
        Identity(shape=3)  # type: ignore[arg-type]


def test_non_positive_shape_raises():
    with pytest.raises(ValueError, match=r"in_shape must have positive entries, got \(0, 2\)"):
        Identity(shape=(0, 2))
