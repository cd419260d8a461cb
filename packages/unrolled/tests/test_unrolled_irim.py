"""i-RIM: shapes (Sense, single-coil, 3D), Eq. 10 and 19, invertibility, strategies, bad inputs."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import greedytrain
import physops
import revlayers
import unrolled
from conftest import make_fourier as _fourier
from conftest import make_sense, strategy_grads
from conftest import rel_error as _rel


def _sense3d(dtype=torch.complex64, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    maps = torch.randn(1, 2, 4, 8, 8, dtype=dtype, generator=g)
    maps = maps / (maps.abs() ** 2).sum(1, keepdim=True).sqrt()
    mask = (torch.rand(4, 8, 8, generator=g) < 0.5).to(maps.real.dtype)
    A = physops.Sense(maps, mask)
    x = torch.randn(1, 4, 8, 8, dtype=dtype, generator=g)
    return A, x, A(x)


def _irim(**kwargs) -> unrolled.IRIM:
    kwargs.setdefault("steps", 2)
    kwargs.setdefault("channels", 6)
    kwargs.setdefault("blocks", 2)
    kwargs.setdefault("hidden", 6)
    kwargs.setdefault("downsampling", (1, 2))
    return unrolled.IRIM(**kwargs)


def _grads(model, y, A, x, strategy, **options):
    return strategy_grads(model, y, A, x, strategy, **options)[0]


# ----------------------------------------------------------------------------- forward
@pytest.mark.parametrize("physics", ["sense", "fourier"])
def test_irim_keeps_shape_and_dtype(physics):
    A, x, y = make_sense(size=16) if physics == "sense" else _fourier()
    out = _irim()(y, A)
    assert out.shape == x.shape
    assert out.dtype == torch.complex64


def test_irim_3d_volumes_and_float64():
    A, x, y = _sense3d(dtype=torch.complex128)
    model = _irim(dims=3).double()
    out = model(y, A)
    assert out.shape == x.shape
    assert out.dtype == torch.complex128
    assert all(
        isinstance(m.rotation, revlayers.HouseholderConv)
        for m in model.modules()
        if isinstance(m, revlayers.IRIMBlock)
    )


def test_irim_on_real_images():
    blur = physops.Blur(physops.gaussian_kernel(5, 1.0))
    x = torch.randn(2, 16, 16)
    out = _irim(complex=False, channels=4)(blur(x), blur)
    assert out.shape == x.shape
    assert out.dtype == torch.float32


def test_irim_loss_on_the_last_step_only():
    A, _, y = make_sense(size=16)
    model = _irim(steps=3)
    assert model.loss_over_stages is False
    estimates = model.intermediates(y, A)
    assert len(estimates) == 3
    torch.testing.assert_close(estimates[-1], model(y, A), rtol=0, atol=0)


def test_irim_shares_no_weights_across_steps():
    model = _irim(steps=3)
    assert len({id(s) for s in model.stages}) == 3
    per_step = sum(p.numel() for p in model.stages[0].parameters())
    assert per_step > 0
    assert sum(p.numel() for p in model.parameters()) == 3 * per_step


def test_irim_stage_structure():
    """Each step: the gradient injection g_t, then `blocks` IRIMBlocks with the given factors."""
    model = _irim(blocks=3, hidden=(4, 5, 6), downsampling=(1, 2, 4))
    for stage in model.stages:
        assert isinstance(stage, unrolled.InvertibleStage)
        inject, *blocks = stage.invertible_layers()
        assert isinstance(inject, revlayers.AdditiveCoupling)
        assert [b.downsample for b in blocks] == [1, 2, 4]
        assert [b.coupling.g.conv.out_channels for b in blocks] == [4, 5, 6]


def test_irim_initial_state_options():
    A, _, y = make_sense(size=16)
    zeros = _irim(init="zeros").initial_state(y, A, None)
    assert zeros.shape == (2, 6, 16, 16)
    assert not zeros.any()
    adjoint = _irim(init="adjoint").initial_state(y, A, None)
    torch.testing.assert_close(adjoint[:, :2], physops.complex_to_channels(A.adjoint(y)))
    assert not adjoint[:, 2:].any()
    x0 = torch.randn(2, 16, 16, dtype=torch.complex64)
    from_x0 = _irim().initial_state(y, A, x0)
    torch.testing.assert_close(from_x0[:, :2], physops.complex_to_channels(x0))


def test_gradient_injection_is_eq_19():
    """s' = s + (grad D(eta), 0): only channels c..2c change, by A^H(A eta - y); eta untouched."""
    A, _, y = make_sense(size=16, dtype=torch.complex128)
    model = _irim(channels=7).double()
    state = torch.randn(2, 7, 16, 16, dtype=torch.float64)
    inject = model.stages[0].invertible_layers()[0]
    out = inject(state, y, A)
    eta = physops.channels_to_complex(state[:, :2])
    grad = physops.complex_to_channels(A.adjoint(A(eta) - y))
    torch.testing.assert_close(out[:, :2], state[:, :2], rtol=0, atol=0)
    torch.testing.assert_close(out[:, 2:4], state[:, 2:4] + grad)
    torch.testing.assert_close(out[:, 4:], state[:, 4:], rtol=0, atol=0)


