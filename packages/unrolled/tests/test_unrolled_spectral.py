"""Spectral normalisation by the operator norm: the normalised convolution's norm measured by an
independent dense computation (its matrix built by autograd), the transpose as the adjoint, the
vectors' sizing, and the DEQ's contraction on the paper's blur."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.functional import jvp, vjp

import physops
import unrolled

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _dense_norm(conv: torch.nn.Module, spatial: tuple[int, ...]) -> float:
    """The largest singular value of the convolution's matrix (no bias) on one input sample."""
    w = conv.weight.detach()
    x = torch.zeros(1, w.shape[1] * conv.groups, *spatial, dtype=torch.float64)

    def apply(x: torch.Tensor) -> torch.Tensor:
        return _CONV[len(spatial)](
            x, w, None, conv.stride, conv.padding, conv.dilation, conv.groups
        )

    jac = torch.autograd.functional.jacobian(apply, x).reshape(-1, x.numel())
    return float(torch.linalg.matrix_norm(jac, ord=2))


CASES = [
    # (conv class, args, kwargs, input spatial shape)
    (torch.nn.Conv2d, (3, 4, 3), {"padding": 1}, (9, 9)),
    (torch.nn.Conv2d, (4, 6, 3), {"padding": 1, "stride": 2, "groups": 2}, (9, 8)),
    (torch.nn.Conv2d, (4, 4, 3), {"padding": 2, "dilation": 2}, (7, 8)),
    (torch.nn.Conv2d, (6, 3, (3, 5)), {"padding": (1, 2), "stride": (1, 2), "groups": 3}, (6, 9)),
    (torch.nn.Conv3d, (2, 3, 3), {"padding": 1}, (4, 5, 5)),
    (torch.nn.Conv3d, (2, 4, 3), {"padding": 1, "stride": 2, "groups": 2}, (5, 5, 4)),
    (torch.nn.Conv1d, (2, 3, 5), {"padding": 2, "stride": 3}, (17,)),
]


@pytest.mark.parametrize(("cls", "args", "kwargs", "spatial"), CASES)
def test_normalised_operator_norm_is_one(cls, args, kwargs, spatial):
    torch.manual_seed(0)
    conv = cls(*args, **kwargs).double()
    with torch.no_grad():
        conv.weight.mul_(3.0)  # raw norms well above 1
    raw = _dense_norm(conv, spatial)
    unrolled.spectral_norm(conv, init_iterations=500)
    conv(torch.randn(2, conv.in_channels, *spatial, dtype=torch.float64))  # sizes the vectors
    normalised = _dense_norm(conv, spatial)
    sn = conv.parametrizations.weight[0]
    assert sn._v.shape == (1, conv.in_channels, *spatial)
    assert raw > 1.5
    # the power iteration's estimate is a lower bound of the norm: >= 1, and after 500
    # iterations within 1e-3 of it
    assert 1.0 - 1e-9 <= normalised <= 1.0 + 1e-3


def test_matrix_mode_does_not_bound_the_operator_norm():
    # the normalisation used before 0.2.0 (Miyato et al.): the reshaped kernel's norm is 1, the
    # convolution's is not
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 4, 3, padding=1).double()
    unrolled.spectral_norm(conv, mode="matrix", init_iterations=500)
    assert _dense_norm(conv, (12, 12)) > 1.2


@pytest.mark.parametrize(("cls", "args", "kwargs", "spatial"), CASES)
def test_transposed_convolution_is_the_adjoint(cls, args, kwargs, spatial):
    torch.manual_seed(1)
    conv = unrolled.spectral_norm(cls(*args, **kwargs).double())
    sn = conv.parametrizations.weight[0]
    w = conv.parametrizations.weight.original.detach()
    x = torch.randn(1, conv.in_channels, *spatial, dtype=torch.float64)
    cx = sn.conv(x, w)
    y = torch.randn_like(cx)
    cty = sn.conv_transpose(y, w, x.shape)
    assert cty.shape == x.shape
    torch.testing.assert_close(
        torch.vdot(cx.flatten(), y.flatten()), torch.vdot(x.flatten(), cty.flatten())
    )


def test_vectors_follow_the_input_shape_in_training_only():
    conv = unrolled.spectral_norm(torch.nn.Conv2d(2, 3, 3, padding=1))
    sn = conv.parametrizations.weight[0]
    assert sn._v.shape == (1, 2, 16, 16)  # the default probe before any input
    conv(torch.randn(1, 2, 10, 12))
    assert sn._v.shape == (1, 2, 10, 12)
    assert sn._u.shape == (1, 3, 10, 12)
    w = conv.weight
    conv(torch.randn(4, 2, 10, 12))  # same shape, same weight: no iteration
    assert torch.equal(conv.weight, w)
    conv.eval()
    conv(torch.randn(1, 2, 20, 20))
    assert sn._v.shape == (1, 2, 10, 12)


def test_state_dict_and_deepcopy_carry_the_vectors():
    torch.manual_seed(0)
    conv = unrolled.spectral_norm(torch.nn.Conv2d(2, 3, 3, padding=1))
    conv(torch.randn(1, 2, 10, 12))
    fresh = unrolled.spectral_norm(torch.nn.Conv2d(2, 3, 3, padding=1))
    fresh.load_state_dict(conv.state_dict())  # vectors of another shape: re-sized, then copied
    fresh.eval(), conv.eval()
    assert torch.equal(fresh.weight, conv.weight)
    twin = copy.deepcopy(conv).train()
    twin(torch.randn(1, 2, 6, 6))  # the copy's hook re-sizes the copy's vectors, not the original's
    assert twin.parametrizations.weight[0]._v.shape == (1, 2, 6, 6)
    assert conv.parametrizations.weight[0]._v.shape == (1, 2, 10, 12)


