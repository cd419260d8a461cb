"""DEQ4IP: forward on every physics, implicit gradients against backprop through the solver's
iterations, refused strategies, parameter count against LUSER Table 3, bad inputs."""

from __future__ import annotations

import pytest
import torch

import physops
import unrolled
from conftest import make_sense, strategy_grads
from conftest import rel_error as _rel

# a DnCNN of 3 convolutions and 8 features: the architecture at a size the tests can afford
SMALL = {"features": 8, "depth": 3}
# forward-only tests: a few iterations, convergence not required
LOOSE = {"max_iter": 5, "on_failure": "ignore"}


def _grads(model, y, A, target, strategy, **options):
    return strategy_grads(model, y, A, target, strategy, **options)


def _denoising(size=12, batch=2):
    """Fourier sampling of every frequency: A^H A = I, so f(x) = prox((1 - alpha) x + alpha A^H y)
    contracts for alpha = 1/2 and a spectrally normalised prox of small Jacobian."""
    g = torch.Generator().manual_seed(0)
    A = physops.FourierSampling(torch.ones(size, size, dtype=torch.float64))
    x = torch.randn(batch, size, size, dtype=torch.complex128, generator=g)
    y = A(x) + 0.1 * torch.randn(batch, size, size, dtype=torch.complex128, generator=g)
    return A, x, y


def test_deq_parameter_count_against_table_3():
    # the paper's DEQ4IP has LU-DnCNN's BatchNorm (556,033 on CT); ours has conv biases instead
    ours = sum(p.numel() for p in unrolled.DEQ(complex=False).parameters())
    assert ours == 555_137
    assert abs(ours - 556_033) / 556_033 <= 0.005


def test_deq_is_one_stage():
    A, _, y = make_sense(size=12)
    model = unrolled.DEQ(solver=LOOSE, **SMALL)
    assert len(model.stages) == 1
    outs = model.intermediates(y, A)
    assert len(outs) == 1
    assert torch.allclose(outs[0], model(y, A))


@pytest.mark.parametrize("physics", ["sense", "single_coil", "radon", "blur", "blur_rgb"])
def test_deq_forward_on_every_physics(physics):
    size = 12
    if physics == "sense":
        A, x, y = make_sense(size=size)
        model = unrolled.DEQ(solver=LOOSE, **SMALL)
    elif physics == "single_coil":
        A = physops.FourierSampling((torch.rand(size) < 0.5).float().expand(size, size).clone())
        x = torch.randn(2, size, size, dtype=torch.complex64)
        y = A(x)
        model = unrolled.DEQ(solver=LOOSE, **SMALL)
    elif physics == "radon":
        A = physops.Radon(size, physops.uniform_angles(16, keep=8))
        x = torch.rand(2, size, size)
        y = A(x)
        model = unrolled.DEQ(complex=False, solver=LOOSE, **SMALL)
        model.calibrate_steps(A, x)
    else:
        channels = 3 if physics == "blur_rgb" else None
        A = physops.Blur(physops.gaussian_kernel(5, 2.0))
        x = torch.rand(2, size, size) if channels is None else torch.rand(2, 3, size, size)
        y = A(x)
        model = unrolled.DEQ(
            complex=False, color_channels=channels, init="measurements", solver=LOOSE, **SMALL
        )
    out = model(y, A)
    assert out.shape == x.shape
    assert out.dtype == x.dtype
    assert bool(torch.isfinite(out).all())
    assert model.equilibrium_diagnostics()[0].forward.iterations.shape == (2,)


def _tight_deq():
    return unrolled.DEQ(
        step=0.5, solver={"tol": 1e-12, "max_iter": 300, "on_failure": "raise"}, **SMALL
    ).double()


def test_deq_implicit_gradients_equal_backprop_through_converged_solve_float64():
    A, x, y = _denoising()
    model = _tight_deq()
    g_bp, out_bp = _grads(model, y, A, x, "backprop")
    g_im, out_im = _grads(model, y, A, x, "implicit")
    assert _rel(out_im, out_bp) <= 1e-10
    assert _rel(g_im, g_bp) <= 1e-6
    diagnostics = model.equilibrium_diagnostics()[0]
    assert diagnostics.forward.all_converged
    assert diagnostics.backward is not None
    assert diagnostics.backward.all_converged


@pytest.mark.parametrize("backward", ["jacobian_free", "phantom"])
def test_deq_approximate_backwards_are_finite_and_biased(backward):
    A, x, y = _denoising()
    model = _tight_deq()
    g_im, _ = _grads(model, y, A, x, "implicit")
    g_ap, _ = _grads(model, y, A, x, "implicit", backward=backward)
    assert bool(torch.isfinite(g_ap).all())
    assert 0 < _rel(g_ap, g_im) < 1


def test_deq_default_strategy_is_implicit():
    model = unrolled.DEQ(**SMALL)
    assert model.strategy.name == "implicit"
    model.set_strategy("backprop")
    assert model.stages[0].backward_mode == "unrolled"


def test_deq_spectral_norm_is_on_by_default():
    convs = [m for m in unrolled.DEQ(**SMALL).modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(hasattr(c, "parametrizations") for c in convs)
    plain = unrolled.DEQ(spectral_norm=False, **SMALL).modules()
    assert not any(hasattr(m, "parametrizations") for m in plain if isinstance(m, torch.nn.Conv2d))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in unrolled.DEQ(**SMALL).modules())


@pytest.mark.parametrize(
    ("strategy", "message"),
    [
        ("checkpoint", "a DEQ is a single equilibrium stage, so it would store just as much"),
        ("reversible", "the DEQ's DnCNN prox is not invertible"),
        ("greedy", "splits a model's stages into modules, but a DEQ is a single equilibrium stage"),
    ],
)
def test_deq_refuses_strategies_saying_what_works(strategy, message):
    with pytest.raises(ValueError, match=message + r".*'implicit'.*'backprop'"):
        unrolled.DEQ(**SMALL).set_strategy(strategy)


def test_deq_unknown_init():
    with pytest.raises(ValueError, match=r"init must be 'adjoint'.*got 'zeros'"):
        unrolled.DEQ(init="zeros", **SMALL)


def test_deq_depth_too_small():
    with pytest.raises(ValueError, match="depth must be at least 2, got 1"):
        unrolled.DEQ(features=8, depth=1)


def test_deq_wrong_physics_type():
    _, _, y = make_sense(size=12)
    with pytest.raises(TypeError, match="needs a physics operator with forward"):
        unrolled.DEQ(**SMALL)(y, "sense")


def test_deq_shape_mismatch_of_x0():
    A, x, y = make_sense(size=12)
    with pytest.raises(
        ValueError, match=r"x0 must have shape \(batch, H, W\).*got shape \(2, 1, 12, 12\)"
    ):
        unrolled.DEQ(**SMALL)(y, A, x[:, None])


def test_deq_solver_setter():
    model = unrolled.DEQ(**SMALL)
    model.solver = {"method": "banach", "max_iter": 3, "on_failure": "ignore"}
    assert model.stages[0].solver.method == "banach"


@pytest.mark.parametrize("strategy", ["implicit", "backprop"])
def test_deq_keeps_the_device(device, strategy):
    A, x, y = make_sense(size=12)
    A, x, y = A.to(device), x.to(device), y.to(device)
    model = unrolled.DEQ(solver=LOOSE, **SMALL).to(device).set_strategy(strategy)
    out = model(y, A)
    assert out.device.type == device.type
    (out - x).abs().square().sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads
    assert all(g.device.type == device.type and bool(torch.isfinite(g).all()) for g in grads)