def test_every_layer_inverts():
    A, _, y = make_sense(size=16, dtype=torch.complex128)
    model = _irim().double()
    state = torch.randn(2, 6, 16, 16, dtype=torch.float64)
    for stage in model.stages:
        for layer in stage.invertible_layers():
            assert revlayers.check_inverse(layer, state, y, A) < 1e-12
            state = layer(state, y, A)


def test_fanned_downsampling():
    assert unrolled.fanned_downsampling(10) == (1, 1, 2, 4, 8, 8, 4, 2, 1, 1)
    assert unrolled.fanned_downsampling(12) == (1, 1, 2, 2, 4, 8, 8, 4, 2, 2, 1, 1)
    assert unrolled.fanned_downsampling(5, max_factor=4) == (1, 2, 4, 2, 1)
    assert unrolled.fanned_downsampling(1) == (1,)
    assert unrolled.IRIM(steps=1, channels=4, blocks=10, hidden=2).downsampling == (
        unrolled.fanned_downsampling(10)
    )
    with pytest.raises(ValueError, match=r"max_factor must be a power of two .* got 6"):
        unrolled.fanned_downsampling(4, max_factor=6)
    with pytest.raises(ValueError, match=r"blocks must be a positive integer, got 0"):
        unrolled.fanned_downsampling(0)


# ----------------------------------------------------------------------------- strategies
def test_irim_checkpoint_gradients_equal_backprop_exactly():
    A, x, y = make_sense(size=16)
    model = _irim(steps=3)
    g0 = _grads(model, y, A, x, "backprop")
    assert torch.equal(g0, _grads(model, y, A, x, "checkpoint"))
    assert torch.equal(g0, _grads(model, y, A, x, "checkpoint", checkpoint_every=2))


@pytest.mark.parametrize("physics", ["sense", "fourier"])
def test_irim_reversible_float64(physics):
    if physics == "sense":
        A, x, y = make_sense(size=16, dtype=torch.complex128)
    else:
        A, x, y = _fourier(dtype=torch.complex128)
    model = _irim(steps=3, init="adjoint").double()
    g0 = _grads(model, y, A, x, "backprop")
    assert _rel(_grads(model, y, A, x, "reversible"), g0) <= 1e-9
    assert _rel(_grads(model, y, A, x, "reversible", checkpoint_every=3), g0) <= 1e-9


def test_irim_reversible_float32_ten_steps():
    A, x, y = make_sense(size=16)
    model = _irim(steps=10)
    g0 = _grads(model, y, A, x, "backprop")
    assert _rel(_grads(model, y, A, x, "reversible"), g0) <= 1e-4
    hybrid = _grads(model, y, A, x, "reversible", checkpoint_every=7, check_drift=1e-3)
    assert _rel(hybrid, g0) <= 1e-4


def test_irim_3d_reversible_float64():
    A, x, y = _sense3d(dtype=torch.complex128)
    model = _irim(dims=3, channels=4, init="adjoint").double()
    g0 = _grads(model, y, A, x, "backprop")
    assert _rel(_grads(model, y, A, x, "reversible"), g0) <= 1e-9


def test_irim_reversible_gradients_reach_learnable_physics():
    """Context parameters (a learnable LED design) get the same gradient as under backprop."""
    fpm = physops.FourierPtychography(16, physops.led_grid(3), downsample=4).double()
    x = torch.randn(1, 16, 16, dtype=torch.complex128)
    y = fpm(x).detach()
    model = _irim(complex=True).double()
    grads = []
    for strategy in ("backprop", "reversible"):
        model.set_strategy(strategy)
        model.zero_grad()
        fpm.zero_grad()
        (model(y, fpm, x0=torch.ones_like(x)) - x).abs().square().sum().backward()
        grads.append(
            torch.cat([p.grad.flatten() for p in (*model.parameters(), *fpm.parameters())])
        )
    assert _rel(grads[1], grads[0]) <= 1e-9


