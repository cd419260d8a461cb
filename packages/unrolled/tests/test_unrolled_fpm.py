"""Fourier ptychography with a learned LED design (MEL Sec. 5.1) in miniature: the task, the
model's shapes, the design's gradients under every strategy, the Lipschitz estimate against a
dense Hessian, MEL's hybrid setting, training, and every error message."""

from __future__ import annotations

import math

import pytest
import torch

import physops
import unrolled
from conftest import rel_error as _rel

# MEL's setting in miniature: 9 LEDs (5 bright field), 16 px objects, 4 px camera images
TASK = {"image_size": 16, "leds_per_side": 3}


def _data(split: str = "train", **extra):
    return unrolled.make_dataset("ptychography", split, **{**TASK, **extra})


def _model(data, **kwargs):
    kwargs.setdefault("num_measurements", 2)
    kwargs.setdefault("iterations", 3)
    kwargs.setdefault("step", 0.3)  # 16 px objects are more curved than the default 32 px
    return unrolled.FPMNet.from_physics(data.acquisition, **kwargs)


def _grads(model, batch, strategy, **options):
    """Every parameter's gradient (the design's last) under ``strategy``."""
    model.set_strategy(strategy, **options)
    model.zero_grad()
    loss = (model(batch.y, batch.physics) - batch.target).abs().square().sum()
    loss.backward()
    params = [p for n, p in model.named_parameters() if not n.startswith("illumination")]
    design = model.illumination.design_raw.grad
    return torch.cat([*(p.grad.flatten() for p in params if p.grad is not None)]), design.clone()


# ------------------------------------------------------------------------------------------------
# the task
# ------------------------------------------------------------------------------------------------
def test_task_batches_are_single_led_images_of_real_objects():
    data = _data()
    assert "ptychography" in unrolled.TASKS
    batch = data.batch([0, 1])
    assert batch.y.shape == (2, 9, 4, 4)
    assert batch.y.dtype == torch.float32
    assert batch.target.shape == (2, 16, 16)
    assert batch.target.dtype == torch.complex64
    assert isinstance(batch.physics, physops.FourierPtychography)
    assert torch.equal(batch.physics.design, torch.eye(9))
    assert torch.allclose(batch.physics(batch.target), batch.y, atol=1e-6)
    # amplitude in [min_amplitude, 1], phase in [0, max_phase] (physops.ptychography_object)
    amplitude, phase = batch.target.abs(), batch.target.angle()
    assert float(amplitude.min()) >= 0.2 - 1e-6
    assert float(amplitude.max()) <= 1 + 1e-6
    assert float(phase.min()) >= -1e-6
    assert float(phase.max()) <= math.pi / 2 + 1e-6
    # amplitude and phase come from two different real slices
    assert not torch.allclose(
        amplitude / amplitude.amax((-2, -1), keepdim=True),
        phase / phase.amax((-2, -1), keepdim=True),
    )


def test_task_double_precision_and_repeatable_items():
    data = _data(dtype="float64")
    batch = data.batch([2, 3])
    assert batch.y.dtype == torch.float64
    assert batch.target.dtype == torch.complex128
    assert torch.allclose(batch.physics(batch.target), batch.y, atol=1e-12)
    again = _data(dtype="float64")
    assert torch.equal(data[5]["target"], again[5]["target"])
    assert not torch.equal(data[5]["target"], _data(dtype="float64", seed=1)[5]["target"])


def test_model_kwargs_build_the_model_of_the_task():
    data = _data()
    model = unrolled.FPMNet(**data.model_kwargs, num_measurements=2, iterations=1)
    batch = data.batch([0])
    assert model(batch.y, batch.physics).shape == (1, 16, 16)


# ------------------------------------------------------------------------------------------------
# the model
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prior", [None, "coupling", "resblocks"])
def test_forward_keeps_shape_and_precision(prior):
    data = _data()
    batch = data.batch([0, 1])
    model = _model(data, prior=prior, features=4)
    out = model(batch.y, batch.physics)
    assert out.shape == batch.target.shape
    assert out.dtype == torch.complex64
    batch64 = _data(dtype="float64").batch([0, 1])
    assert model.double()(batch64.y, batch64.physics).dtype == torch.complex128


