"""LUSER (and its baseline LU-DnCNN): forward on every physics, gradients of every strategy
against backprop, parameter counts against the paper, the equilibrium machinery, bad inputs."""

from __future__ import annotations

import math

import pytest
import torch

import fixedpoint
import physops
import unrolled
from conftest import make_sense, strategy_grads
from conftest import rel_error as _rel

SMALL = {"features": 8, "groups": 2}


_grads = strategy_grads


def _single_coil(size=16, batch=2, dtype=torch.complex64, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(size, generator=g) < 0.5).to(
        torch.float64 if dtype == torch.complex128 else torch.float32
    )
    A = physops.FourierSampling(mask.expand(size, size).clone())
    x = torch.randn(batch, size, size, dtype=dtype, generator=g)
    return A, x, A(x)


def _radon(size=16, batch=2, dtype=torch.float32):
    A = physops.Radon(size, physops.uniform_angles(20, keep=10, dtype=dtype))
    x = torch.rand(batch, size, size, dtype=dtype)
    return A, x, A(x)


def _blur(size=16, batch=2, channels=None):
    A = physops.Blur(physops.gaussian_kernel(5, 2.0))
    shape = (batch, size, size) if channels is None else (batch, channels, size, size)
    x = torch.rand(shape)
    return A, x, A(x) + 0.01 * torch.randn(shape)


# ------------------------------------------------------------------------------------------------
# parameter counts (LUSER Table 3)
# ------------------------------------------------------------------------------------------------
def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("kwargs", "paper", "exact"),
    [
        ({"share_weights": True, "complex": False}, 93_954, True),  # CT
        ({"share_weights": True}, 95_107, True),  # MRI: real and imaginary channels
        # deblurring: the paper's SW count carries 243 = 3 x 9 x 9 more (its blur kernel)
        ({"share_weights": True, "complex": False, "color_channels": 3}, 96_503, False),
        # DW: one step size per stage (+7 against the paper's one shared step)
        ({"complex": False}, 751_625, False),
        ({}, 760_849, False),
        ({"complex": False, "color_channels": 3}, 770_073, False),
    ],
)
def test_luser_parameter_counts_match_table_3(kwargs, paper, exact):
    ours = _count(unrolled.LUSER(iterations=8, **kwargs))
    assert abs(ours - paper) / paper <= 0.005
    assert (ours == paper) == exact


@pytest.mark.parametrize(
    ("kwargs", "paper", "exact"),
    [
        ({"complex": False}, 556_033, True),  # CT
        ({}, 557_185, True),  # MRI
        ({"complex": False, "color_channels": 3}, 558_580, False),  # deblurring: +243 again
    ],
)
def test_lu_dncnn_parameter_counts_match_table_3(kwargs, paper, exact):
    ours = _count(unrolled.lu_dncnn(**kwargs))
    assert abs(ours - paper) / paper <= 0.005
    assert (ours == paper) == exact


def test_lu_dncnn_deblurring_difference_is_the_blur_kernel():
    # both shared-weight deblurring counts of the paper exceed ours by the same 3 x 9 x 9
    sw = 96_503 - _count(unrolled.LUSER(share_weights=True, complex=False, color_channels=3))
    lu = 558_580 - _count(unrolled.lu_dncnn(complex=False, color_channels=3))
    assert sw == lu == 3 * 9 * 9


# ------------------------------------------------------------------------------------------------
# forward on every physics
# ------------------------------------------------------------------------------------------------
def test_luser_forward_sense_keeps_shape_and_dtype():
    A, x, y = make_sense(size=16)
    out = unrolled.LUSER(iterations=2, **SMALL)(y, A)
    assert out.shape == x.shape
    assert out.dtype == torch.complex64


def test_luser_forward_single_coil_float64():
    A, x, y = _single_coil(dtype=torch.complex128)
    out = unrolled.LUSER(iterations=2, share_weights=True, **SMALL).double()(y, A)
    assert out.shape == x.shape
    assert out.dtype == torch.complex128


def test_luser_forward_radon_real_ct():
    A, x, y = _radon()
    model = unrolled.LUSER(iterations=2, complex=False, **SMALL)
    lip = model.calibrate_steps(A, x)
    assert all(torch.allclose(g.step, torch.tensor(1 / lip)) for g in model.gradient_steps())
    out = model(y, A)
    assert out.shape == x.shape
    assert out.dtype == torch.float32


