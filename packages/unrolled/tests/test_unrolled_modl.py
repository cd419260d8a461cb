"""MoDL and unrolled PGD: shapes, strategies' gradients against backprop, invalid combinations."""

from __future__ import annotations

import pytest
import torch

import unrolled
from conftest import make_sense, strategy_grads
from conftest import rel_error as _rel


def _grads(model, y, A, x, strategy, **options):
    return strategy_grads(model, y, A, x, strategy, **options)[0]


@pytest.mark.parametrize("prior", ["resnet", "coupling", "iresnet"])
def test_modl_keeps_shape_and_dtype(prior):
    A, x, y = make_sense()
    model = unrolled.MoDL(iterations=2, prior=prior, features=8)
    out = model(y, A)
    assert out.shape == x.shape
    assert out.dtype == torch.complex64


def test_modl_checkpoint_gradients_equal_backprop_exactly():
    A, x, y = make_sense()
    model = unrolled.MoDL(iterations=3, prior="resnet", features=8)
    g0 = _grads(model, y, A, x, "backprop")
    g1 = _grads(model, y, A, x, "checkpoint")
    assert torch.equal(g0, g1)


def test_modl_reversible_float32_ten_unrolls():
    A, x, y = make_sense()
    model = unrolled.MoDL(iterations=10, features=8)
    g0 = _grads(model, y, A, x, "backprop")
    g1 = _grads(model, y, A, x, "reversible")
    assert _rel(g1, g0) <= 1e-4


def test_modl_reversible_float64():
    A, x, y = make_sense(dtype=torch.complex128)
    model = unrolled.MoDL(iterations=10, features=8).double()
    g0 = _grads(model, y, A, x, "backprop")
    g1 = _grads(model, y, A, x, "reversible")
    assert _rel(g1, g0) <= 1e-9


def test_pgd_reversible_after_certification_float64():
    A, x, y = make_sense(dtype=torch.complex128)
    model = unrolled.UnrolledPGD(iterations=4, prior="coupling", features=8).double()
    lip = model.certify(A, x)
    assert lip > 0
    g0 = _grads(model, y, A, x, "backprop")
    g1 = _grads(model, y, A, x, "reversible")
    assert _rel(g1, g0) <= 1e-9


def test_pgd_reversible_needs_certification():
    model = unrolled.UnrolledPGD(iterations=2, prior="coupling", features=8)
    with pytest.raises(ValueError, match="certify"):
        model.set_strategy("reversible")


def test_pgd_certify_refuses_a_step_above_one_over_l():
    A, x, _ = make_sense()
    model = unrolled.UnrolledPGD(iterations=2, prior="coupling", features=8, step=5.0)
    with pytest.raises(ValueError, match=r"alpha \* L = .* >= 1.*a valid step is alpha <"):
        model.certify(A, x)


def test_reversible_refuses_non_invertible_prior():
    model = unrolled.MoDL(iterations=2, prior="resnet", features=8)
    with pytest.raises(ValueError, match=r"prior='resnet' is not invertible.*coupling, iresnet"):
        model.set_strategy("reversible")


def test_implicit_refused_without_fixed_point():
    model = unrolled.MoDL(iterations=2, features=8)
    with pytest.raises(ValueError, match="needs a model with a fixed point"):
        model.set_strategy("implicit")


def test_greedy_with_more_modules_than_stages():
    model = unrolled.MoDL(iterations=2, features=8)
    with pytest.raises(ValueError, match=r"modules=3 needs at least as many stages.*modules <= 2"):
        model.set_strategy("greedy", modules=3)


def test_greedy_refuses_shared_weights():
    model = unrolled.MoDL(iterations=3, features=8, share_weights=True)
    with pytest.raises(ValueError, match="shares one set of weights"):
        model.set_strategy("greedy")


def test_unknown_strategy():
    with pytest.raises(ValueError, match="unknown strategy 'magic'; valid strategies: backprop"):
        unrolled.MoDL(iterations=1, features=8).set_strategy("magic")


def test_nan_in_measurements():
    A, _, y = make_sense()
    y = y.clone()
    y[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="contains 1 non-finite value"):
        unrolled.MoDL(iterations=1, features=8)(y, A)


def test_wrong_physics_type():
    _, _, y = make_sense()
    with pytest.raises(TypeError, match="needs a physics operator with forward"):
        unrolled.MoDL(iterations=1, features=8)(y, "sense")


def test_mu_must_be_positive():
    with pytest.raises(ValueError, match=r"mu .* must be positive"):
        unrolled.MoDL(iterations=1, mu=0.0)