@pytest.mark.parametrize("strategy", ["backprop", "reversible"])
def test_model_keeps_the_device(device, strategy):
    data = _data()
    batch = data.batch([0, 1]).to(device)
    model = _model(data).to(device)
    if strategy == "reversible":
        model.certify(batch.physics, batch.target)
    model.set_strategy(strategy)
    out = model(batch.y, batch.physics)
    assert out.device.type == device.type
    out.abs().sum().backward()
    assert model.illumination.design_raw.grad.device.type == device.type


def test_simulated_measurements_equal_the_designs_forward_model():
    """Multiplexing single-LED images with the design is the design's forward model, so the
    model reconstructs the same from either (MEL Fig. 1's simulation)."""
    data = _data(dtype="float64")
    batch = data.batch([0, 1])
    model = _model(data).double()
    measured = model.measurements(batch.y, batch.physics)
    assert measured.shape == (2, 2, 4, 4)
    assert torch.allclose(measured, model.illumination(batch.target), atol=1e-12)
    assert torch.allclose(model(measured), model(batch.y, batch.physics), atol=1e-12)
    assert torch.allclose(model.simulate(batch.target), measured, atol=1e-12)


def test_noise_is_added_after_multiplexing():
    data = _data(dtype="float64")
    batch = data.batch(list(range(8)))
    model = _model(data, noise_std=0.01).double()
    with torch.no_grad():
        noise = model.measurements(batch.y, batch.physics) - model.illumination(batch.target)
    assert abs(float(noise.std()) - 0.01) < 0.002
    assert abs(float(noise.mean())) < 0.002


def test_normalised_step_is_invariant_to_the_designs_brightness():
    """D(x; c w, c y) = c^2 D(x; w, y) and s(c w)^2 = c^2 s(w)^2: the step does not change when
    the design and the measurements are scaled together."""
    data = _data(dtype="float64")
    batch = data.batch([0, 1])
    model = _model(data).double()
    step = model.gradient_steps()[0]
    state = model.adapter.to_net(batch.target * 0.9)
    y = model.illumination(batch.target)
    out = step(state, y, model.illumination)
    with torch.no_grad():
        model.illumination.design_raw.mul_(3.0)
    scaled = step(state, 3.0 * y, model.illumination)
    assert torch.allclose(out, scaled, atol=1e-12)


def test_gradient_lipschitz_equals_the_dense_hessian_norm():
    """Power iteration on Hessian-vector products against the eigenvalues of the full Hessian
    (autograd Jacobian of the closed-form gradient, real and imaginary parts as variables)."""
    leds = physops.led_grid(3, spacing=6e-3, distance=30e-3)
    fp = physops.FourierPtychography(8, leds, downsample=2, design=torch.rand(2, 9)).double()
    x = physops.ptychography_object(torch.rand(1, 8, 8), torch.rand(1, 8, 8))
    x = x.to(torch.complex128)
    y = fp(x) + 0.05 * torch.rand(1, 2, 4, 4, dtype=torch.float64)  # a nonzero residual
    x = x * 0.8

    def real_gradient(v):
        g = fp.gradient(torch.view_as_complex(v.reshape(1, 8, 8, 2)), y)
        return torch.view_as_real(g).flatten()

    hessian = torch.autograd.functional.jacobian(
        real_gradient, torch.view_as_real(x).flatten().clone()
    )
    assert torch.allclose(hessian, hessian.T, atol=1e-10)  # the Jacobian of a gradient
    exact = float(torch.linalg.eigvalsh(hessian).abs().max())
    estimate = unrolled.gradient_lipschitz(lambda v: fp.gradient(v, y), x, iterations=300)
    assert estimate.shape == (1,)
    assert abs(float(estimate[0]) - exact) <= 1e-6 * exact


def test_certify_sets_an_estimate_and_caps_the_steps():
    data = _data()
    batch = data.batch([0, 1])
    model = _model(data)
    lip = model.certify(batch.physics, batch.target)
    assert lip > 0
    for g in model.gradient_steps():
        assert float(g.lipschitz) == pytest.approx(lip)
    # a step learned past the estimate is used at 0.9 / L
    step = model.gradient_steps()[0]
    with torch.no_grad():
        step.raw_step.fill_(10.0)
    assert float(step.step.detach()) == pytest.approx(0.9 / lip)


