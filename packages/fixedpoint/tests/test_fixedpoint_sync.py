"""Host synchronisation every ``check_every`` iterations, and Anderson's two Gram updates.

Between two checks, samples stop and freeze on the device; the result must be the one of checking
every iteration, to the bit (only extra evaluations of f after the last stop may differ).
"""

from __future__ import annotations

import pytest
import torch
from fixedpoint_helpers import contraction, direct_solution, linear_map

import fixedpoint
from fixedpoint import _anderson

F64 = torch.float64
METHODS = ["anderson", "banach", "broyden"]


def _same(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def _mixed_batch_map(calls: list[torch.Tensor]):
    """Four samples: fast, NaN from the 4th evaluation on, slow, and one without a fixed point."""
    rates = torch.tensor([[0.05], [0.5], [0.9], [1.0]], dtype=F64)
    b = torch.randn(4, 6, dtype=F64, generator=torch.Generator().manual_seed(1))

    def f(z):
        calls.append(z.clone())
        out = rates * torch.tanh(z) + b
        out[3] = z[3] + 1  # z + 1 has no fixed point: the sample runs to max_iter
        if len(calls) >= 4:
            out[1, 2] = float("nan")
        return out

    return f


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("every", [2, 3, 7, 1000])
def test_checking_every_k_iterations_gives_the_same_result(method, every):
    results, calls = {}, {}
    for k in (1, every):
        calls[k] = []
        results[k] = fixedpoint.solve(
            _mixed_batch_map(calls[k]),
            torch.zeros(4, 6, dtype=F64),
            method,
            tol=1e-10,
            max_iter=80,
            on_failure="ignore",
            check_every=k,
        )
    ref, got = results[1], results[every]
    assert ref.converged.tolist() == [True, False, True, False]
    for field in ("x", "iterations", "residuals", "converged", "trace"):
        _same(getattr(got, field), getattr(ref, field))
    # f saw the same states, then at most every - 1 more evaluations after the last stop
    n = len(calls[1])
    assert n <= len(calls[every]) <= n + every - 1
    for a, b in zip(calls[every], calls[1]):
        _same(a, b)
    # every stopped sample stays frozen at its solution in the extra evaluations
    for extra in calls[every][n:]:
        _same(extra[[0, 2]], ref.x[[0, 2]])


@pytest.mark.parametrize("every", [1, 4])
def test_samples_that_stop_between_checks_are_frozen_where_they_converged(every):
    """All samples converge between two checks: the loop ends at the next check and the trace
    stops at the last sample's stopping iteration."""
    rates = torch.tensor([[0.1], [0.3]], dtype=F64)
    b = torch.randn(2, 5, dtype=F64)
    result = fixedpoint.banach(
        lambda z: rates * z + b, torch.zeros_like(b), tol=1e-9, max_iter=100, check_every=every
    )
    k0, k1 = result.iterations.tolist()
    assert k0 < k1
    assert result.trace.shape == (k1, 2)
    torch.testing.assert_close(result.x, b / (1 - rates), rtol=1e-8, atol=0)


def test_check_every_with_the_differentiable_mode():
    b = torch.randn(3, 4, dtype=F64, requires_grad=True)
    rates = torch.tensor([[0.1], [0.5], [0.8]], dtype=F64)
    grads = []
    for every in (1, 5):
        b.grad = None
        out = fixedpoint.implicit(
            lambda z, b: rates * torch.tanh(z) + b,
            torch.zeros(3, 4, dtype=F64),
            b,
            backward="unrolled",
            tol=1e-12,
            max_iter=200,
            check_every=every,
        )
        out.square().sum().backward()
        grads.append(b.grad.clone())
    _same(grads[1], grads[0])


@pytest.mark.parametrize("dtype", [F64, torch.complex128])
@pytest.mark.parametrize(("m", "beta"), [(5, 1.0), (3, 0.7), (1, 1.0)])
def test_incremental_and_whole_gram_updates_agree(dtype, m, beta, monkeypatch):
    A = contraction(30, 0.9, dtype)
    b = torch.randn(3, 30, dtype=dtype)
    kwargs = {"tol": 1e-12, "max_iter": 400, "m": m, "beta": beta, "on_failure": "raise"}
    whole = fixedpoint.anderson(linear_map(A, b), torch.zeros_like(b), **kwargs)
    monkeypatch.setattr(_anderson, "FULL_GRAM_MAX", 0)
    incremental = fixedpoint.anderson(linear_map(A, b), torch.zeros_like(b), **kwargs)
    assert torch.equal(whole.iterations, incremental.iterations)
    torch.testing.assert_close(incremental.x, whole.x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(incremental.x, direct_solution(A, b), rtol=1e-9, atol=1e-9)


def test_a_large_state_takes_the_incremental_update():
    """batch x n above FULL_GRAM_MAX: the default path is the incremental one."""
    n = _anderson.FULL_GRAM_MAX
    gen = torch.Generator().manual_seed(3)
    scale = 0.9 * torch.rand(n, dtype=F64, generator=gen)
    b = torch.randn(2, n, dtype=F64, generator=gen)
    step = _anderson._AndersonStep(b, 5, 1e-8, 1.0)
    assert step.incremental
    f = lambda z: scale * torch.sin(z) + b  # noqa: E731
    result = fixedpoint.anderson(f, torch.zeros_like(b), tol=1e-10, max_iter=300)
    picard = fixedpoint.banach(f, torch.zeros_like(b), tol=1e-10, max_iter=300)
    assert (result.iterations < picard.iterations).all()
    torch.testing.assert_close(result.x, picard.x, rtol=0, atol=1e-6)


@pytest.mark.parametrize("bad", [0, -2, 2.5, True])
def test_bad_check_every(bad):
    with pytest.raises(ValueError, match=r"check_every must be an integer >= 1, got .*; 1 checks"):
        fixedpoint.solve(lambda z: 0.5 * z, torch.zeros(1, 2), check_every=bad)
