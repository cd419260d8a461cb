"""The power-iteration estimate of the Jacobian's spectral radius."""

from __future__ import annotations

import pytest
import torch
from fixedpoint_helpers import contraction

import fixedpoint

F64 = torch.float64


@pytest.mark.parametrize("dtype", [F64, torch.complex128])
def test_symmetric_linear_map_gives_the_largest_eigenvalue_modulus(dtype, device):
    A = contraction(12, 0.8, dtype, hermitian=True).to(device)
    z = torch.randn(3, 12, dtype=dtype, device=device)
    rho = fixedpoint.spectral_radius(lambda z: z @ A.T, z, iterations=300)
    expected = torch.linalg.eigvalsh(A.cpu()).abs().max().to(device)
    assert rho.shape == (3,)
    assert not rho.is_complex()
    torch.testing.assert_close(rho, expected.expand(3), rtol=1e-6, atol=0.0)


def test_per_sample_jacobians_of_a_nonlinear_map():
    """f(z) = tanh(z) * c: J = diag(c (1 - tanh(z)^2)); the radius is its largest entry."""
    c = torch.tensor(0.9, dtype=F64)
    z = torch.randn(4, 6, dtype=F64)
    rho = fixedpoint.spectral_radius(lambda z: c * torch.tanh(z), z, iterations=400)
    expected = (c * (1 - torch.tanh(z) ** 2)).max(dim=1).values
    torch.testing.assert_close(rho, expected, rtol=1e-4, atol=0.0)


def test_tuple_state_and_params():
    A = torch.diag(torch.tensor([0.5, 0.2], dtype=F64))
    B = torch.tensor([[0.7]], dtype=F64)
    scale = torch.tensor(0.5, dtype=F64)

    def f(state, s):
        u, v = state
        return (u @ A.T, s * v @ B.T)

    z = (torch.randn(2, 2, dtype=F64), torch.randn(2, 1, dtype=F64))
    rho = fixedpoint.spectral_radius(f, z, scale, iterations=100)
    torch.testing.assert_close(rho, torch.full((2,), 0.5, dtype=F64), rtol=1e-8, atol=0.0)


def test_create_graph_makes_the_estimate_differentiable():
    """rho(c A) = |c| rho(A), so d rho / d c = rho(A) for c > 0: usable as a regulariser."""
    A = contraction(8, 0.6, F64, hermitian=True)
    c = torch.tensor(0.7, dtype=F64, requires_grad=True)
    z = torch.randn(2, 8, dtype=F64)
    rho = fixedpoint.spectral_radius(lambda z: c * (z @ A.T), z, iterations=300, create_graph=True)
    assert rho.requires_grad
    rho.sum().backward()
    expected = 2 * torch.linalg.eigvalsh(A).abs().max()
    torch.testing.assert_close(c.grad, expected, rtol=1e-6, atol=0.0)
    plain = fixedpoint.spectral_radius(lambda z: c * (z @ A.T), z, iterations=5)
    assert not plain.requires_grad


def test_map_independent_of_z_has_radius_zero():
    rho = fixedpoint.spectral_radius(lambda z: torch.ones_like(z), torch.zeros(2, 3))
    assert torch.equal(rho, torch.zeros(2))


def test_global_random_state_is_untouched():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    fixedpoint.spectral_radius(lambda z: 0.5 * z, torch.zeros(2, 3))
    assert torch.equal(torch.rand(3), expected)


def test_bad_iterations():
    with pytest.raises(ValueError, match="iterations must be an integer >= 1, got 0"):
        fixedpoint.spectral_radius(lambda z: z, torch.zeros(1, 2), iterations=0)


def test_f_output_is_checked():
    with pytest.raises(ValueError, match=r"f has shape \(1, 3\), but the state has shape \(1, 2\)"):
        fixedpoint.spectral_radius(lambda z: torch.zeros(1, 3), torch.zeros(1, 2))