@pytest.mark.parametrize("channels", [None, 3])
def test_luser_forward_blur_grey_and_rgb_from_measurements(channels):
    A, x, y = _blur(channels=channels)
    model = unrolled.LUSER(
        iterations=2, complex=False, color_channels=channels, init="measurements", **SMALL
    )
    out = model(y, A)
    assert out.shape == x.shape
    assert out.dtype == torch.float32
    # init="measurements": x0 = y, the blurry image itself (LUSER Sec. 4.1)
    assert torch.equal(out, model(y, A, x0=y))
    assert not torch.equal(out, model(y, A, x0=A.adjoint(y)))


@pytest.mark.parametrize("physics", ["blur", "radon", "single_coil"])
def test_lu_dncnn_forward(physics):
    if physics == "blur":
        A, x, y = _blur()
        model, x0 = unrolled.lu_dncnn(iterations=2, features=8, complex=False), y
    elif physics == "radon":
        A, x, y = _radon()
        model, x0 = unrolled.lu_dncnn(iterations=2, features=8, complex=False, step=1e-3), None
    else:
        A, x, y = _single_coil()
        model, x0 = unrolled.lu_dncnn(iterations=2, features=8), None
    out = model(y, A, x0)
    assert out.shape == x.shape
    assert out.dtype == x.dtype
    assert bool(torch.isfinite(out).all())


# ------------------------------------------------------------------------------------------------
# gradients of the strategies
# ------------------------------------------------------------------------------------------------
def _tight(model, tol=1e-12):
    model.solver = unrolled.EquilibriumSolver(tol=tol, max_iter=200, on_failure="raise")
    return model


def test_luser_implicit_gradients_equal_backprop_through_converged_solve_float64():
    A, x, y = _single_coil(dtype=torch.complex128)
    model = _tight(unrolled.LUSER(iterations=2, **SMALL).double())
    g_bp, out_bp = _grads(model, y, A, x, "backprop")
    g_im, out_im = _grads(model, y, A, x, "implicit")
    assert _rel(out_im, out_bp) <= 1e-10
    assert _rel(g_im, g_bp) <= 1e-6
    # the backward solves ran and converged, stage by stage
    for diagnostics in model.equilibrium_diagnostics():
        assert diagnostics.forward.all_converged
        assert diagnostics.backward is not None
    assert diagnostics.backward.all_converged


def test_luser_sw_implicit_gradients_equal_backprop_float64():
    A, x, y = _single_coil(dtype=torch.complex128, seed=1)
    model = _tight(unrolled.LUSER(iterations=3, share_weights=True, **SMALL).double())
    g_bp, _ = _grads(model, y, A, x, "backprop")
    g_im, _ = _grads(model, y, A, x, "implicit")
    assert _rel(g_im, g_bp) <= 1e-6


@pytest.mark.parametrize("backward", ["jacobian_free", "phantom"])
def test_luser_approximate_backwards_are_finite_and_biased(backward):
    A, x, y = _single_coil(dtype=torch.complex128)
    model = _tight(unrolled.LUSER(iterations=2, **SMALL).double(), tol=1e-10)
    g_im, _ = _grads(model, y, A, x, "implicit")
    g_ap, _ = _grads(model, y, A, x, "implicit", backward=backward)
    assert bool(torch.isfinite(g_ap).all())
    bias = _rel(g_ap, g_im)
    # the approximations drop (part of) the Neumann series J + J^2 + ...: a bias, but a bounded one
    assert 0 < bias < 1
    assert model.stages[0].backward_mode == backward


def test_luser_checkpoint_gradients_equal_backprop_exactly():
    A, x, y = make_sense(size=16)
    model = unrolled.LUSER(iterations=3, **SMALL)
    model.train()
    g_bp, out_bp = _grads(model, y, A, x, "backprop")
    g_ck, out_ck = _grads(model, y, A, x, "checkpoint")
    assert torch.equal(out_bp, out_ck)
    assert torch.equal(g_bp, g_ck)


