"""The iteration loop shared by every solver: per-sample residuals, stopping and freezing.

A solver supplies a *step*: given the current flat iterate ``x`` (``(batch, n)``), its image
``fx = F(x)`` and the residual ``g = fx - x``, it proposes the next iterate for the whole batch.
The loop evaluates the map on the whole batch (a map may close over batch-shaped tensors, so it
cannot be called on a subset), measures every sample's residual, and freezes each sample as soon
as it meets the tolerance (or becomes non-finite): a frozen sample's state is never touched
again, and its solution is the image ``f(x)`` of its last iterate.

The host learns whether every sample has stopped only every ``check_every`` iterations (one
synchronisation); in between, stopping and freezing happen on the device with masks, so a sample
that stops between two checks is frozen at exactly the iterate where it met the tolerance. The
only difference from checking every iteration is that the loop may evaluate ``f`` up to
``check_every - 1`` more times after the last sample stopped; those evaluations change nothing
that is returned (every sample is frozen and samples do not interact), so the result is the same
to the bit.

Two modes share the loop. The default runs under :func:`torch.no_grad` and lets solvers update
their buffers in place; ``differentiable=True`` runs under the caller's grad mode with
out-of-place steps, so that autograd records every iteration (memory grows with the iterations).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from ._result import FixedPointResult, OnFailure, StopMode
from ._state import State, StateFn, StateSpec, batch_norm, check_state
from ._validate import boolean, positive_int, solver_settings


class Step(Protocol):
    """Proposes the next flat iterate of every sample from ``x``, ``F(x)`` and ``F(x) - x``.

    ``residual_buffer(k)`` gives ``None`` or where the loop should write ``F(x) - x`` in
    iteration ``k`` (a solver that stores residuals avoids a copy that way; never in the
    differentiable mode).
    """

    def residual_buffer(self, k: int) -> Tensor | None: ...

    def __call__(self, k: int, x: Tensor, fx: Tensor, g: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class Settings:
    """The validated settings every solver shares."""

    tol: float
    max_iter: int
    stop_mode: StopMode
    on_failure: OnFailure
    check_every: int = 1
    differentiable: bool = False


def settings(
    tol: object,
    max_iter: object,
    stop_mode: object,
    on_failure: object,
    check_every: object = 1,
    differentiable: object = False,
) -> Settings:
    """Validate the shared settings (one message per bad value) and bundle them."""
    solver_settings(tol, max_iter, stop_mode, on_failure)
    positive_int("check_every", check_every, hint="1 checks for convergence every iteration")
    boolean("differentiable", differentiable)
    return Settings(
        float(tol),  # type: ignore[arg-type]
        max_iter,  # type: ignore[arg-type]
        stop_mode,  # type: ignore[arg-type]
        on_failure,  # type: ignore[arg-type]
        check_every,  # type: ignore[arg-type]
        differentiable,  # type: ignore[arg-type]
    )


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
    make_step: Callable[[Tensor, bool], Step],
    *,
    complex_view: bool,
    config: Settings,
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
        ``make_step(x0, differentiable)`` builds the solver's step from the flat initial iterate
        (for buffers of the right size).
    complex_view : bool
        Whether the step wants complex flat iterates when the state is complex (else real views).
    config : Settings
        The shared settings (see :func:`settings`).
    method : str
        The solver's name, for messages.

    Returns
    -------
    FixedPointResult
        The result, after the failure policy ran.
    """
    check_state(z0, "z0")
    spec = StateSpec(z0, complex_view=complex_view)
    grad_mode = contextlib.nullcontext() if config.differentiable else torch.no_grad()
    with grad_mode:
        x = spec.flatten(z0)
        if not config.differentiable:
            x = x.detach()
        if not bool(torch.isfinite(x.detach()).all()):
            raise ValueError(
                "z0 contains non-finite values (NaN or inf); start from a finite state, "
                "for example torch.zeros_like(z0)."
            )
        z, iterations, trace = _loop(
            flat_map(f, spec, "f"), x, make_step(x, config.differentiable), config
        )
    result = _result(spec.unflatten(z), iterations, trace, config.tol)
    label = f"method={method!r}, differentiable" if config.differentiable else f"method={method!r}"
    return result.check(
        config.on_failure,
        tol=config.tol,
        max_iter=config.max_iter,
        stop_mode=config.stop_mode,
        what=f"fixed-point solve ({label})",
        stacklevel=2,
    )