def test_certify_refuses_a_step_above_one_over_l():
    data = _data()
    batch = data.batch([0, 1])
    model = _model(data, step=50.0)
    with pytest.raises(ValueError, match=r"alpha \* L = .* >= 1.*a valid step is step <"):
        model.certify(batch.physics, batch.target)


# ------------------------------------------------------------------------------------------------
# the design's gradients under every strategy
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prior", [None, "resblocks"])
def test_checkpoint_gradients_equal_backprop_exactly(prior):
    data = _data()
    batch = data.batch([0, 1])
    model = _model(data, prior=prior, features=4)
    params0, design0 = _grads(model, batch, "backprop")
    params1, design1 = _grads(model, batch, "checkpoint")
    assert float(design0.abs().max()) > 0  # the design is trained through y and grad D
    assert torch.equal(design0, design1)
    assert torch.equal(params0, params1)


@pytest.mark.parametrize("prior", [None, "coupling"])
def test_reversible_gradients_equal_backprop_float64(prior):
    data = _data(dtype="float64")
    batch = data.batch([0, 1])
    model = _model(data, prior=prior, features=4, iterations=4).double()
    model.certify(batch.physics, batch.target)
    params0, design0 = _grads(model, batch, "backprop")
    params1, design1 = _grads(model, batch, "reversible")
    assert float(design0.abs().max()) > 0
    assert _rel(design1, design0) <= 1e-9
    assert _rel(params1, params0) <= 1e-9


def test_reversible_float32_ten_unrolls():
    data = _data()
    batch = data.batch([0, 1])
    model = _model(data, iterations=10)
    model.certify(batch.physics, batch.target)
    params0, design0 = _grads(model, batch, "backprop")
    params1, design1 = _grads(model, batch, "reversible")
    assert _rel(design1, design0) <= 1e-4
    assert _rel(params1, params0) <= 1e-4


def test_mel_setting_four_fixed_point_iterations_and_checkpoints_every_ten():
    """MEL: T = 4 plain fixed-point iterations per inversion, a checkpoint every 10 unrolls.
    The four iterations leave an inversion error that grows along the reverse pass; the hybrid
    checkpoints restart it from an exact state every ten unrolls."""
    data = _data(dtype="float64")
    batch = data.batch([0, 1])
    mel = {"inverse_method": "banach", "inverse_max_iter": 4, "inverse_on_failure": "ignore"}
    model = _model(data, iterations=20, **mel).double()
    model.certify(batch.physics, batch.target)
    _, design0 = _grads(model, batch, "backprop")
    # without drift checks (check_drift=None), as MEL trains
    _, plain = _grads(model, batch, "reversible", check_drift=None)
    _, hybrid = _grads(model, batch, "reversible", checkpoint_every=10, check_drift=None)
    assert _rel(hybrid, design0) < _rel(plain, design0)
    assert _rel(hybrid, design0) <= 1e-2
    # the default checks (check_drift="auto") find the inexact inverses and recompute them
    _, checked = _grads(model, batch, "reversible")
    assert _rel(checked, design0) <= 1e-10
    # and a drift check on the rebuilt states catches the inexact inverse
    with pytest.raises(unrolled_drift_error(), match="does not reproduce the state"):
        _grads(model, batch, "reversible", checkpoint_every=10, check_drift=1e-10)


def unrolled_drift_error():
    import revlayers

    return revlayers.DriftError


# ------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["backprop", "reversible"])
def test_a_few_training_steps_lower_the_loss_and_change_the_design(strategy):
    data = _data()
    fixed = data.batch(list(range(8)))
    model = _model(data, prior="coupling", features=4, iterations=4)
    loss = unrolled.get_loss("l1")
    design = model.design.detach().clone()
    with torch.no_grad():
        before = float(loss(model(fixed.y, fixed.physics), fixed.target))
    first = data.batch([0, 1])

    def certify_again(row):  # the curvature follows the learned prior (see unrolled.models._fpm)
        if strategy == "reversible":
            model.certify(first.physics, first.target, strict=False)

    result = unrolled.train(
        model,
        data,
        strategy=strategy,
        steps=12,
        batch_size=2,
        lr=1e-2,
        progress=False,
        callback=certify_again,
    )
    with torch.no_grad():
        after = float(loss(model(fixed.y, fixed.physics), fixed.target))
    assert result.steps == 12
    assert after < 0.8 * before
    assert not torch.allclose(model.design, design)
    assert bool((model.design >= 0).all())