def test_luser_greedy_dw_runs_its_inner_mode():
    model = unrolled.LUSER(iterations=2, **SMALL)
    model.set_strategy("greedy")
    assert [s.backward_mode for s in model.stages] == ["unrolled", "unrolled"]
    model.set_strategy("greedy", inner="implicit", backward="phantom")
    assert [s.backward_mode for s in model.stages] == ["phantom", "phantom"]
    model.set_strategy("greedy", modules=2, inner="checkpoint")
    assert model.stages[1].backward_mode == "unrolled"


def test_luser_default_strategy_is_implicit():
    model = unrolled.LUSER(iterations=1, **SMALL)
    assert model.strategy.name == "implicit"
    assert model.stages[0].backward_mode == "implicit"


# ------------------------------------------------------------------------------------------------
# auxiliary loss and intermediates
# ------------------------------------------------------------------------------------------------
def test_luser_intermediates_and_auxiliary_loss():
    A, x, y = make_sense(size=16)
    model = unrolled.LUSER(iterations=3, aux_loss_weight=0.5, **SMALL)
    assert model.aux_loss_weight == 0.5
    outs = model.intermediates(y, A)
    assert len(outs) == 3
    assert torch.allclose(outs[-1], model(y, A), atol=1e-6)

    # the training loop's loss: final loss + w * sum of the intermediate MSEs
    def mse(a):
        return torch.view_as_real(a - x).square().mean()

    aux = model.aux_loss_weight * sum(mse(o) for o in outs[:-1])
    weight = model.stages[0].prox.injection[0].parametrizations.weight.original
    (mse(outs[-1]) + aux).backward()
    g_aux = weight.grad.clone()
    assert bool(torch.isfinite(g_aux).all())
    model.zero_grad()
    mse(model.intermediates(y, A)[-1]).backward()
    # the auxiliary terms reach the first stage's block on top of the final loss
    assert not torch.allclose(g_aux, weight.grad)


def test_luser_aux_loss_weight_must_be_non_negative():
    with pytest.raises(ValueError, match=r"aux_loss_weight must be a finite number >= 0.*got -1"):
        unrolled.LUSER(iterations=1, aux_loss_weight=-1)


# ------------------------------------------------------------------------------------------------
# the equilibrium machinery
# ------------------------------------------------------------------------------------------------
def unrolled_solve(f, z0, params, solver):
    """The equilibrium's "unrolled" mode: fixedpoint's solve under autograd (the backprop
    reference of LUSER and DEQ), with the model's solver settings."""
    result = fixedpoint.solve(
        lambda z: f(z, *params),
        z0,
        solver.method,
        tol=solver.tol,
        max_iter=solver.max_iter,
        stop_mode=solver.stop_mode,
        on_failure=solver.on_failure,
        differentiable=True,
        **solver.options,
    )
    return result.x, result


@pytest.mark.parametrize("method", ["anderson", "banach"])
def test_unrolled_solve_matches_fixedpoint_solve(method):
    torch.manual_seed(0)
    W = torch.randn(2, 6, 6, dtype=torch.float64)
    W = 0.8 * W / torch.linalg.matrix_norm(W, ord=2, keepdim=True)
    b = torch.randn(2, 6, dtype=torch.float64)

    def f(z, b):
        return torch.tanh(torch.einsum("bij,bj->bi", W, z) + b)

    settings = unrolled.EquilibriumSolver(method=method, tol=1e-11, max_iter=300)
    z, result = unrolled_solve(f, torch.zeros_like(b), (b,), settings)
    reference = fixedpoint.solve(
        lambda z: f(z, b), torch.zeros_like(b), method, tol=1e-11, max_iter=300
    )
    assert torch.equal(result.iterations, reference.iterations)
    assert torch.allclose(z, reference.x, rtol=0, atol=1e-12)


def test_unrolled_solve_freezes_converged_samples():
    b = torch.tensor([[0.0, 0.0], [1.0, -1.0]], dtype=torch.float64)
    settings = unrolled.EquilibriumSolver(method="banach", tol=1e-10, max_iter=200)
    _, result = unrolled_solve(lambda z, b: 0.5 * z + b, torch.zeros_like(b), (b,), settings)
    assert result.iterations[0] == 1  # z = 0 is already the fixed point of the first sample
    assert result.iterations[1] > 10
    assert bool(result.converged.all())