def test_irim_greedy_equals_hand_written_gleam():
    """One GLEAM step (Alg. 1) through greedytrain equals a hand-written one on the i-RIM stages."""
    A, x, y = make_sense(size=16, dtype=torch.complex128)
    model = _irim(steps=2, init="adjoint").double()
    model.set_strategy("greedy")
    reference = copy.deepcopy(model)

    def loss_fn(prediction, target):
        return (prediction - target).abs().square().sum()

    def sgd(params):
        return torch.optim.SGD(params, lr=1e-3)

    trainer = greedytrain.GreedyTrainer(
        model.stages, loss_fn, sgd, modules=2, output_fn=model.readout
    )
    state0 = model.initial_state(y, A, None)
    trainer.train_step(state0, unrolled.StageContext(y, A), x)

    state = reference.initial_state(y, A, None)
    for stage in reference.stages:  # module m: forward from the detached input, own update
        opt = sgd(stage.parameters())
        state = stage(state.detach(), unrolled.StageContext(y, A))
        opt.zero_grad()
        loss_fn(reference.readout(state), x).backward()
        opt.step()
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)


def test_irim_greedy_with_more_modules_than_steps():
    with pytest.raises(ValueError, match=r"modules=3 needs at least as many stages.*modules <= 2"):
        _irim().set_strategy("greedy", modules=3)


def test_irim_refuses_implicit():
    with pytest.raises(
        ValueError, match=r"i-RIM runs a fixed number of time steps and has none: use 'reversible'"
    ):
        _irim().set_strategy("implicit")


# ----------------------------------------------------------------------------- bad inputs
def test_irim_wrong_physics_type():
    _, _, y = make_sense(size=16)
    with pytest.raises(TypeError, match=r"IRIM needs a physics operator .* got int"):
        _irim()(y, 3)


def test_irim_nan_in_measurements():
    A, _, y = make_sense(size=16)
    y = y.clone()
    y[1, 2, 0, 5] = float("nan")
    with pytest.raises(ValueError, match=r"contains 1 non-finite value"):
        _irim()(y, A)


def test_irim_real_images_to_complex_model():
    blur = physops.Blur(physops.gaussian_kernel(5, 1.0))
    x = torch.randn(2, 16, 16)
    with pytest.raises(
        TypeError, match=r"A\^H y must be a complex tensor .* got dtype torch.float32"
    ):
        _irim()(blur(x), blur)


def test_irim_2d_model_on_3d_physics():
    A, _, y = _sense3d()
    with pytest.raises(
        ValueError, match=r"must have shape \(batch, H, W\) .* got shape \(1, 4, 8, 8\)"
    ):
        _irim()(y, A)


def test_irim_image_size_not_divisible():
    A, _, y = make_sense(size=18)
    with pytest.raises(ValueError, match=r"divisible by 4; got image shape \(18, 18\)"):
        _irim(downsampling=(1, 4))(y, A)


def test_irim_dtype_mismatch():
    A, _, y = make_sense(size=16, dtype=torch.complex128)
    with pytest.raises(TypeError, match=r"convert the layer with .to\(torch.float64\)"):
        _irim()(y, A)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"channels": 3}, "channels .* must be at least 4: .* got channels=3"),
        ({"steps": 0}, "steps must be a positive integer, got 0"),
        ({"blocks": 3}, "downsampling must be one integer or one per block \\(3 values\\), got 2"),
        ({"hidden": (4, 0)}, "hidden must hold positive integers"),
        ({"init": "ones"}, "init must be one of zeros, adjoint"),
    ],
)
def test_irim_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _irim(**kwargs)


def test_irim_hidden_of_the_wrong_type():
    with pytest.raises(TypeError, match=r"hidden must be one integer or a sequence .* float 2.5"):
        _irim(hidden=2.5)


def test_readme_example_runs():
    """The README's RIM and i-RIM example (the python block of its "RIM and i-RIM" section)."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## RIM and i-RIM", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert all(p.grad is not None for p in namespace["irim"].parameters())
    assert all(p.grad is not None for p in namespace["rim"].parameters())


@pytest.mark.gpu
def test_irim_reversible_on_cuda():
    cuda = torch.device("cuda")
    A, x, y = make_sense(size=16, dtype=torch.complex128)
    A, x, y = A.to(cuda), x.to(cuda), y.to(cuda)
    model = _irim(steps=4).double().to(cuda)
    g0 = _grads(model, y, A, x, "backprop")
    assert g0.device.type == "cuda"
    assert _rel(_grads(model, y, A, x, "reversible"), g0) <= 1e-9