# ------------------------------------------------------------------------------------------------
# strategies that do not apply, and bad inputs
# ------------------------------------------------------------------------------------------------
def test_reversible_needs_the_estimate_first():
    with pytest.raises(ValueError, match=r"Lip\(grad D\) is estimated.*call model.certify"):
        _model(_data()).set_strategy("reversible")


def test_reversible_refuses_a_non_invertible_prior():
    model = _model(_data(), prior="resblocks", features=4)
    with pytest.raises(ValueError, match=r"prior='resblocks' is not invertible.*or prior=None"):
        model.set_strategy("reversible")


def test_greedy_refused_while_the_design_is_learned():
    with pytest.raises(ValueError, match="LED design is shared by every stage"):
        _model(_data()).set_strategy("greedy")
    _model(_data(), learn_design=False).set_strategy("greedy")  # a fixed design is fine


def test_implicit_refused():
    with pytest.raises(ValueError, match="needs a model with a fixed point"):
        _model(_data()).set_strategy("implicit")


def test_wrong_physics_type():
    batch = _data().batch([0])
    sense = physops.Sense(torch.ones(1, 1, 16, 16, dtype=torch.complex64))
    with pytest.raises(TypeError, match=r"FPMNet needs a physops.FourierPtychography .* got Sense"):
        _model(_data())(batch.y, sense)


def test_physics_of_another_geometry():
    batch = _data().batch([0])
    other = _data(led_spacing=5e-3).acquisition
    with pytest.raises(ValueError, match=r"another geometry than the model.*from_physics"):
        _model(_data())(batch.y, other)


def test_physics_with_a_multiplexed_design():
    data = _data()
    batch = data.batch([0])
    multiplexed = _model(data).illumination
    other = _model(data)
    with pytest.raises(ValueError, match=r"must have the identity design .* got a design of shape"):
        other(batch.y, multiplexed)


def test_measurements_of_the_wrong_shape():
    data = _data()
    batch = data.batch([0])
    with pytest.raises(ValueError, match=r"expects y of shape \(batch, 2, 4, 4\) \(measurements"):
        _model(data)(batch.y)  # single-LED images without their acquisition


def test_nan_in_measurements():
    data = _data()
    batch = data.batch([0])
    y = batch.y.clone()
    y[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="contains 1 non-finite value"):
        _model(data)(y, batch.physics)


def test_complex_measurements():
    data = _data()
    batch = data.batch([0])
    with pytest.raises(TypeError, match=r"must be a real floating tensor, got torch.complex64"):
        _model(data)(batch.y.to(torch.complex64), batch.physics)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prior": "magic"}, "unknown prior 'magic'; valid priors: None"),
        ({"iterations": 0}, "iterations must be a positive integer, got 0"),
        ({"noise_std": -1.0}, "noise_std must be a finite number >= 0, got -1.0"),
        ({"num_measurements": 0}, "num_measurements must be an integer >= 1, got 0"),
        ({"step": 0.0}, r"step must be a positive number \(units of 1 / L_ref\), got 0.0"),
        ({"inverse_on_failure": "shrug"}, "inverse_on_failure must be 'warn', 'raise' or 'ignore'"),
    ],
)
def test_bad_model_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _model(_data(), **kwargs)


def test_from_physics_needs_ptychography():
    with pytest.raises(TypeError, match=r"from_physics needs a physops.FourierPtychography"):
        unrolled.FPMNet.from_physics(physops.FFT())


def test_certify_margin_below_one():
    data = _data()
    batch = data.batch([0])
    with pytest.raises(ValueError, match="margin must be a number >= 1"):
        _model(data).certify(batch.physics, batch.target, margin=0.5)


def test_gradient_lipschitz_bad_iterations():
    with pytest.raises(ValueError, match="iterations must be a positive integer, got 0"):
        unrolled.gradient_lipschitz(lambda v: v, torch.ones(1, 2), iterations=0)