def test_unrolled_solve_failure_policies():
    b = torch.ones(1, 3)
    for policy, context in (
        ("raise", pytest.raises(fixedpoint.ConvergenceError, match="did not converge for 1 of 1")),
        ("warn", pytest.warns(fixedpoint.ConvergenceWarning, match="raise max_iter")),
    ):
        settings = unrolled.EquilibriumSolver(max_iter=2, tol=1e-12, on_failure=policy)
        with context:
            unrolled_solve(lambda z, b: 0.9 * z + b, torch.zeros_like(b), (b,), settings)


def test_luser_diagnostics_per_stage():
    A, _, y = make_sense(size=16)
    model = unrolled.LUSER(iterations=2, share_weights=True, **SMALL)
    assert model.equilibrium_diagnostics() == [None, None]
    model(y, A).abs().sum().backward()
    diags = model.equilibrium_diagnostics()
    assert diags[0] is not diags[1]  # one record per stage, even when the weights are shared
    for d in diags:
        assert d.forward.iterations.shape == (2,)
        assert bool(d.forward.converged.all())
        assert d.backward is not None
        assert d.backward.residuals.shape == (2,)


def test_luser_solver_setting_reaches_every_stage():
    model = unrolled.LUSER(iterations=2, solver={"tol": 1e-3, "max_iter": 7}, **SMALL)
    assert all(s.solver.max_iter == 7 for s in model.stages)
    model.solver = unrolled.EquilibriumSolver(method="banach", options={"relaxation": 0.5})
    assert all(s.solver.method == "banach" for s in model.stages)


def test_spectral_norm_is_fixed_between_weight_updates():
    conv = unrolled.spectral_norm(torch.nn.Conv2d(3, 4, 3), mode="matrix")
    sn = conv.parametrizations.weight[0]
    conv.train()
    w1 = conv.weight
    w2 = conv.weight  # torch's spectral_norm would run another power iteration here
    assert torch.equal(w1, w2)
    u = sn._u.clone()
    with torch.no_grad():
        conv.parametrizations.weight.original.mul_(1.5).add_(0.1)
    w3 = conv.weight
    assert not torch.equal(sn._u, u)  # the update ran once for the new weight
    assert torch.equal(w3, conv.weight)
    # after enough power iterations sigma is the largest singular value
    for _ in range(200):
        with torch.no_grad():
            conv.parametrizations.weight.original.add_(0)  # bumps the version: one more iteration
        conv.weight
    mat = conv.weight.detach().flatten(1)
    assert math.isclose(float(torch.linalg.matrix_norm(mat, ord=2)), 1.0, rel_tol=1e-5)


def test_spectral_norm_eval_mode_keeps_estimates():
    conv = unrolled.spectral_norm(torch.nn.Conv2d(2, 2, 3), mode="matrix").eval()
    u = conv.parametrizations.weight[0]._u.clone()
    with torch.no_grad():
        conv.parametrizations.weight.original.mul_(2)
    conv.weight
    assert torch.equal(conv.parametrizations.weight[0]._u, u)


# ------------------------------------------------------------------------------------------------
# invalid strategies and bad inputs
# ------------------------------------------------------------------------------------------------
def test_luser_refuses_reversible():
    with pytest.raises(
        ValueError, match=r"LUSER's equilibrium blocks are not invertible.*'implicit'"
    ):
        unrolled.LUSER(iterations=2, **SMALL).set_strategy("reversible")


def test_luser_sw_refuses_greedy():
    model = unrolled.LUSER(iterations=2, share_weights=True, **SMALL)
    with pytest.raises(ValueError, match=r"LUSER-SW shares one block.*share_weights=False"):
        model.set_strategy("greedy")


def test_luser_greedy_with_more_modules_than_stages():
    model = unrolled.LUSER(iterations=2, **SMALL)
    with pytest.raises(ValueError, match="modules=3 needs at least as many stages"):
        model.set_strategy("greedy", modules=3, inner="implicit")


def test_luser_iterations_must_be_positive():
    with pytest.raises(ValueError, match="iterations must be a positive integer, got 0"):
        unrolled.LUSER(iterations=0)


def test_luser_unknown_init():
    with pytest.raises(ValueError, match=r"init must be 'adjoint'.*or 'measurements'.*got 'fbp'"):
        unrolled.LUSER(iterations=1, init="fbp")