def _residual(g: Tensor, fx: Tensor, relative: bool, tiny: float) -> Tensor:
    r = batch_norm(g)
    return r / batch_norm(fx).clamp_min(tiny) if relative else r


def _loop(
    F: Callable[[Tensor], Tensor], x: Tensor, step: Step, config: Settings
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Iterate; return the flat solution, each sample's stopping iteration and the trace."""
    batch = x.shape[0]
    relative, every, tol = config.stop_mode == "rel", config.check_every, config.tol
    tiny = torch.finfo(x.real.dtype if x.is_complex() else x.dtype).tiny
    active = torch.ones(batch, dtype=torch.bool, device=x.device)
    # the host's view: n_active is exact while `known`; it is not after an unchecked iteration
    n_active, known = batch, True
    stopped_at = torch.full((batch,), config.max_iter, dtype=torch.int64, device=x.device)
    trace: list[Tensor] = []
    fx = x
    for k in range(1, config.max_iter + 1):
        fx = F(x)
        out = step.residual_buffer(k)
        g = fx - x if out is None else torch.sub(fx, x, out=out)
        if config.differentiable:
            r = _residual(g.detach(), fx.detach(), relative, tiny)
        else:
            r = _residual(g, fx, relative, tiny)
        trace.append(r)
        # NaN and inf count as stopped (failed); nan_to_num maps both to 0
        stop = torch.nan_to_num(r, nan=0.0, posinf=0.0) <= tol
        if n_active < batch or not known:
            stop &= active
        if k == config.max_iter:
            break
        if k % every:  # no host synchronisation: stop and freeze on the device
            known = False
            x_next = step(k, x, fx, g)
            stopped_at.masked_fill_(stop, k)
            x = torch.where(stop.unsqueeze(1), fx, x)
            active = active & ~stop  # out of place: where() saved the old mask
            x = torch.where(active.unsqueeze(1), x_next, x)
            continue
        if not known:
            n_active, known = int(active.sum()), True
        n_stop = int(stop.sum())
        if n_stop == n_active:
            break
        x_next = step(k, x, fx, g)
        if n_stop:
            stopped_at.masked_fill_(stop, k)
            # frozen samples keep their solution f(x) from now on
            x = torch.where(stop.unsqueeze(1), fx, x)
            active = active & ~stop  # out of place: where() saved the old mask
            n_active -= n_stop
        x = x_next if n_active == batch else torch.where(active.unsqueeze(1), x_next, x)
    if every > 1 and batch:  # the last sample may have stopped before the last evaluation
        del trace[int(stopped_at.clamp(max=len(trace)).max()) :]
    z = fx if known and n_active == batch else torch.where(active.unsqueeze(1), fx, x)
    return z, stopped_at.clamp_(max=len(trace)), trace


def _result(x: State, stopped_at: Tensor, trace: list[Tensor], tol: float) -> FixedPointResult:
    history = torch.stack(trace)
    residuals = history.gather(0, (stopped_at - 1).unsqueeze(0)).squeeze(0)
    steps = torch.arange(1, len(trace) + 1, device=history.device).unsqueeze(1)
    history = history.masked_fill(steps > stopped_at, torch.nan)
    converged = (residuals <= tol) & torch.isfinite(residuals)
    return FixedPointResult(
        x=x, iterations=stopped_at, residuals=residuals, converged=converged, trace=history
    )
