"""The failure policy, the registry, and one test per error message of the solvers."""

from __future__ import annotations

import warnings

import pytest
import torch

import fixedpoint


def expanding(z):
    """Not a contraction, and without a fixed point (Anderson finds the fixed point of any affine
    map with one, such as 2 z + 1, so that would not fail)."""
    return z + 1


# -- failure policy -----------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["anderson", "banach", "broyden"])
def test_non_contraction_warns_by_default(method):
    with pytest.warns(fixedpoint.ConvergenceWarning, match=r"did not converge for 2 of 2 samples"):
        result = fixedpoint.solve(expanding, torch.zeros(2, 3), method, max_iter=5)
    assert not result.converged.any()
    assert result.iterations.tolist() == [5, 5]


@pytest.mark.parametrize("method", ["anderson", "banach", "broyden"])
def test_non_contraction_raises_with_the_result_attached(method):
    with pytest.raises(fixedpoint.ConvergenceError, match=r"max_iter=5.*tol=0.0001") as info:
        fixedpoint.solve(expanding, torch.zeros(2, 3), method, max_iter=5, on_failure="raise")
    assert isinstance(info.value.result, fixedpoint.FixedPointResult)
    assert not info.value.result.converged.any()


def test_ignore_policy_is_silent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = fixedpoint.solve(expanding, torch.zeros(2, 3), max_iter=5, on_failure="ignore")
    assert not result.all_converged


@pytest.mark.parametrize("method", ["anderson", "banach", "broyden"])
def test_nan_in_one_sample_is_reported_and_the_others_converge(method):
    calls = []

    def f(z):
        calls.append(1)
        out = 0.5 * z + 1
        if len(calls) >= 3:
            out = out.clone()
            out[1, 0] = float("nan")
        return out

    with pytest.warns(fixedpoint.ConvergenceWarning, match=r"non-finite values.*indices \[1\]"):
        result = fixedpoint.solve(f, torch.zeros(3, 4), method, tol=1e-6, max_iter=200)
    assert result.converged.tolist() == [True, False, True]
    assert result.iterations[1] == 3
    assert torch.isnan(result.residuals[1])
    calls.clear()
    with pytest.raises(fixedpoint.ConvergenceError, match="non-finite"):
        fixedpoint.solve(f, torch.zeros(3, 4), method, tol=1e-6, on_failure="raise")


# -- registry -------------------------------------------------------------------------------------
def test_unknown_method_lists_the_valid_names():
    with pytest.raises(
        ValueError, match=r"unknown fixed-point method 'broyd'.*'anderson', 'banach', 'broyden'"
    ):
        fixedpoint.solve(expanding, torch.zeros(1, 2), "broyd")
    with pytest.raises(ValueError, match=r"valid names: 'anderson', 'banach', 'broyden'"):
        fixedpoint.get_solver("newton")


def test_get_solver_returns_the_registered_functions():
    assert fixedpoint.get_solver("anderson") is fixedpoint.anderson
    assert fixedpoint.get_solver("banach") is fixedpoint.banach
    assert fixedpoint.get_solver("broyden") is fixedpoint.broyden
    assert fixedpoint.available_solvers() == ("anderson", "banach", "broyden")


def test_register_a_custom_solver_and_use_it_by_name():
    def halving(f, z0, *, tol=1e-4, max_iter=50, stop_mode="rel", on_failure="warn", steps=3):
        result = fixedpoint.banach(
            f,
            z0,
            tol=tol,
            max_iter=max_iter,
            stop_mode=stop_mode,
            on_failure=on_failure,
            relaxation=0.5,
        )
        return result

    fixedpoint.register_solver("halving", halving)
    try:
        assert "halving" in fixedpoint.available_solvers()
        result = fixedpoint.solve(
            lambda z: 0.5 * z + 1,
            torch.zeros(1, 2, dtype=torch.float64),
            "halving",
            tol=1e-8,
            max_iter=200,
            steps=2,
        )
        torch.testing.assert_close(result.x, torch.full((1, 2), 2.0, dtype=torch.float64))
        with pytest.raises(ValueError, match="already registered; pass overwrite=True"):
            fixedpoint.register_solver("halving", halving)
        fixedpoint.register_solver("halving", halving, overwrite=True)
        with pytest.raises(TypeError, match=r"method 'halving' got unknown option\(s\) 'm'"):
            fixedpoint.solve(lambda z: z, torch.zeros(1, 2), "halving", m=3)
    finally:
        fixedpoint.unregister_solver("halving")
    assert "halving" not in fixedpoint.available_solvers()


def test_register_solver_rejects_bad_arguments():
    with pytest.raises(TypeError, match="non-empty string"):
        fixedpoint.register_solver("", fixedpoint.banach)
    with pytest.raises(TypeError, match="must be callable"):
        fixedpoint.register_solver("x", 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="built-in solver 'banach' cannot be removed"):
        fixedpoint.unregister_solver("banach")