def test_luser_measurements_init_needs_image_measurements():
    A, _, y = _radon()
    model = unrolled.LUSER(iterations=1, complex=False, init="measurements", **SMALL)
    with pytest.raises(ValueError, match=r"Radon maps images of shape \(16, 16\).*init='adjoint'"):
        model(y, A)


def test_luser_real_model_refuses_complex_images():
    A, _, y = make_sense(size=16)
    model = unrolled.LUSER(iterations=1, complex=False, **SMALL)
    with pytest.raises(TypeError, match="must be a real tensor"):
        model(y, A)


def test_luser_nan_in_measurements():
    A, _, y = make_sense(size=16)
    y = y.clone()
    y[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="contains 1 non-finite value"):
        unrolled.LUSER(iterations=1, **SMALL)(y, A)


def test_luser_data_gain_must_be_positive():
    with pytest.raises(ValueError, match="data_gain must be a positive finite number, got 0"):
        unrolled.LUSER(iterations=1, data_gain=0)


def test_luser_groups_must_divide_features():
    with pytest.raises(ValueError, match=r"features \(8\) must be divisible by groups \(3\)"):
        unrolled.LUSER(iterations=1, features=8, groups=3)


def test_solver_unknown_method_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown fixed-point method 'newton'.*'anderson'"):
        unrolled.LUSER(iterations=1, solver={"method": "newton"})


def test_solver_unknown_option():
    with pytest.raises(
        ValueError, match=r"unknown option\(s\) 'm' for method 'banach'.*relaxation"
    ):
        unrolled.EquilibriumSolver(method="banach", options={"m": 3})


def test_solver_bad_tolerance():
    with pytest.raises(ValueError, match=r"tol must be a finite number >= 0, got -1"):
        unrolled.EquilibriumSolver(tol=-1)


def test_solver_unknown_key():
    with pytest.raises(
        ValueError, match=r"invalid solver settings \['tolerance'\].*valid keys: method"
    ):
        unrolled.LUSER(iterations=1, solver={"tolerance": 1e-3})


def test_solver_wrong_type():
    with pytest.raises(TypeError, match=r"solver must be an unrolled\.EquilibriumSolver.*got str"):
        unrolled.LUSER(iterations=1, solver="anderson")


def test_unrolled_mode_needs_a_builtin_method():
    def picard(f, z0, *, tol, max_iter, stop_mode, on_failure):
        return fixedpoint.banach(
            f, z0, tol=tol, max_iter=max_iter, stop_mode=stop_mode, on_failure=on_failure
        )

    fixedpoint.register_solver("test_luser_picard", picard)
    try:
        A, _, y = make_sense(size=16)
        model = unrolled.LUSER(iterations=1, solver={"method": "test_luser_picard"}, **SMALL)
        model(y, A)  # implicit: any registered solver
        model.set_strategy("backprop")
        with pytest.raises(
            ValueError, match="differentiates the iterations of 'anderson' or 'banach'"
        ):
            model(y, A)
    finally:
        fixedpoint.unregister_solver("test_luser_picard")


def test_luser_calibrate_steps_fraction_range():
    A, x, _ = _radon()
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 2\)"):
        unrolled.LUSER(iterations=1, complex=False, **SMALL).calibrate_steps(A, x, fraction=2.5)


def test_readme_luser_example_runs(capsys):
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    code = readme.split("## LUSER and DEQ4IP")[1].split("```python\n")[1].split("```")[0]
    exec(compile(code, "README.md (LUSER and DEQ4IP)", "exec"), {})
    assert "torch.Size([2, 32, 32])" in capsys.readouterr().out


@pytest.mark.parametrize("strategy", ["implicit", "backprop"])
def test_luser_keeps_the_device(device, strategy):
    A, x, y = make_sense(size=12)
    A, x, y = A.to(device), x.to(device), y.to(device)
    model = unrolled.LUSER(iterations=2, **SMALL).to(device).set_strategy(strategy)
    out = model(y, A)
    assert out.device.type == device.type
    assert out.dtype == torch.complex64
    (out - x).abs().square().sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads
    assert all(g.device.type == device.type and bool(torch.isfinite(g).all()) for g in grads)
