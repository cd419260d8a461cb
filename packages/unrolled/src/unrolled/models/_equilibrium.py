r"""Equilibrium solves inside a model, differentiated implicitly or through their iterations.

LUSER's proximal blocks and DEQ4IP's whole iteration are fixed points :math:`z^* = f(z^*,
\theta)`. :func:`equilibrium` returns :math:`f(z^*, \theta)` and differentiates it in one of
four modes, which the models set from the memory strategy
(:meth:`~unrolled.Stage.set_equilibrium_backward`):

=================  ==========================================================  ==================
mode               gradient                                                    stored for backward
=================  ==========================================================  ==================
``implicit``       :math:`u = v + J^H u`, :math:`J = \partial f / \partial z`  one evaluation of
                   at :math:`z^*`, solved by the same fixed-point method       :math:`f` (constant
                   (:func:`fixedpoint.implicit`, the DEQ backward)             in the iterations)
``jacobian_free``  :math:`u = v` (Fung et al.): biased                         one evaluation
``phantom``        :math:`k` damped Neumann terms (Geng et al.): biased         one evaluation
``unrolled``       plain autograd through the solver's iterations: the         every iteration
                   backprop reference of the others
=================  ==========================================================  ==================

Every mode is one call of :func:`fixedpoint.implicit`; ``unrolled`` is its ``backward="unrolled"``
(fixedpoint's ``solve(..., differentiable=True)``: the same method, tolerance, per-sample stopping
and freezing and read-out, the image :math:`f(x)` of the last iterate, run out of place so that
autograd records it, Anderson's mixing coefficients included). Both modes then
take the same last step :math:`f(z^*, \theta)`, so once the solve has converged their outputs
agree to the tolerance and their gradients agree with each other: measured in float64 at
``tol=1e-12``, a relative difference of about 1e-11 (the package tests require 1e-6).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import Tensor, nn

import fixedpoint

from .._base import Stage

__all__ = ["EQUILIBRIUM_MODES", "EquilibriumSolver", "as_solver", "equilibrium"]

EQUILIBRIUM_MODES = ("implicit", "jacobian_free", "phantom", "unrolled")
_OPTIONS = {"anderson": ("m", "lam", "beta", "coefficients"), "banach": ("relaxation",)}


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class EquilibriumSolver:
    r"""How an equilibrium is solved and differentiated (forward and backward solves).

    Parameters
    ----------
    method:
        A solver of :mod:`fixedpoint`'s registry (:func:`fixedpoint.available_solvers`):
        ``"anderson"`` (the papers'), ``"banach"``, ``"broyden"``, or one added with
        :func:`fixedpoint.register_solver`. The ``"unrolled"`` mode (every strategy but
        ``"implicit"``) differentiates the iterations of ``"anderson"`` and ``"banach"`` only.
    tol:
        Per-sample tolerance of the forward solve.
    max_iter:
        Evaluations of the map per forward solve.
    stop_mode:
        ``"rel"``: stop when :math:`\|f(z) - z\| \le tol \|f(z)\|`; ``"abs"``: when
        :math:`\|f(z) - z\| \le tol`.
    on_failure:
        A sample that did not converge (or became non-finite): ``"warn"``
        (:class:`fixedpoint.ConvergenceWarning`), ``"raise"`` (:class:`fixedpoint.ConvergenceError`)
        or ``"ignore"`` (read it from the diagnostics).
    options:
        The method's own options: Anderson ``m`` (history, 5), ``lam`` (1e-8), ``beta`` (1.0),
        ``coefficients``; Banach ``relaxation`` (1.0).
    backward_tol, backward_max_iter:
        The implicit backward solve of :math:`u = v + J^H u` (default: those of the forward).
    phantom_steps, phantom_damping:
        ``backward="phantom"``: the number of terms :math:`k` and the damping :math:`\lambda`.
    """

    method: str = "anderson"
    tol: float = 1e-4
    max_iter: int = 50
    stop_mode: Literal["rel", "abs"] = "rel"
    on_failure: Literal["warn", "raise", "ignore"] = "warn"
    options: dict[str, Any] = field(default_factory=dict)
    backward_tol: float | None = None
    backward_max_iter: int | None = None
    phantom_steps: int = 5
    phantom_damping: float = 0.5

    def __post_init__(self) -> None:
        if not isinstance(self.method, str):
            raise TypeError(f"method must be a solver name (str), got {type(self.method).__name__}")
        fixedpoint.get_solver(self.method)  # unknown names: ValueError listing the valid ones
        for name in ("tol", "backward_tol"):
            value = getattr(self, name)
            if value is None and name == "backward_tol":
                continue
            if not _is_number(value) or not 0 <= value < math.inf:
                raise ValueError(
                    f"{name} must be a finite number >= 0, got {value!r} (e.g. 1e-4, relative)"
                )
        for name in ("max_iter", "backward_max_iter", "phantom_steps"):
            value = getattr(self, name)
            if value is None and name == "backward_max_iter":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.stop_mode not in ("rel", "abs"):
            raise ValueError(f"stop_mode must be 'rel' or 'abs', got {self.stop_mode!r}")
        if self.on_failure not in ("warn", "raise", "ignore"):
            raise ValueError(
                f"on_failure must be 'warn', 'raise' or 'ignore', got {self.on_failure!r}"
            )
        if not _is_number(self.phantom_damping) or not 0 < self.phantom_damping <= 1:
            raise ValueError(f"phantom_damping must be in (0, 1], got {self.phantom_damping!r}")
        if not isinstance(self.options, dict):
            raise TypeError(
                f"options must be a dict of the method's options, got {type(self.options).__name__}"
            )
        valid = _OPTIONS.get(self.method)
        if valid is not None:
            unknown = sorted(set(self.options) - set(valid))
            if unknown:
                raise ValueError(
                    f"unknown option(s) {', '.join(map(repr, unknown))} for method "
                    f"{self.method!r}; its options are: {', '.join(valid)}"
                )
            for key, value in self.options.items():
                _check_option(key, value)

    def describe(self) -> str:
        """Return a short label (``"anderson(tol=0.0001, max_iter=50)"``)."""
        return f"{self.method}(tol={self.tol:g}, max_iter={self.max_iter})"


def _check_option(key: str, value: object) -> None:
    if key == "m" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(
            f"option m (Anderson's history size) must be an integer >= 1, got {value!r}"
        )
    if key == "lam" and (not _is_number(value) or not 0 <= value < math.inf):  # type: ignore[operator]
        raise ValueError(f"option lam (Anderson's regularisation) must be >= 0, got {value!r}")
    if key in ("beta", "relaxation") and (not _is_number(value) or not 0 < value <= 1):  # type: ignore[operator]
        raise ValueError(f"option {key} must be in (0, 1], got {value!r}")
    if key == "coefficients" and value not in ("auto", "complex", "real"):
        raise ValueError(f"option coefficients must be 'auto', 'complex' or 'real', got {value!r}")


def as_solver(solver: EquilibriumSolver | dict[str, Any] | None) -> EquilibriumSolver:
    """Return an :class:`EquilibriumSolver` from one, a dict of its fields, or ``None``."""
    if solver is None:
        return EquilibriumSolver()
    if isinstance(solver, EquilibriumSolver):
        return solver
    if isinstance(solver, dict):
        try:
            return EquilibriumSolver(**solver)
        except TypeError as err:
            if "unexpected keyword" not in str(err):
                raise
            fields = ", ".join(EquilibriumSolver.__dataclass_fields__)
            raise ValueError(
                f"invalid solver settings {sorted(solver)}: {err}; valid keys: {fields}"
            ) from None
    raise TypeError(
        f"solver must be an unrolled.EquilibriumSolver, a dict of its fields or None, got "
        f"{type(solver).__name__}"
    )


def equilibrium(
    f: Callable[..., Tensor],
    z0: Tensor,
    *params: Tensor,
    mode: str,
    solver: EquilibriumSolver,
    diagnostics: fixedpoint.ImplicitDiagnostics | None = None,
) -> Tensor:
    r""":math:`f(z^*, *params)` with :math:`z^* = f(z^*, *params)` solved from ``z0``.

    Parameters
    ----------
    f:
        The map, ``f(z, *params) -> z`` on real tensors ``(batch, ...)``; deterministic (it is
        evaluated again by the implicit backward pass and by checkpoint recomputation).
    z0:
        The initial iterate. ``"unrolled"`` differentiates through it; the implicit modes do not
        (the fixed point does not depend on it).
    *params:
        Tensors passed to ``f`` (they, the parameters ``f`` reads and the tensors it closes over
        all receive gradients).
    mode:
        One of :data:`EQUILIBRIUM_MODES`.
    solver:
        The settings.
    diagnostics:
        Filled with the forward result (and, for ``"implicit"``, the backward one when the
        backward pass runs).
    """
    if mode not in EQUILIBRIUM_MODES:
        raise ValueError(
            f"unknown equilibrium mode {mode!r}; valid modes: {', '.join(EQUILIBRIUM_MODES)}"
        )
    out = fixedpoint.implicit(
        f,
        z0,
        *params,
        backward=mode,  # type: ignore[arg-type]  # "unrolled": autograd through the iterations
        method=solver.method,
        tol=solver.tol,
        max_iter=solver.max_iter,
        stop_mode=solver.stop_mode,
        on_failure=solver.on_failure,
        backward_tol=solver.backward_tol,
        backward_max_iter=solver.backward_max_iter,
        phantom_steps=solver.phantom_steps,
        phantom_damping=solver.phantom_damping,
        diagnostics=diagnostics,
        **solver.options,
    )
    return out  # type: ignore[return-value]  # a tensor state in, a tensor out


class EquilibriumStage(Stage):
    """What LUSER's and DEQ's stages share.

    A gradient step, a prox, the solver settings, the diagnostics of the last solve and the backward
    mode (set by the model's strategy).
    """

    def __init__(self, step: nn.Module, prox: nn.Module, solver: EquilibriumSolver):
        super().__init__()
        self.step = step
        self.prox = prox
        self.solver = solver
        self.backward_mode = "implicit"
        self.diagnostics: fixedpoint.ImplicitDiagnostics | None = None

    def set_equilibrium_backward(self, mode: str) -> None:
        if mode not in EQUILIBRIUM_MODES:
            raise ValueError(
                f"unknown equilibrium backward {mode!r}; valid: {', '.join(EQUILIBRIUM_MODES)}"
            )
        self.backward_mode = mode