def test_unknown_option_names_the_valid_ones():
    with pytest.raises(TypeError, match=r"method 'banach' got unknown option\(s\) 'm'.*relaxation"):
        fixedpoint.solve(expanding, torch.zeros(1, 2), "banach", m=5)
    with pytest.raises(TypeError, match=r"'anderson' got unknown option\(s\) 'relaxation'.*m, lam"):
        fixedpoint.solve(expanding, torch.zeros(1, 2), "anderson", relaxation=0.5)


# -- bad inputs: one test per message -------------------------------------------------------------
def test_z0_not_a_state():
    with pytest.raises(
        TypeError, match=r"z0 must be a tensor or a non-empty tuple of tensors, got list"
    ):
        fixedpoint.solve(expanding, [torch.zeros(1, 2)])  # type: ignore[arg-type]


def test_z0_integer_dtype():
    with pytest.raises(
        TypeError, match=r"z0 must have a floating or complex dtype, got torch.int64"
    ):
        fixedpoint.solve(expanding, torch.zeros(1, 2, dtype=torch.int64))


def test_z0_without_batch_dimension():
    with pytest.raises(ValueError, match="leading batch dimension, got a 0-dimensional tensor"):
        fixedpoint.solve(expanding, torch.tensor(1.0))


def test_tuple_components_with_different_batch_sizes():
    with pytest.raises(
        ValueError, match=r"must share the batch size \(dimension 0\), got \[2, 3\]"
    ):
        fixedpoint.solve(lambda s: s, (torch.zeros(2, 1), torch.zeros(3, 1)))


def test_tuple_components_on_different_devices():
    # the "meta" device stands in for a second device on machines without one
    with pytest.raises(ValueError, match=r"must be on one device, got \['cpu', 'meta'\]"):
        fixedpoint.solve(lambda s: s, (torch.zeros(2, 1), torch.zeros(2, 1, device="meta")))


def test_f_returns_a_tensor_on_another_device():
    with pytest.raises(ValueError, match=r"f is on meta, but the state is on cpu"):
        fixedpoint.solve(lambda z: torch.zeros(2, 3, device="meta"), torch.zeros(2, 3))


def test_non_finite_z0():
    with pytest.raises(ValueError, match="z0 contains non-finite values"):
        fixedpoint.solve(expanding, torch.tensor([[float("nan"), 0.0]]))


def test_f_returns_wrong_structure():
    with pytest.raises(
        TypeError, match=r"f must return a state of the same structure as z0 \(a tensor\)"
    ):
        fixedpoint.solve(lambda z: (z, z), torch.zeros(2, 3))
    with pytest.raises(TypeError, match=r"same structure as z0 \(a tuple of 2\)"):
        fixedpoint.solve(lambda s: s[0], (torch.zeros(2, 3), torch.zeros(2, 1)))


def test_f_returns_wrong_shape():
    with pytest.raises(ValueError, match=r"f has shape \(2, 4\), but the state has shape \(2, 3\)"):
        fixedpoint.solve(lambda z: torch.zeros(2, 4), torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"component 1 of the output of f has shape \(2, 2\)"):
        fixedpoint.solve(
            lambda s: (s[0], torch.zeros(2, 2)), (torch.zeros(2, 3), torch.zeros(2, 1))
        )


def test_f_returns_wrong_dtype():
    with pytest.raises(
        TypeError, match=r"f has dtype torch.float64, but the state has dtype torch.float32"
    ):
        fixedpoint.solve(lambda z: z.double(), torch.zeros(2, 3))


@pytest.mark.parametrize("tol", [-1.0, float("inf"), "small", True])
def test_bad_tol(tol):
    with pytest.raises(ValueError, match="tol must be a finite number >= 0"):
        fixedpoint.solve(expanding, torch.zeros(1, 2), tol=tol)


@pytest.mark.parametrize("max_iter", [0, 2.5, True])
def test_bad_max_iter(max_iter):
    with pytest.raises(ValueError, match="max_iter must be an integer >= 1"):
        fixedpoint.solve(expanding, torch.zeros(1, 2), max_iter=max_iter)


def test_bad_stop_mode():
    with pytest.raises(ValueError, match=r"stop_mode must be 'rel' .* or 'abs' .*, got 'relative'"):
        fixedpoint.solve(expanding, torch.zeros(1, 2), stop_mode="relative")


def test_bad_on_failure():
    with pytest.raises(
        ValueError, match=r"on_failure must be one of 'warn', 'raise', 'ignore', got 'log'"
    ):
        fixedpoint.solve(expanding, torch.zeros(1, 2), on_failure="log")


@pytest.mark.parametrize("m", [0, 2.0])
def test_bad_history_size(m):
    with pytest.raises(ValueError, match="m \\(Anderson's history size\\) must be an integer >= 1"):
        fixedpoint.anderson(expanding, torch.zeros(1, 2), m=m)
    with pytest.raises(ValueError, match="m \\(Broyden's number of rank-one terms\\) must be"):
        fixedpoint.broyden(expanding, torch.zeros(1, 2), m=m)


def test_bad_regularisation():
    with pytest.raises(ValueError, match=r"lam .* must be a finite number >= 0, got -1"):
        fixedpoint.anderson(expanding, torch.zeros(1, 2), lam=-1)


