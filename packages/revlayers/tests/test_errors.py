"""Every bad input gets a ValueError/TypeError that says what was received and what is expected."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import revlayers as rl


def _id(x: torch.Tensor) -> torch.Tensor:
    return x


def _half(x1: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x1)


X4 = torch.randn(2, 4, 4, 4)

CASES: list[tuple[str, Callable[[], object], type[Exception], str]] = [
    # couplings
    ("g_not_callable", lambda: rl.AdditiveCoupling(3), TypeError, "expects g to be a callable"),  # type: ignore[arg-type]
    (
        "split",
        lambda: rl.AdditiveCoupling(_half, split=0),
        ValueError,
        "split to be a positive int",
    ),
    (
        "pass_through",
        lambda: rl.AdditiveCoupling(_half, pass_through=-1),
        ValueError,
        "pass_through to be an int >= 0",
    ),
    ("dim_type", lambda: rl.AdditiveCoupling(_half, dim=1.0), TypeError, "dim to be an int"),  # type: ignore[arg-type]
    (
        "update",
        lambda: rl.AdditiveCoupling(_half, update="both"),
        ValueError,
        r"update to be one of \['second', 'first'\]",
    ),  # type: ignore[arg-type]
    (
        "state_type",
        lambda: rl.AdditiveCoupling(_half, pass_context=False)([1.0]),
        TypeError,
        "expects a tensor state",
    ),
    (
        "dim_range",
        lambda: rl.AdditiveCoupling(_half, dim=5, pass_context=False)(X4),
        ValueError,
        r"cannot split a state of shape \(2, 4, 4, 4\)",
    ),
    (
        "split_size",
        lambda: rl.AdditiveCoupling(_half, split=4, pass_context=False)(X4),
        ValueError,
        "needs 0 < split < channels - pass_through",
    ),
    (
        "additive_type",
        lambda: rl.AdditiveCoupling(lambda x: (x,), pass_context=False)(X4),
        TypeError,
        "expects g to return a tensor shaped like x2",
    ),
    (
        "additive_shape",
        lambda: rl.AdditiveCoupling(lambda x: x[:, :1], pass_context=False)(X4),
        ValueError,
        "shape of the updated part x2",
    ),
    ("clamp", lambda: rl.AffineCoupling(_half, clamp=0), ValueError, "clamp to be a number > 0"),
    (
        "affine_channels",
        lambda: rl.AffineCoupling(_half, pass_context=False)(X4),
        ValueError,
        "twice the channels of x2",
    ),
    (
        "affine_type",
        lambda: rl.AffineCoupling(lambda x: 1.0, pass_context=False)(X4),
        TypeError,
        "or a tuple \\(s, t\\), got float",
    ),
    (
        "affine_complex_s",
        lambda: rl.AffineCoupling(lambda x: (x + 0j, x + 0j), pass_context=False)(X4 + 0j),
        TypeError,
        "needs a real log-scale",
    ),
    (
        "affine_shapes",
        lambda: rl.AffineCoupling(lambda x: (x[:, :1], x), pass_context=False)(X4),
        ValueError,
        "expects s and t shaped like x2",
    ),
    # Householder
    ("channels", lambda: rl.HouseholderConv(1), ValueError, "channels to be an int >= 2"),
    (
        "reflections",
        lambda: rl.HouseholderConv(4, reflections=0),
        ValueError,
        "reflections to be an int >= 1",
    ),
    ("hh_dims", lambda: rl.HouseholderConv(4, dims=4), ValueError, "dims to be 1, 2 or 3"),
    ("hh_type", lambda: rl.HouseholderConv(4)(None), TypeError, "HouseholderConv expects a tensor"),  # type: ignore[arg-type]
    (
        "hh_shape",
        lambda: rl.HouseholderConv(3)(X4),
        ValueError,
        r"expects a state of shape \(batch, 3, \*, \*\)",
    ),
    (
        "hh_dtype",
        lambda: rl.HouseholderConv(4)(X4.double()),
        TypeError,
        r"convert the layer with .to\(torch.float64\)",
    ),
    # i-RIM
    ("irim_dims", lambda: rl.IRIMResidual(2, 2, dims=4), ValueError, "IRIMResidual expects dims"),
    (
        "irim_int",
        lambda: rl.IRIMResidual(2, 2, hidden_channels=0),
        ValueError,
        "hidden_channels to be an int >= 1",
    ),
    ("irim_kernel", lambda: rl.IRIMResidual(2, 2, kernel_size=2), ValueError, "odd kernel_size"),
    ("irim_split", lambda: rl.IRIMBlock(4, split=4), ValueError, "0 < split < channels = 4"),
    (
        "irim_divisible",
        lambda: rl.IRIMBlock(4, downsample=3)(X4),
        ValueError,
        r"spatial size divisible by 3, got spatial shape \(4, 4\)",
    ),
    # InvertibleResidual
    ("res_g", lambda: rl.InvertibleResidual(None), TypeError, "expects g to be callable"),  # type: ignore[arg-type]
    (
        "res_lip_type",
        lambda: rl.InvertibleResidual(nn.Linear(2, 2), lipschitz="0.9"),
        TypeError,
        "lipschitz to be a float in",
    ),  # type: ignore[arg-type]
    (
        "res_lip_range",
        lambda: rl.InvertibleResidual(nn.Linear(2, 2), lipschitz=1.0),
        ValueError,
        r"lipschitz in \(0, 1\)",
    ),
    ("res_lip_function", lambda: rl.InvertibleResidual(_id), TypeError, "g must be an nn.Module"),
    (
        "res_solver",
        lambda: rl.InvertibleResidual(_id, None, solver=3),
        TypeError,
        "solver to be a callable",
    ),  # type: ignore[arg-type]
    ("res_tol", lambda: rl.InvertibleResidual(_id, None, tol=-1.0), ValueError, "tol > 0 or None"),
    (
        "res_max_iter",
        lambda: rl.InvertibleResidual(_id, None, max_iter=0),
        ValueError,
        "max_iter to be an int >= 1",
    ),
    (
        "res_policy",
        lambda: rl.InvertibleResidual(_id, None, on_nonconvergence="ignore"),
        ValueError,
        r"on_nonconvergence in \['raise', 'warn'\]",
    ),  # type: ignore[arg-type]
    (
        "res_layers",
        lambda: rl.InvertibleResidual(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))),
        ValueError,
        r"other layers with parameters: \['1'\]",
    ),
    (
        "res_params_type",
        lambda: rl.InvertibleResidual(_id, None, parameters=3),
        TypeError,
        "parameters to be an iterable",
    ),  # type: ignore[arg-type]
    (
        "res_params_item",
        lambda: rl.InvertibleResidual(_id, None, parameters=[1.0]),
        TypeError,
        "hold tensors or nn.Modules, got an item of type float",
    ),  # type: ignore[list-item]
    (
        "res_solver_result",
        lambda: rl.InvertibleResidual(_id, None, solver=lambda f, z: "x").inverse(X4),
        TypeError,
        "solver must return a tensor",
    ),
    (
        "res_inverse_type",
        lambda: rl.InvertibleResidual(_id, None).inverse(1.0),
        TypeError,
        "inverse expects a tensor",
    ),  # type: ignore[arg-type]
    # Invertible
    ("inv_f", lambda: rl.Invertible(_id, 3), TypeError, "f_inverse to be callable"),  # type: ignore[arg-type]
    # ReversibleSequence
    (
        "seq_single",
        lambda: rl.ReversibleSequence(rl.HouseholderConv(4)),
        TypeError,
        r"got a single HouseholderConv: wrap it in a list",
    ),  # type: ignore[arg-type]
    (
        "seq_iterable",
        lambda: rl.ReversibleSequence(3),
        TypeError,
        "iterable of InvertibleModule layers, got int",
    ),  # type: ignore[arg-type]
    ("seq_empty", lambda: rl.ReversibleSequence([]), ValueError, "at least one layer"),
    (
        "seq_layer",
        lambda: rl.ReversibleSequence([rl.HouseholderConv(4), nn.Linear(2, 2)]),
        TypeError,
        r"layer 1 is Linear. Wrap a function pair",
    ),  # type: ignore[list-item]
    (
        "seq_checkpoint",
        lambda: rl.ReversibleSequence([rl.HouseholderConv(4)], checkpoint_every=0),
        ValueError,
        "checkpoint_every to be an int >= 1",
    ),
    (
        "seq_drift",
        lambda: rl.ReversibleSequence([rl.HouseholderConv(4)], check_drift=float("inf")),
        ValueError,
        "check_drift to be a finite relative tolerance",
    ),
    (
        "seq_policy",
        lambda: rl.ReversibleSequence([rl.HouseholderConv(4)], on_drift="ignore"),
        ValueError,
        r"on_drift to be one of \['raise', 'recompute'\]",
    ),  # type: ignore[arg-type]
    (
        "seq_x",
        lambda: rl.ReversibleSequence([rl.HouseholderConv(4)])([1.0]),
        TypeError,
        "state x to be a tensor, got list",
    ),
    (
        "seq_inverse_x",
        lambda: rl.ReversibleSequence([rl.HouseholderConv(4)]).inverse(None),
        TypeError,
        "inverse expects a tensor",
    ),  # type: ignore[arg-type]
    (
        "seq_forward_result",
        lambda: rl.ReversibleSequence([rl.Invertible(lambda x: (x,), _id, pass_context=False)])(
            X4.requires_grad_()
        ),
        TypeError,
        r"layer 0 \(Invertible\(<lambda>\)\).forward returned tuple",
    ),
    # booleans and other kinds where numbers are expected (revlayers' _validate.py)
    ("bool_channels", lambda: rl.HouseholderConv(True), TypeError, "channels to be an int >= 2"),  # type: ignore[arg-type]
    (
        "float_max_iter",
        lambda: rl.InvertibleResidual(_id, None, max_iter=2.5),
        TypeError,
        "max_iter to be an int >= 1, got 2.5",
    ),  # type: ignore[arg-type]
    (
        "bool_checkpoint",
        lambda: rl.ReversibleSequence([rl.HouseholderConv(4)], checkpoint_every=True),
        TypeError,
        "checkpoint_every to be an int >= 1",
    ),  # type: ignore[arg-type]
    (
        "bool_drift",
        lambda: rl.ReversibleSequence([rl.HouseholderConv(4)], check_drift=True),
        TypeError,
        'check_drift to be a finite relative tolerance > 0 .*, "auto" or None, got True',
    ),  # type: ignore[arg-type]
    (
        "string_drift",
        lambda: rl.ReversibleSequence([rl.HouseholderConv(4)], check_drift="always"),
        TypeError,
        "check_drift to be a finite relative tolerance",
    ),  # type: ignore[arg-type]
    (
        "bool_dims",
        lambda: rl.HouseholderConv(4, dims=True),
        ValueError,
        "dims to be 1, 2 or 3",
    ),  # type: ignore[arg-type]
    (
        "exact_inverse",
        lambda: rl.Invertible(_id, _id, exact_inverse="yes"),
        TypeError,
        "exact_inverse to be True or False, got 'yes'",
    ),  # type: ignore[arg-type]
    (
        "clamp_inf",
        lambda: rl.AffineCoupling(_half, clamp=float("inf")),
        ValueError,
        "clamp to be a number > 0",
    ),
    # check_inverse
    (
        "check_module",
        lambda: rl.check_inverse(nn.Linear(2, 2), X4),
        TypeError,
        "nn.Module with forward",
    ),
    (
        "check_x",
        lambda: rl.check_inverse(rl.HouseholderConv(4), [1.0]),
        TypeError,
        "x to be a tensor",
    ),  # type: ignore[arg-type]
    (
        "check_tol",
        lambda: rl.check_inverse(rl.HouseholderConv(4), X4, tol=0),
        ValueError,
        "tol > 0 or None",
    ),
    (
        "check_fail",
        lambda: rl.check_inverse(rl.Invertible(torch.tanh, _id, pass_context=False), X4, tol=1e-6),
        ValueError,
        "relative reconstruction error .* > tol=1e-06",
    ),
    (
        "check_shape",
        lambda: rl.check_inverse(rl.Invertible(_id, lambda y: y[:1], pass_context=False), X4),
        ValueError,
        r"expected a tensor of shape \(2, 4, 4, 4\)",
    ),
]


@pytest.mark.parametrize(
    ("make", "error", "match"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_message(make: Callable[[], object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        make()


def test_generic_step_rejects_shape_changing_inverse() -> None:
    layer = rl.Invertible(lambda x: x * 2, lambda y: y[:, :2] / 2, pass_context=False, name="bad")
    seq = rl.ReversibleSequence([rl.HouseholderConv(4), layer])
    y = seq(X4.clone().requires_grad_())
    with pytest.raises(ValueError, match=r"forward\(inverse\(y\)\) has shape \(2, 2, 4, 4\)"):
        y.sum().backward()
