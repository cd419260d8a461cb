"""Reversible training never returns wrong gradients silently (issue 16, item 1).

Reversible MoDL with the default strategy options either matches backprop's gradients or raises
``DriftError`` naming the unroll and the cause; the default recomputes, so it matches.
"""

from __future__ import annotations

import re

import pytest
import torch

import revlayers
import unrolled
from conftest import make_sense, rel_error, strategy_grads

MUS = [4.0, 1.0, 0.25, 0.05]


def _problem(mu: float, dtype: torch.dtype = torch.complex64, **kwargs: object):
    """32 x 32, 4 coils, 10 unrolls: the setting of the held-out finding."""
    A, x, y = make_sense(batch=2, coils=4, size=32, dtype=dtype)
    torch.manual_seed(0)
    model = unrolled.MoDL(iterations=10, features=8, mu=mu, **kwargs)  # type: ignore[arg-type]
    if dtype == torch.complex128:
        model = model.double()
    return model, A, x, y


def _grads(model, y, A, x, strategy, **options):
    return strategy_grads(model, y, A, x, strategy, **options)[0]


@pytest.mark.parametrize("mu", MUS)
def test_reversible_modl_float32_default_options_matches_backprop(mu):
    model, A, x, y = _problem(mu)
    g0 = _grads(model, y, A, x, "backprop")
    g1 = _grads(model, y, A, x, "reversible")
    assert model.strategy.check_drift == "auto"
    assert rel_error(g1, g0) <= 1e-3


@pytest.mark.parametrize("mu", MUS)
def test_reversible_modl_raise_mode_raises_with_cause_or_matches(mu):
    model, A, x, y = _problem(mu)
    g0 = _grads(model, y, A, x, "backprop")
    try:
        g1 = _grads(model, y, A, x, "reversible", on_drift="raise")
    except revlayers.DriftError as err:
        message = str(err)
    else:
        message = ""
        assert rel_error(g1, g0) <= 1e-3
    if message:
        assert "unroll" in message
        assert re.search(r"Likely cause: (small mu|CG not converged)", message)


def test_small_mu_without_checkpoints_raises_naming_unroll_and_small_mu():
    model, A, x, y = _problem(0.05)
    g0 = _grads(model, y, A, x, "backprop")
    # what the checks guard against: no checks and no hybrid checkpoints give garbage
    unchecked = _grads(model, y, A, x, "reversible", checkpoint_every=1000, check_drift=None)
    assert rel_error(unchecked, g0) > 1.0
    with pytest.raises(revlayers.DriftError, match=r"unroll 0 of 10.*Likely cause: small mu") as e:
        _grads(model, y, A, x, "reversible", checkpoint_every=1000, on_drift="raise")
    assert "mu = 0.05" in str(e.value)
    assert e.value.layer_name.startswith("unroll 0 of 10: ")


def test_small_mu_without_checkpoints_recomputes_by_default():
    model, A, x, y = _problem(0.05)
    g0 = _grads(model, y, A, x, "backprop")
    g1 = _grads(model, y, A, x, "reversible", checkpoint_every=1000)
    assert rel_error(g1, g0) <= 1e-3
    report = model.reverse_diagnostics
    assert report.recomputed_segments == 1
    assert report.max_drift > report.tolerance


def test_cg_not_converged_is_named_as_the_cause():
    model, A, x, y = _problem(1.0, cg_max_iter=3)
    with pytest.raises(revlayers.DriftError, match=r"unroll 9 of 10.*CG not converged") as e:
        _grads(model, y, A, x, "reversible", on_drift="raise")
    assert e.value.kind == "layer"
    assert "CGStep" in e.value.layer_name
    g0 = _grads(model, y, A, x, "backprop")
    g1 = _grads(model, y, A, x, "reversible")
    assert rel_error(g1, g0) <= 1e-3


@pytest.mark.parametrize("mu", MUS)
def test_reversible_modl_float64_equals_backprop(mu):
    model, A, x, y = _problem(mu, dtype=torch.complex128)
    g0 = _grads(model, y, A, x, "backprop")
    g1 = _grads(model, y, A, x, "reversible")
    assert rel_error(g1, g0) <= 1e-10


@pytest.mark.parametrize(
    ("mu", "dtype", "expected"),
    [
        (4.0, torch.float32, None),  # 1.25^10 < 10 = tol / cg_tol: no checkpoints needed
        (1.0, torch.float32, 3 * 3),  # 2^3 <= 10 < 2^4: every 3 unrolls (3 layers each)
        (0.25, torch.float32, 3),  # 5 <= 10 < 25: every unroll
        (0.05, torch.float32, 3),  # 21 > 10: every unroll (the least there is)
        (1.0, torch.float64, 6 * 3),  # float64: tol / cg_tol = 100, 2^6 <= 100 < 2^7
    ],
)
def test_modl_chooses_hybrid_checkpoints_from_mu_and_cg_tol(mu, dtype, expected):
    model = unrolled.MoDL(iterations=10, features=8, mu=mu).set_strategy("reversible")
    assert model.reversible_checkpoints(dtype) == expected


def test_modl_checkpoints_follow_cg_tol_and_the_users_choice():
    loose = unrolled.MoDL(iterations=10, features=8, mu=4.0, cg_tol=1e-5).set_strategy("reversible")
    assert loose.reversible_checkpoints(torch.float32) == 3  # tol / cg_tol = 1: every unroll
    model, A, x, y = _problem(0.05)
    _grads(model, y, A, x, "reversible", checkpoint_every=6)
    assert model._reversible_chain().checkpoint_every == 6
    _grads(model, y, A, x, "reversible")
    assert model._reversible_chain().checkpoint_every == 3


def test_approximate_inverses_say_so():
    adapter = unrolled.nn.ImageAdapter()
    assert not unrolled.nn.CGStep(adapter).exact_inverse
    assert not unrolled.nn.GradientStep(adapter).exact_inverse


def test_strategy_drift_defaults_and_validation():
    s = unrolled.Strategy("reversible")
    assert s.check_drift == "auto"
    assert s.on_drift is None
    assert unrolled.Strategy("reversible", check_drift=None).check_drift is None
    with pytest.raises(ValueError, match=r'check_drift must be .*"auto".*, got \'tight\''):
        unrolled.Strategy("reversible", check_drift="tight")  # type: ignore[arg-type]