@pytest.mark.parametrize("beta", [0.0, 1.5])
def test_bad_mixing(beta):
    with pytest.raises(ValueError, match=r"beta must be a number in \(0, 1\]"):
        fixedpoint.anderson(expanding, torch.zeros(1, 2), beta=beta)


def test_bad_relaxation():
    with pytest.raises(ValueError, match=r"relaxation must be a number in \(0, 1\], got -0.5"):
        fixedpoint.banach(expanding, torch.zeros(1, 2), relaxation=-0.5)


def test_bad_coefficients():
    with pytest.raises(ValueError, match="coefficients must be one of 'auto', 'complex', 'real'"):
        fixedpoint.anderson(expanding, torch.zeros(1, 2), coefficients="hermitian")


def test_complex_coefficients_need_a_complex_state():
    with pytest.raises(ValueError, match="coefficients='complex' needs a complex state"):
        fixedpoint.anderson(
            lambda s: s,
            (torch.zeros(1, 2, dtype=torch.complex64), torch.zeros(1, 2)),
            coefficients="complex",
        )


# -- the result and its failure policy ------------------------------------------------------------
def _failed_result():
    return fixedpoint.solve(expanding, torch.zeros(2, 3), max_iter=4, on_failure="ignore")


def test_result_z_is_a_deprecated_alias_of_x():
    result = fixedpoint.solve(lambda z: 0.5 * z + 1, torch.zeros(1, 2), tol=1e-8)
    with pytest.warns(DeprecationWarning, match=r"FixedPointResult.z is deprecated .* use .*\.x"):
        z = result.z
    assert z is result.x
    with pytest.warns(DeprecationWarning, match=r"FixedPointResult\(z=\.\.\.\) is deprecated"):
        old = fixedpoint.FixedPointResult(
            z=result.x,
            iterations=result.iterations,
            residuals=result.residuals,
            converged=result.converged,
        )
    assert old.x is result.x
    assert old.trace is None


def test_result_constructor_refuses_missing_or_doubled_fields():
    t = torch.zeros(1)
    with pytest.raises(TypeError, match="FixedPointResult is missing residuals, converged"):
        fixedpoint.FixedPointResult(t, t)
    with (
        pytest.warns(DeprecationWarning, match="is deprecated"),
        pytest.raises(TypeError, match="both x and its deprecated alias z"),
    ):
        fixedpoint.FixedPointResult(t, t, t, t, z=t)


def test_check_applies_the_failure_policy():
    result = _failed_result()
    assert result.check("ignore", tol=1e-4, max_iter=4) is result
    with pytest.warns(
        fixedpoint.ConvergenceWarning,
        match=r"^my solve did not converge for 2 of 2 samples within max_iter=4 .*; try m=10\.$",
    ):
        assert (
            result.check("warn", tol=1e-4, max_iter=4, what="my solve", hint="try m=10") is result
        )
    with pytest.raises(
        fixedpoint.ConvergenceError, match=r"absolute residuals .* > tol=0.01"
    ) as err:
        result.check("raise", tol=1e-2, max_iter=4, stop_mode="abs")
    assert err.value.result is result
    with pytest.raises(ValueError, match="on_failure must be one of 'warn', 'raise', 'ignore'"):
        result.check("log", tol=1e-4, max_iter=4)  # type: ignore[arg-type]
    converged = fixedpoint.solve(lambda z: 0.5 * z, torch.ones(1, 2), tol=1e-8)
    assert converged.check("raise", tol=1e-8, max_iter=50) is converged


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: fixedpoint.anderson(expanding, torch.zeros(1, 2), m=True), "m .* got True"),
        (lambda: fixedpoint.broyden(expanding, torch.zeros(1, 2), m=True), "m .* got True"),
        (lambda: fixedpoint.anderson(expanding, torch.zeros(1, 2), lam=True), "lam .* got True"),
        (lambda: fixedpoint.banach(expanding, torch.zeros(1, 2), relaxation=True), "got True"),
        (
            lambda: fixedpoint.spectral_radius(lambda z: z, torch.zeros(1, 2), iterations=True),
            "iterations must be an integer >= 1, got True",
        ),
        (
            lambda: fixedpoint.implicit(lambda z: z, torch.zeros(1, 2), phantom_steps=True),
            "phantom_steps must be an integer >= 1, got True",
        ),
        (
            lambda: fixedpoint.implicit(
                lambda z: z, torch.zeros(1, 2), spectral_radius_iterations=True
            ),
            "spectral_radius_iterations must be an integer >= 0, got True",
        ),
    ],
)
def test_booleans_are_refused_where_numbers_are_expected(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_boolean_flags_must_be_booleans():
    with pytest.raises(TypeError, match="overwrite must be True or False, got 1"):
        fixedpoint.register_solver("banach", fixedpoint.banach, overwrite=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="return_result must be True or False, got 'yes'"):
        fixedpoint.invert_step(lambda x: 0.5 * x, torch.zeros(1, 2), return_result="yes")  # type: ignore[call-overload]
