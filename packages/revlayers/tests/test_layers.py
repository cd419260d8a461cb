"""Properties of each invertible layer: exact inverses, orthogonality, bounds, gradchecks."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from _revlayers_helpers import SmallNet
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import revlayers as rl

DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


def _layers(dims: int, channels: int = 4) -> dict[str, rl.InvertibleModule]:
    half = channels // 2
    conv = {2: nn.Conv2d, 3: nn.Conv3d}[dims]
    return {
        "additive": rl.AdditiveCoupling(SmallNet(half, half, 1, dims)),
        "additive_pass_through": rl.AdditiveCoupling(
            SmallNet(2, 1, 1, dims), split=1, pass_through=1, update="first"
        ),
        "affine": rl.AffineCoupling(SmallNet(half, 2 * half, 1, dims)),
        "householder": rl.HouseholderConv(channels, reflections=3, dims=dims),
        "irim": rl.IRIMBlock(channels, hidden_channels=5, downsample=2, dims=dims),
        "residual": rl.InvertibleResidual(
            nn.Sequential(
                conv(channels, 6, 3, padding=1), nn.ReLU(), conv(6, channels, 3, padding=1)
            ),
            pass_context=False,
        ),
        "invertible": rl.Invertible(lambda x, c: 2.0 * x + c, lambda y, c: (y - c) / 2.0),
    }


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "name",
    [
        "additive",
        "additive_pass_through",
        "affine",
        "householder",
        "irim",
        "residual",
        "invertible",
    ],
)
def test_inverse_of_forward_is_identity(
    name: str, dtype: torch.dtype, dims: int, device: torch.device
) -> None:
    layer = _layers(dims)[name].to(device=device, dtype=dtype)
    spatial = (4, 6, 8)[:dims] if dims == 3 else (8, 6)
    x = torch.randn(2, 4, *spatial, dtype=dtype, device=device)
    context = torch.randn(1, 1, *spatial, dtype=dtype, device=device)
    y = layer(x, context)
    assert y.shape == x.shape
    assert rl.check_inverse(layer, x, context) <= TOL[dtype]
    # the layer really transforms the state (an identity would pass the test above trivially)
    assert (y - x).abs().max() > 1e-3


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_complex_states(dtype: torch.dtype) -> None:
    def g(x1: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x1.real) * (1 + 0.5j) + 0.1 * x1

    def affine_g(x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.sin(x1.real), x1 * (0.3 - 0.2j)

    real = torch.float32 if dtype == torch.complex64 else torch.float64
    x = torch.randn(2, 4, 5, 5, dtype=dtype)
    layers = [
        rl.AdditiveCoupling(g, pass_context=False),
        rl.AffineCoupling(affine_g, pass_context=False),
        rl.HouseholderConv(4).to(real),
    ]
    for layer in layers:
        assert rl.check_inverse(layer, x) <= 10 * TOL[real]
        assert layer(x).dtype == dtype


def test_householder_matrix_is_orthogonal_and_matches_numpy() -> None:
    layer = rl.HouseholderConv(6, reflections=4).double()
    u = layer.matrix().detach().numpy()
    np.testing.assert_allclose(u @ u.T, np.eye(6), atol=1e-13)
    # independent construction: product of explicit reflection matrices, H_K ... H_1
    expected = np.eye(6)
    for v in layer.vectors.detach().numpy():
        expected = (np.eye(6) - 2 * np.outer(v, v) / (v @ v)) @ expected
    np.testing.assert_allclose(u, expected, atol=1e-13)
    # the layer is that matrix applied as a 1x1 convolution
    x = torch.randn(2, 6, 3, 4, dtype=torch.float64)
    conv = torch.nn.functional.conv2d(x, torch.from_numpy(u)[:, :, None, None])
    torch.testing.assert_close(layer(x), conv)


def test_householder_preserves_norm_3d() -> None:
    layer = rl.HouseholderConv(5, dims=3).double()
    x = torch.randn(2, 5, 3, 4, 2, dtype=torch.float64)
    torch.testing.assert_close(layer(x).norm(), x.norm())


def test_affine_scale_is_bounded() -> None:
    clamp = 1.5

    def huge(x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.full_like(x1, 1e6) * x1.sign(), torch.zeros_like(x1)

    layer = rl.AffineCoupling(huge, clamp=clamp, pass_context=False)
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    y = layer(x)
    ratio = (y[:, 2:] / x[:, 2:]).abs()
    assert ratio.max() <= np.exp(clamp) * (1 + 1e-12)
    assert ratio.min() >= np.exp(-clamp) * (1 - 1e-12)
    assert rl.check_inverse(layer, x) < 1e-14


@settings(max_examples=20, deadline=None)
@given(channels=st.integers(2, 9), data=st.data(), update=st.sampled_from(["first", "second"]))
def test_coupling_split_property(channels: int, data: st.DataObject, update: str) -> None:
    pass_through = data.draw(st.integers(0, min(2, channels - 2)))
    rest = channels - pass_through
    split = data.draw(st.integers(1, rest - 1))
    cond = split if update == "second" else rest - split
    upd = rest - cond
    weight = torch.randn(upd, cond, dtype=torch.float64)

    def g(x1: torch.Tensor) -> torch.Tensor:
        return torch.einsum("oc,bc...->bo...", weight, torch.sin(x1))

    layer = rl.AdditiveCoupling(
        g, split=split, pass_through=pass_through, update=update, pass_context=False
    )  # type: ignore[arg-type]
    x = torch.randn(2, channels, 3, dtype=torch.float64)
    y = layer(x)
    # pass-through channels and the conditioning part are copied unchanged
    if pass_through:
        torch.testing.assert_close(y[:, rest:], x[:, rest:])
    cond_slice = slice(0, split) if update == "second" else slice(split, rest)
    torch.testing.assert_close(y[:, cond_slice], x[:, cond_slice])
    assert rl.check_inverse(layer, x) < 1e-14


def test_irim_block_structure() -> None:
    block = rl.IRIMBlock(8, hidden_channels=12, downsample=4, dims=3)
    g = block.coupling.g
    assert isinstance(g, rl.IRIMResidual)
    assert isinstance(g.down, nn.Conv3d)
    assert g.down.stride == (4, 4, 4)
    assert g.down.kernel_size == (4, 4, 4)
    assert g.conv.kernel_size == (3, 3, 3)
    assert g.conv.stride == (1, 1, 1)
    assert isinstance(g.up, nn.ConvTranspose3d)
    assert g.up.bias is None
    assert g.up.out_channels == 8
    for conv in (g.down, g.conv, g.up):  # weight normalisation on every convolution
        assert hasattr(conv, "parametrizations")
        assert "weight" in conv.parametrizations
    x = torch.randn(1, 8, 4, 8, 8)
    assert block(x).shape == x.shape
    assert g(x[:, :4]).shape == (1, 4, 4, 8, 8)  # GLU halves 2 * out_channels


def test_irim_residual_glu_output() -> None:
    g = rl.IRIMResidual(2, 3, hidden_channels=4, downsample=2).double()
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    h = torch.relu(g.conv(torch.relu(g.down(x))))
    a, b = g.up(h).chunk(2, dim=1)
    torch.testing.assert_close(g(x), a * torch.sigmoid(b))


def _lipschitz_estimate(f: nn.Module, shape: tuple[int, ...], trials: int = 60) -> float:
    best = 0.0
    for _ in range(trials):
        a = torch.randn(shape, dtype=torch.float64)
        b = a + 1e-3 * torch.randn(shape, dtype=torch.float64)
        best = max(best, ((f(a) - f(b)).norm() / (a - b).norm()).item())
    return best


def test_invertible_residual_keeps_g_contractive() -> None:
    torch.manual_seed(1)
    g = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
    with torch.no_grad():
        for p in g.parameters():
            p.mul_(30.0)  # far from contractive before normalisation
    layer = rl.InvertibleResidual(g, lipschitz=0.7).double()
    layer.train()
    for _ in range(5):  # power iterations advance in training-mode forward calls
        layer(torch.randn(1, 3, 8, 8, dtype=torch.float64))
    layer.eval()
    assert _lipschitz_estimate(layer.g, (1, 3, 8, 8)) < 0.7


def test_invertible_residual_reports_result() -> None:
    layer = rl.InvertibleResidual(lambda x: 0.5 * torch.sin(x), lipschitz=None).double()
    y = torch.randn(3, 4, dtype=torch.float64)
    result = layer.solve_inverse(y)
    assert result.converged
    assert 0 < result.iterations < layer.max_iter
    torch.testing.assert_close(layer(result.x), y, atol=1e-11, rtol=0)


def test_invertible_residual_nonconvergence_raises_and_warns() -> None:
    y = torch.randn(5, dtype=torch.float64)
    layer = rl.InvertibleResidual(lambda x: 0.99 * torch.sin(x), lipschitz=None, max_iter=3)
    with pytest.raises(rl.ConvergenceError, match="stopped at relative residual") as info:
        layer.inverse(y)
    assert info.value.iterations == 3
    assert info.value.residual > info.value.tolerance
    warn = rl.InvertibleResidual(
        lambda x: 0.99 * torch.sin(x), lipschitz=None, max_iter=3, on_nonconvergence="warn"
    )
    with pytest.warns(RuntimeWarning, match="fixed-point inverse stopped"):
        warn.inverse(y)


def _anderson_free_solver(f, z0, iterations: int = 300):  # type: ignore[no-untyped-def]
    """An external solver returning a result object with ``z`` (fixedpoint's convention)."""

    class Result:
        def __init__(self, z: torch.Tensor, it: int) -> None:
            self.z, self.iterations = z, it

    z = z0
    for _it in range(iterations):
        z = f(z)
    return Result(z, iterations)


def test_invertible_residual_takes_a_solver_callable() -> None:
    calls: list[int] = []

    def solver(f, z0):  # type: ignore[no-untyped-def]
        calls.append(1)
        return _anderson_free_solver(f, z0)

    layer = rl.InvertibleResidual(lambda x: 0.3 * torch.tanh(x), lipschitz=None, solver=solver)
    y = torch.randn(4, 3, dtype=torch.float64)
    x = layer.inverse(y)
    assert calls
    assert layer.solve_inverse(y).iterations == 300
    torch.testing.assert_close(x + 0.3 * torch.tanh(x), y)
    # a solver that returns a bare tensor which is not a fixed point is caught
    lazy = rl.InvertibleResidual(
        lambda x: 0.3 * torch.tanh(x), lipschitz=None, solver=functools.partial(lambda f, z0: z0)
    )
    with pytest.raises(rl.ConvergenceError):
        lazy.inverse(y)


@pytest.mark.parametrize(
    "make",
    [
        lambda: rl.AdditiveCoupling(SmallNet(2, 2), pass_context=False),
        lambda: rl.AffineCoupling(SmallNet(2, 4), pass_context=False),
        lambda: rl.HouseholderConv(4),
        lambda: rl.IRIMBlock(4, hidden_channels=2, downsample=2),
    ],
    ids=["additive", "affine", "householder", "irim"],
)
def test_gradcheck_forward_and_inverse(make) -> None:  # type: ignore[no-untyped-def]
    layer = make().double()
    x = torch.randn(1, 4, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: layer(t), (x,))
    assert torch.autograd.gradcheck(lambda t: layer.inverse(t), (x,))


def test_learnable_tensors_collects_declared_tensors_once() -> None:
    mu = torch.tensor(0.5, requires_grad=True)
    owner = nn.Linear(2, 2)
    frozen = torch.tensor(1.0)
    layer = rl.Invertible(
        lambda x: x * mu, lambda y: y / mu, parameters=[mu, owner, frozen, mu], pass_context=False
    )
    assert [id(t) for t in layer.learnable_tensors()] == [id(mu), id(owner.weight), id(owner.bias)]
    seq = rl.ReversibleSequence([layer, rl.HouseholderConv(2)])
    assert id(mu) in {id(t) for t in seq.learnable_tensors()}