def test_weight_is_fixed_between_weight_updates_in_operator_mode():
    conv = unrolled.spectral_norm(torch.nn.Conv2d(3, 4, 3, padding=1))
    conv(torch.randn(1, 3, 8, 8))
    u = conv.parametrizations.weight[0]._u.clone()
    assert torch.equal(conv.weight, conv.weight)
    assert torch.equal(conv.parametrizations.weight[0]._u, u)
    with torch.no_grad():
        conv.parametrizations.weight.original.mul_(1.5).add_(0.1)
    conv.weight
    assert not torch.equal(conv.parametrizations.weight[0]._u, u)


def test_linear_layers_use_the_matrix_norm_which_is_their_operator_norm():
    lin = unrolled.spectral_norm(torch.nn.Linear(5, 3).double(), init_iterations=200)
    assert isinstance(lin.parametrizations.weight[0], unrolled.SpectralNorm)
    torch.testing.assert_close(torch.linalg.matrix_norm(lin.weight.detach(), ord=2).item(), 1.0)


def test_spectral_norm_bad_inputs():
    with pytest.raises(ValueError, match=r"mode must be one of 'operator', 'matrix', got 'miyato'"):
        unrolled.spectral_norm(torch.nn.Conv2d(1, 1, 3), mode="miyato")
    with pytest.raises(
        TypeError, match=r"takes an nn.Linear or an nn.Conv1d/2d/3d.*ConvTranspose2d"
    ):
        unrolled.spectral_norm(torch.nn.ConvTranspose2d(1, 1, 3))
    with pytest.raises(ValueError, match=r"padding_mode='zeros'.*'circular'.*mode='matrix'"):
        unrolled.spectral_norm(torch.nn.Conv2d(1, 1, 3, padding=1, padding_mode="circular"))
    with pytest.raises(ValueError, match=r"input_size must be a positive int or 2 positive ints"):
        unrolled.spectral_norm(torch.nn.Conv2d(1, 1, 3), input_size=(4, 4, 4))
    unrolled.spectral_norm(torch.nn.ConvTranspose2d(1, 1, 3), mode="matrix")  # still possible


# ------------------------------------------------------------------------------------------------
# the DEQ on the paper's blur
# ------------------------------------------------------------------------------------------------
def _blur_problem(size: int = 24):
    g = torch.Generator().manual_seed(1)
    A = physops.Blur(physops.gaussian_kernel(9, 5.0).double())  # LUSER Sec. 4: 9 x 9, variance 5
    x = torch.rand(1, size, size, dtype=torch.float64, generator=g)
    y = A(x) + 0.01 * torch.randn(x.shape, dtype=torch.float64, generator=g)
    return A, y


def _lipschitz_at(f, z: torch.Tensor, iterations: int = 40) -> float:
    """||J_f(z)||_2 by power iteration on J^T J (jvp then vjp; autograd's double-backward jvp,
    since torch.func's jvp warns under torch 2.13)."""
    v = torch.randn_like(z)
    v = v / v.norm()
    sigma = 0.0
    for _ in range(iterations):
        _, jv = jvp(f, z, v)
        _, w = vjp(f, z, jv)
        sigma = float(w.norm().detach()) ** 0.5
        v = (w / w.norm()).detach()
    return sigma


def test_contractive_deq_converges_on_the_paper_blur():
    torch.manual_seed(0)
    budget = 30
    model = unrolled.DEQ(
        features=8, depth=5, complex=False, init="measurements", contraction=0.9,
        solver={"tol": 1e-4, "max_iter": budget, "on_failure": "raise"},
    ).double()  # fmt: skip
    A, y = _blur_problem()
    with torch.no_grad():
        out = model(y, A, y)
    forward = model.equilibrium_diagnostics()[0].forward
    assert bool(forward.converged.all())
    assert float(forward.residuals.max()) < 1e-4
    assert int(forward.iterations.max()) <= budget
    stage = model.stages[0]
    context = unrolled.StageContext(y, A)
    z = model.adapter.to_net(out)
    lip = _lipschitz_at(lambda s: stage.iteration(s, context), z)
    assert lip < 0.9 + 1e-3  # the bound the normalisation promises (measured 0.45)
    # at a point away from the fixed point too
    assert (
        _lipschitz_at(lambda s: stage.iteration(s, context), z + 0.3 * torch.randn_like(z)) < 0.901
    )


def test_deq_prox_body_is_1_lipschitz_per_convolution():
    torch.manual_seed(0)
    model = unrolled.DEQ(
        features=8,
        depth=4,
        complex=False,
        init="measurements",
        solver={"max_iter": 3, "on_failure": "ignore"},
    ).double()
    A, y = _blur_problem(12)
    with torch.no_grad():
        model(y, A, y)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    norms = [_dense_norm(c, (12, 12)) for c in convs]
    assert len(norms) == 4
    assert max(norms) <= 1.0 + 1e-2  # 100 power iterations at the first input


def test_deq_contraction_bad_values():
    for bad in (0, 1.5, float("nan"), True):
        with pytest.raises(ValueError, match=r"contraction must be a number in \(0, 1\]"):
            unrolled.DEQ(features=4, depth=2, contraction=bad)


def test_state_dict_of_the_matrix_normalisation_is_refused_saying_why():
    old = unrolled.spectral_norm(torch.nn.Conv2d(2, 3, 3, padding=1), mode="matrix")
    new = unrolled.spectral_norm(torch.nn.Conv2d(2, 3, 3, padding=1))
    with pytest.raises(RuntimeError, match=r"_u: a vector of shape \(3,\).*mode='matrix'"):
        new.load_state_dict(old.state_dict())
