"""RIM: shapes on each physics, shared weights, loss over time steps, strategies, bad inputs."""

from __future__ import annotations

import pytest
import torch

import physops
import unrolled
from conftest import make_fourier as _fourier
from conftest import make_sense
from unrolled.models._rim import data_gradient


def _rim(**kwargs) -> unrolled.RIM:
    kwargs.setdefault("steps", 3)
    kwargs.setdefault("hidden", 6)
    return unrolled.RIM(**kwargs)


def _stage_loss_grads(model, y, A, x, strategy):
    """Gradients of the loss summed over all time steps (how the RIM is trained)."""
    model.set_strategy(strategy)
    model.zero_grad()
    loss = sum((est - x).abs().square().sum() for est in model.intermediates(y, A))
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("physics", ["sense", "fourier"])
def test_rim_keeps_shape_and_dtype(physics):
    A, x, y = make_sense(size=16) if physics == "sense" else _fourier()
    out = _rim()(y, A)
    assert out.shape == x.shape
    assert out.dtype == torch.complex64


def test_rim_float64_and_3d_volumes():
    A, _, y = make_sense(batch=1, coils=2, size=8, dtype=torch.complex128)
    assert _rim().double()(y, A).dtype == torch.complex128
    g = torch.Generator().manual_seed(1)
    maps = torch.randn(1, 2, 4, 8, 8, dtype=torch.complex64, generator=g)
    A3 = physops.Sense(maps, (torch.rand(4, 8, 8, generator=g) < 0.5).float())
    x3 = torch.randn(1, 4, 8, 8, dtype=torch.complex64, generator=g)
    assert _rim(steps=2, dims=3)(A3(x3), A3).shape == x3.shape


def test_rim_on_real_images():
    blur = physops.Blur(physops.gaussian_kernel(5, 1.0))
    x = torch.randn(2, 16, 16)
    out = _rim(complex=False)(blur(x), blur)
    assert out.shape == x.shape
    assert out.dtype == torch.float32


def test_rim_shares_weights_across_time_steps():
    short, long = _rim(steps=2), _rim(steps=7)
    assert len({id(s) for s in long.stages}) == 1
    count = sum(p.numel() for p in short.parameters())
    assert count == sum(p.numel() for p in long.parameters())


def test_rim_loss_over_all_time_steps():
    A, _, y = make_sense(size=16)
    model = _rim(steps=4)
    assert model.loss_over_stages is True
    estimates = model.intermediates(y, A)
    assert len(estimates) == 4
    torch.testing.assert_close(estimates[-1], model(y, A), rtol=0, atol=0)


def test_rim_initial_state_options():
    A, _, y = make_sense(size=16)
    zeros = _rim(init="zeros").initial_state(y, A, None)
    adjoint = _rim(init="adjoint").initial_state(y, A, None)
    assert [tuple(t.shape) for t in zeros] == [(2, 2, 16, 16), (2, 6, 16, 16), (2, 6, 16, 16)]
    assert not zeros[0].any()
    torch.testing.assert_close(adjoint[0], physops.complex_to_channels(A.adjoint(y)))
    assert not adjoint[1].any()
    assert not adjoint[2].any()


def test_data_gradient_matches_autograd():
    """A^H(Ax - y) is torch's gradient of D(x) = 0.5 ||A x - y||^2 (an independent derivation)."""
    A, x, y = make_sense(size=8, dtype=torch.complex128)
    z = torch.randn_like(x).requires_grad_()
    (0.5 * (A(z) - y).abs().square().sum()).backward()
    torch.testing.assert_close(data_gradient(A, z.detach(), y), z.grad)


def test_rim_checkpoint_gradients_equal_backprop_exactly():
    A, x, y = make_sense(size=16)
    model = _rim(steps=4)
    g0 = _stage_loss_grads(model, y, A, x, "backprop")
    g1 = _stage_loss_grads(model, y, A, x, "checkpoint")
    assert torch.equal(g0, g1)
    model.set_strategy("checkpoint", checkpoint_every=2)
    model.zero_grad()
    (model(y, A) - x).abs().square().sum().backward()
    g2 = torch.cat([p.grad.flatten() for p in model.parameters()])
    model.set_strategy("backprop")
    model.zero_grad()
    (model(y, A) - x).abs().square().sum().backward()
    assert torch.equal(g2, torch.cat([p.grad.flatten() for p in model.parameters()]))


def test_rim_with_nonlinear_physics_needs_x0():
    """Fourier ptychography has no adjoint: the RIM reads physics.gradient and starts at x0."""
    fpm = physops.FourierPtychography(16, physops.led_grid(3), downsample=4)
    x = torch.randn(1, 16, 16, dtype=torch.complex64)
    y = fpm(x).detach()
    out = _rim(steps=2)(y, fpm, x0=torch.ones_like(x))
    assert out.shape == x.shape
    with pytest.raises(ValueError, match=r"FourierPtychography, which has no adjoint: pass x0"):
        _rim(steps=2)(y, fpm)


def test_rim_refuses_reversible_and_points_to_irim():
    with pytest.raises(ValueError, match=r"use unrolled.IRIM, the invertible RIM"):
        _rim().set_strategy("reversible")


def test_rim_refuses_greedy():
    with pytest.raises(ValueError, match=r"shares one set of weights across all 3 time steps"):
        _rim().set_strategy("greedy", modules=1)


def test_rim_refuses_implicit():
    with pytest.raises(ValueError, match=r"has none: use 'checkpoint'"):
        _rim().set_strategy("implicit")


def test_rim_wrong_physics_type():
    _, _, y = make_sense(size=16)
    with pytest.raises(TypeError, match=r"RIM needs a physics operator .* got str"):
        _rim()(y, "sense")


def test_rim_nan_in_measurements():
    A, _, y = make_sense(size=16)
    y = y.clone()
    y[0, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match=r"contains 1 non-finite value"):
        _rim()(y, A)


def test_rim_real_images_to_complex_model():
    blur = physops.Blur(physops.gaussian_kernel(5, 1.0))
    x = torch.randn(2, 16, 16)
    with pytest.raises(
        TypeError, match=r"A\^H y must be a complex tensor .* got dtype torch.float32"
    ):
        _rim()(blur(x), blur)
    A, xc, y = make_sense(size=16)
    with pytest.raises(TypeError, match=r"x0 must be a complex tensor"):
        _rim()(y, A, x0=xc.real)


def test_rim_wrong_image_dimensions():
    g = torch.Generator().manual_seed(1)
    A3 = physops.Sense(torch.randn(1, 2, 4, 8, 8, dtype=torch.complex64, generator=g))
    x3 = torch.randn(1, 4, 8, 8, dtype=torch.complex64, generator=g)
    with pytest.raises(
        ValueError, match=r"must have shape \(batch, H, W\) .* got shape \(1, 4, 8, 8\)"
    ):
        _rim()(A3(x3), A3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, "steps must be a positive integer, got 0"),
        ({"hidden": 2.5}, "hidden must be a positive integer, got 2.5"),
        ({"features": 0}, "features must be a positive integer or None, got 0"),
        ({"init": "random"}, "init must be one of zeros, adjoint .* got 'random'"),
    ],
)
def test_rim_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _rim(**kwargs)


@pytest.mark.gpu
def test_rim_on_cuda_matches_cpu():
    A, _, y = make_sense(size=16)
    model = _rim()
    expected = model(y, A)
    cuda = torch.device("cuda")
    out = model.to(cuda)(y.to(cuda), A.to(cuda))
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-4, atol=1e-5)
