"""The iteration loop shared by every solver: per-sample residuals, stopping and freezing.

A solver supplies a *step*: given the current flat iterate ``x`` (``(batch, n)``), its image
``fx = F(x)`` and the residual ``g = fx - x``, it proposes the next iterate for the whole batch.
The loop evaluates the map on the whole batch (a map may close over batch-shaped tensors, so it
cannot be called on a subset), measures every sample's residual, and freezes each sample as soon
as it meets
the tolerance (or becomes non-finite): a frozen sample's state is never touched again, and
its solution is the image ``f(x)`` of its last iterate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from ._result import (
    STOP_MODES,
    FixedPointResult,
    OnFailure,
    StopMode,
    check_policy,
    enforce_policy,
)
from ._state import State, StateFn, StateSpec, batch_norm, check_state


class Step(Protocol):
    """Proposes the next flat iterate of every sample from ``x``, ``F(x)`` and ``F(x) - x``.

    ``residual_buffer(k)`` gives ``None`` or where the loop should write ``F(x) - x`` in
    iteration ``k`` (a solver that stores residuals avoids a copy that way).
    """

    def residual_buffer(self, k: int) -> Tensor | None: ...

    def __call__(self, k: int, x: Tensor, fx: Tensor, g: Tensor) -> Tensor: ...


def check_common(tol: object, max_iter: object, stop_mode: object, on_failure: object) -> None:
    """Validate the arguments every solver takes."""
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (0 <= tol < math.inf):
        raise ValueError(
            f"tol must be a finite number >= 0, got {tol!r}; "
            "for example tol=1e-4 (relative) or tol=1e-6 with stop_mode='abs'."
        )
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}.")
    if stop_mode not in STOP_MODES:
        raise ValueError(
            f"stop_mode must be 'rel' (||f(z) - z|| / ||f(z)||) or 'abs' (||f(z) - z||), "
            f"got {stop_mode!r}."
        )
    check_policy(on_failure)


def check_fraction(value: object, name: str, upper: float = 1.0) -> float:
    """Validate a damping factor in ``(0, upper]``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= upper:
        raise ValueError(
            f"{name} must be a number in (0, {upper:g}], got {value!r}; 1 means no damping."
        )
    return float(value)


def flat_map(f: StateFn, spec: StateSpec, what: str) -> Callable[[Tensor], Tensor]:
    """``F(x) = flatten(f(unflatten(x)))``; checks the structure of ``f``'s first output."""
    checked = False

    def apply(x: Tensor) -> Tensor:
        nonlocal checked
        out = f(spec.unflatten(x))
        if not checked:
            spec.check_output(out, what)
            checked = True
        return spec.flatten(out)

    return apply


def iterate(
    f: StateFn,
    z0: State,
    make_step: Callable[[Tensor], Step],
    *,
    complex_view: bool,
    tol: float,
    max_iter: int,
    stop_mode: StopMode,
    on_failure: OnFailure,
    method: str,
) -> FixedPointResult:
    """Run a solver's step until every sample meets ``tol`` or ``max_iter`` evaluations pass.

    Parameters
    ----------
    f : callable
        The map, ``State -> State``.
    z0 : State
        Initial iterate.
    make_step : callable
        Builds the solver's step from the flat initial iterate (for buffers of the right size).
    complex_view : bool
        Whether the step wants complex flat iterates when the state is complex (else real views).
    tol, max_iter, stop_mode, on_failure, method
        As in :func:`fixedpoint.solve`.
    """
    check_common(tol, max_iter, stop_mode, on_failure)
    check_state(z0, "z0")
    spec = StateSpec(z0, complex_view=complex_view)
    with torch.no_grad():
        x = spec.flatten(z0).detach()
        if not bool(torch.isfinite(x).all()):
            raise ValueError(
                "z0 contains non-finite values (NaN or inf); start from a finite state, "
                "for example torch.zeros_like(z0)."
            )
        result = _loop(
            flat_map(f, spec, "f"), x, make_step, spec, tol, max_iter, stop_mode == "rel"
        )
    enforce_policy(
        result,
        what=f"fixed-point solve (method={method!r})",
        tol=tol,
        max_iter=max_iter,
        stop_mode=stop_mode,
        on_failure=on_failure,
    )
    return result


def _loop(
    F: Callable[[Tensor], Tensor],
    x: Tensor,
    make_step: Callable[[Tensor], Step],
    spec: StateSpec,
    tol: float,
    max_iter: int,
    relative: bool,
) -> FixedPointResult:
    batch = x.shape[0]
    step = make_step(x)
    tiny = torch.finfo(x.real.dtype if x.is_complex() else x.dtype).tiny
    # bookkeeping happens only when samples stop; residuals and iteration counts are read from
    # the trace at the end
    active = torch.ones(batch, dtype=torch.bool, device=x.device)
    n_active = batch
    stopped_at = torch.full((batch,), max_iter, dtype=torch.int64, device=x.device)
    trace: list[Tensor] = []
    fx = x
    for k in range(1, max_iter + 1):
        fx = F(x)
        out = step.residual_buffer(k)
        g = fx - x if out is None else torch.sub(fx, x, out=out)
        r = batch_norm(g)
        if relative:
            r = r / batch_norm(fx).clamp_min(tiny)
        trace.append(r)
        # NaN and inf count as stopped (failed); nan_to_num maps both to 0
        stop = torch.nan_to_num(r, nan=0.0, posinf=0.0) <= tol
        if n_active < batch:
            stop &= active
        n_stop = int(stop.sum())
        if k == max_iter or n_stop == n_active:
            break
        x_next = step(k, x, fx, g)
        if n_stop:
            stopped_at.masked_fill_(stop, k)
            # frozen samples keep their solution f(x) from now on
            x = torch.where(stop.unsqueeze(1), fx, x)
            active = active & ~stop
            n_active -= n_stop
        x = x_next if n_active == batch else torch.where(active.unsqueeze(1), x_next, x)
    last = len(trace)
    stopped_at.clamp_(max=last)
    history = torch.stack(trace)
    residuals = history.gather(0, (stopped_at - 1).unsqueeze(0)).squeeze(0)
    steps = torch.arange(1, last + 1, device=x.device).unsqueeze(1)
    history = history.masked_fill(steps > stopped_at, math.nan)
    z = fx if n_active == batch else torch.where(active.unsqueeze(1), fx, x)
    converged = (residuals <= tol) & torch.isfinite(residuals)
    return FixedPointResult(
        z=spec.unflatten(z),
        iterations=stopped_at,
        residuals=residuals,
        converged=converged,
        trace=history,
    )
