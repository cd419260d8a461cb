"""The result of a fixed-point solve and the policy for solves that fail."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal, TypeAlias

import torch
from torch import Tensor

from ._state import State
from ._validate import ON_FAILURE, one_of

OnFailure: TypeAlias = Literal["warn", "raise", "ignore"]
StopMode: TypeAlias = Literal["rel", "abs"]


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


_MISSING: object = object()


@dataclass(frozen=True, eq=False, init=False)
class FixedPointResult:
    """What a fixed-point solver returns.

    Every per-sample field is indexed by the batch dimension (dimension 0 of the state). The
    fields follow the convention of every memroll solver (``physops.cg`` too): ``x``,
    ``iterations``, ``residuals``, ``converged``; ``trace`` is fixedpoint's own.

    Attributes
    ----------
    x : Tensor or tuple of Tensor
        The solution, structured like ``z0``. For sample ``b`` it is ``f(x_b)``, the image of the
        last iterate ``x_b`` that the solver evaluated. Detached (solvers keep no graph), except
        from :func:`fixedpoint.solve` with ``differentiable=True``.
    iterations : Tensor, shape (batch,), int64
        Evaluations of ``f`` on which sample ``b``'s stopping decision was based (its iterate was
        frozen after that evaluation).
    residuals : Tensor, shape (batch,), real
        ``||f(x_b) - x_b||`` (``stop_mode="abs"``) or ``||f(x_b) - x_b|| / ||f(x_b)||``
        (``stop_mode="rel"``) of that last iterate, with the Euclidean norm over all entries of
        the sample (all components of a tuple state; ``|.|`` of complex entries). For a map with
        Lipschitz constant ``L < 1`` the returned ``x`` is within ``L / (1 - L)`` times the
        absolute residual of the true fixed point.
    converged : Tensor, shape (batch,), bool
        ``residuals <= tol`` and finite.
    trace : Tensor, shape (iterations.max(), batch), real, or None
        The residual of every sample at every evaluation; NaN after the sample stopped. The
        built-in solvers always record it; a registered solver may leave it out.

    Notes
    -----
    ``z`` (the name of ``x`` in 0.1, as attribute and as constructor keyword) still works and
    emits a :class:`DeprecationWarning`; it goes away in 0.3.
    """

    x: State
    iterations: Tensor
    residuals: Tensor
    converged: Tensor
    trace: Tensor | None

    def __init__(
        self,
        x: State | None = None,
        iterations: Tensor | None = None,
        residuals: Tensor | None = None,
        converged: Tensor | None = None,
        trace: Tensor | None = None,
        *,
        z: object = _MISSING,
    ) -> None:
        if z is not _MISSING:
            warnings.warn(
                "FixedPointResult(z=...) is deprecated since fixedpoint 0.2 and will be removed "
                "in 0.3; pass x=... (the solution's field is now named x).",
                DeprecationWarning,
                stacklevel=2,
            )
            if x is not None:
                raise TypeError("FixedPointResult got both x and its deprecated alias z; pass x.")
            x = z  # type: ignore[assignment]
        missing = [
            name
            for name, value in (
                ("x", x),
                ("iterations", iterations),
                ("residuals", residuals),
                ("converged", converged),
            )
            if value is None
        ]
        if missing:
            raise TypeError(f"FixedPointResult is missing {', '.join(missing)}.")
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "iterations", iterations)
        object.__setattr__(self, "residuals", residuals)
        object.__setattr__(self, "converged", converged)
        object.__setattr__(self, "trace", trace)

    @property
    def z(self) -> State:
        """Deprecated alias of :attr:`x` (removed in 0.3)."""
        warnings.warn(
            "FixedPointResult.z is deprecated since fixedpoint 0.2 and will be removed in 0.3; "
            "use FixedPointResult.x.",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.x

    @property
    def all_converged(self) -> bool:
        """Whether every sample converged (a host synchronisation on GPU)."""
        return bool(self.converged.all())

    def check(
        self,
        on_failure: OnFailure,
        *,
        tol: float,
        max_iter: int,
        stop_mode: StopMode = "rel",
        what: str = "fixed-point solve",
        hint: str | None = None,
        stacklevel: int = 2,
    ) -> FixedPointResult:
        """Apply the failure policy: warn or raise when a sample failed; return ``self``.

        A sample failed when it did not converge or its residual is not finite (NaN or inf). The
        message names the samples, their iterations or residuals and what to change; every
        fixedpoint solver uses this method, and callers that run their own iterations should too.

        Parameters
        ----------
        on_failure : {"warn", "raise", "ignore"}
            :class:`ConvergenceWarning`, :class:`ConvergenceError` (with ``.result = self``), or
            nothing.
        tol, max_iter, stop_mode
            The settings the solve ran with (quoted in the message).
        what : str
            What failed, the message's first words: ``"fixed-point solve (method='anderson')"``.
        hint : str, optional
            A remedy specific to the caller, appended to the message.
        stacklevel : int
            As in ``warnings.warn``, counted from the caller of this method.

        Returns
        -------
        FixedPointResult
            ``self``, unchanged.

        Raises
        ------
        ConvergenceError
            With ``on_failure="raise"``, when some sample failed.

        Examples
        --------
        >>> import torch, fixedpoint
        >>> result = fixedpoint.solve(lambda z: z + 1, torch.zeros(1, 2), max_iter=3,
        ...                           on_failure="ignore")
        >>> result.check("raise", tol=1e-4, max_iter=3)
        Traceback (most recent call last):
        ...
        fixedpoint._result.ConvergenceError: fixed-point solve did not converge for 1 of 1 ...
        """
        one_of("on_failure", on_failure, ON_FAILURE)
        if on_failure == "ignore" or self.all_converged:
            return self
        message = _failure_message(self, what, tol, max_iter, stop_mode)
        if hint:
            message = message[:-1] + f"; {hint}."
        if on_failure == "raise":
            raise ConvergenceError(message, self)
        warnings.warn(message, ConvergenceWarning, stacklevel=stacklevel + 1)
        return self


def _fmt(values: Tensor, limit: int = 6) -> str:
    items = [f"{v:.3g}" for v in values[:limit].tolist()]
    if values.numel() > limit:
        items.append("...")
    return "[" + ", ".join(items) + "]"


def _failure_message(
    result: FixedPointResult, what: str, tol: float, max_iter: int, stop_mode: str
) -> str:
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
    return f"{what} " + "; it also ".join(parts) + "."
