"""The result of a fixed-point solve and the policy for solves that fail."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal, TypeAlias

import torch
from torch import Tensor

from ._state import State

OnFailure: TypeAlias = Literal["warn", "raise", "ignore"]
StopMode: TypeAlias = Literal["rel", "abs"]

ON_FAILURE = ("warn", "raise", "ignore")
STOP_MODES = ("rel", "abs")


class ConvergenceWarning(RuntimeWarning):
    """A fixed-point solve stopped without reaching its tolerance (``on_failure="warn"``)."""


class ConvergenceError(RuntimeError):
    """A fixed-point solve failed and ``on_failure="raise"`` was asked for.

    Attributes
    ----------
    result : FixedPointResult
        What the solver reached, for inspection.
    """

    def __init__(self, message: str, result: FixedPointResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True, eq=False)
class FixedPointResult:
    """What a fixed-point solver returns.

    Every per-sample field is indexed by the batch dimension (dimension 0 of the state).

    Attributes
    ----------
    z : Tensor or tuple of Tensor
        The solution, structured like ``z0``. For sample ``b`` it is ``f(x_b)``, the image of the
        last iterate ``x_b`` that the solver evaluated; detached (solvers keep no graph).
    iterations : Tensor, shape (batch,), int64
        Evaluations of ``f`` on which sample ``b``'s stopping decision was based (its iterate was
        frozen after that evaluation).
    residuals : Tensor, shape (batch,), real
        ``||f(x_b) - x_b||`` (``stop_mode="abs"``) or ``||f(x_b) - x_b|| / ||f(x_b)||``
        (``stop_mode="rel"``) of that last iterate, with the Euclidean norm over all entries of
        the sample (all components of a tuple state; ``|.|`` of complex entries). For a map with
        Lipschitz constant ``L < 1`` the returned ``z`` is within ``L / (1 - L)`` times the
        absolute residual of the true fixed point.
    converged : Tensor, shape (batch,), bool
        ``residuals <= tol`` and finite.
    trace : Tensor, shape (iterations.max(), batch), real, or None
        The residual of every sample at every evaluation; NaN after the sample stopped. The
        built-in solvers always record it; a registered solver may leave it out.
    """

    z: State
    iterations: Tensor
    residuals: Tensor
    converged: Tensor
    trace: Tensor | None = None

    @property
    def all_converged(self) -> bool:
        """Whether every sample converged (a host synchronisation on GPU)."""
        return bool(self.converged.all())


def _fmt(values: Tensor, limit: int = 6) -> str:
    items = [f"{v:.3g}" for v in values[:limit].tolist()]
    if values.numel() > limit:
        items.append("...")
    return "[" + ", ".join(items) + "]"


def check_policy(on_failure: object) -> None:
    """Validate an ``on_failure`` argument."""
    if on_failure not in ON_FAILURE:
        raise ValueError(
            f"on_failure must be one of {', '.join(map(repr, ON_FAILURE))}, got {on_failure!r}."
        )


def enforce_policy(
    result: FixedPointResult,
    *,
    what: str,
    tol: float,
    max_iter: int,
    stop_mode: str,
    on_failure: OnFailure,
) -> None:
    """Warn or raise (by ``on_failure``) when some sample did not converge or became non-finite."""
    if on_failure == "ignore" or result.all_converged:
        return
    failed = ~result.converged
    nonfinite = failed & ~torch.isfinite(result.residuals)
    unconverged = failed & ~nonfinite
    batch = result.converged.numel()
    parts = []
    if bool(nonfinite.any()):
        idx = nonfinite.nonzero().flatten()
        parts.append(
            f"produced non-finite values (NaN or inf) for {idx.numel()} of {batch} samples "
            f"(indices {_fmt(idx)}, at iterations {_fmt(result.iterations[idx])}); check the map "
            "for overflow or a division by zero, or damp it (relaxation / beta < 1)"
        )
    if bool(unconverged.any()):
        idx = unconverged.nonzero().flatten()
        kind = "relative" if stop_mode == "rel" else "absolute"
        parts.append(
            f"did not converge for {idx.numel()} of {batch} samples within max_iter={max_iter} "
            f"(indices {_fmt(idx)}): {kind} residuals {_fmt(result.residuals[idx])} > tol={tol:g}; "
            "raise max_iter, loosen tol, or make the map a contraction (its Lipschitz constant "
            "must be < 1 for Banach iteration to converge)"
        )
    message = f"{what} " + "; it also ".join(parts) + "."
    if on_failure == "raise":
        raise ConvergenceError(message, result)
    warnings.warn(message, ConvergenceWarning, stacklevel=3)
