"""The solver registry and :func:`solve`, the entry point that picks a solver by name."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeAlias

from ._anderson import anderson
from ._banach import banach
from ._broyden import broyden
from ._precision import compiled_eagerly, in_full_precision
from ._result import FixedPointResult, OnFailure, StopMode
from ._state import State, StateFn
from ._validate import boolean

Solver: TypeAlias = Callable[..., FixedPointResult]
"""A registered solver: ``solver(f, z0, *, tol, max_iter, stop_mode, on_failure, **options)``."""


_COMMON = ("tol", "max_iter", "stop_mode", "on_failure", "differentiable")
_BUILTIN: dict[str, Solver] = {"anderson": anderson, "banach": banach, "broyden": broyden}
_SOLVERS: dict[str, Solver] = dict(_BUILTIN)


def available_solvers() -> tuple[str, ...]:
    """Return the names :func:`get_solver` and :func:`solve` accept, sorted."""
    return tuple(sorted(_SOLVERS))


def get_solver(name: str) -> Solver:
    """Return the solver registered under ``name``.

    Raises
    ------
    ValueError
        For an unknown name; the message lists the valid ones.
    """
    try:
        return _SOLVERS[name]
    except (KeyError, TypeError):
        valid = ", ".join(map(repr, available_solvers()))
        raise ValueError(
            f"unknown fixed-point method {name!r}; valid names: {valid} "
            "(add your own with fixedpoint.register_solver)."
        ) from None


def register_solver(name: str, solver: Solver, *, overwrite: bool = False) -> None:
    """Register ``solver`` under ``name``, for :func:`solve`, :func:`implicit`, :func:`invert_step`.

    ``solver(f, z0, *, tol, max_iter, stop_mode, on_failure, **options)`` must return a
    :class:`FixedPointResult` and keep no autograd graph.

    Raises
    ------
    ValueError
        When ``name`` is taken and ``overwrite`` is false.
    TypeError
        When ``name`` is not a string or ``solver`` is not callable.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"a solver name must be a non-empty string, got {name!r}.")
    if not callable(solver):
        raise TypeError(f"solver must be callable, got {type(solver).__name__}.")
    if name in _SOLVERS and not boolean("overwrite", overwrite):
        raise ValueError(
            f"a solver named {name!r} is already registered; pass overwrite=True to replace it."
        )
    _SOLVERS[name] = solver


def unregister_solver(name: str) -> None:
    """Remove a solver added with :func:`register_solver` (the built-in ones stay)."""
    if name in _BUILTIN:
        raise ValueError(f"the built-in solver {name!r} cannot be removed.")
    get_solver(name)
    del _SOLVERS[name]


def _keywords(solver: Solver) -> dict[str, inspect.Parameter] | None:
    """Return the parameters of ``solver``; ``None`` when it takes any keyword (or has none)."""
    try:
        params = inspect.signature(solver).parameters
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return dict(params)


def differentiable_solvers() -> str:
    """Name the registered solvers that take ``differentiable=True``: ``"'a' or 'b'"``."""
    names = [repr(n) for n in available_solvers() if "differentiable" in _keywords_of(n)]
    return " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


def _keywords_of(name: str) -> dict[str, inspect.Parameter]:
    return _keywords(_SOLVERS[name]) or {}


def supports_differentiable(name: str) -> bool:
    """Whether the solver registered as ``name`` takes ``differentiable=True`` (autograd mode)."""
    params = _keywords(get_solver(name))
    return params is None or "differentiable" in params


def check_options(name: str, solver: Solver, options: dict[str, Any]) -> None:
    """Raise a helpful ``TypeError`` when ``options`` has keywords ``solver`` does not take."""
    params = _keywords(solver)
    if params is None:
        return
    valid = [
        p
        for p, spec in params.items()
        if spec.kind is inspect.Parameter.KEYWORD_ONLY and p not in _COMMON
    ]
    unknown = [k for k in options if k not in valid]
    if unknown:
        listed = ", ".join(valid) if valid else "none"
        raise TypeError(
            f"method {name!r} got unknown option(s) {', '.join(map(repr, unknown))}; "
            f"its options are: {listed}."
        )


# torch.compile runs the solvers eagerly (a graph break): they loop on a data-dependent test
@compiled_eagerly
@in_full_precision
def solve(
    f: StateFn,
    z0: State,
    method: str = "anderson",
    *,
    tol: float = 1e-4,
    max_iter: int = 50,
    stop_mode: StopMode = "rel",
    on_failure: OnFailure = "warn",
    differentiable: bool = False,
    **options: Any,
) -> FixedPointResult:
    r"""Find ``z`` with ``z = f(z)``, batched, with per-sample stopping.

    By default the solve keeps no autograd graph (use :func:`implicit` for gradients whose memory
    does not grow with the iterations); ``differentiable=True`` records every iteration instead.

    Parameters
    ----------
    f : callable
        The map ``State -> State``; always called on the whole batch (it may close over
        batch-shaped tensors), under :func:`torch.no_grad`. It must return new tensors and leave
        its input unchanged (no in-place operations on it).
    z0 : Tensor or tuple of Tensor
        Initial iterate. Every tensor is ``(batch, *shape)``, floating or complex, on any device.
    method : str
        A registered solver: ``"anderson"`` (default), ``"banach"`` or ``"broyden"`` (see
        :func:`available_solvers`).
    tol : float
        Per-sample tolerance, relative or absolute by ``stop_mode``.
    max_iter : int
        Maximum number of evaluations of ``f``.
    stop_mode : {"rel", "abs"}
        ``"rel"``: sample ``b`` stops when :math:`\|f(x_b) - x_b\| \le tol\,\|f(x_b)\|`;
        ``"abs"``: when :math:`\|f(x_b) - x_b\| \le tol`. A stopped sample is frozen.
    on_failure : {"warn", "raise", "ignore"}
        Policy for samples that do not converge or become non-finite.
    differentiable : bool
        Run the solver's iterations under the caller's grad mode, out of place, so that
        ``result.x`` is differentiable (with respect to ``z0`` and everything ``f`` depends on) by
        plain backprop through the iterations: the reference for implicit gradients, with memory
        that grows with the iterations. Same iterations, stopping, freezing and read-out as the
        default mode; Anderson's mixing coefficients are differentiated too. ``"anderson"`` and
        ``"banach"`` support it (a registered solver does when it takes this keyword).
    **options
        The method's own options: ``anderson(m=5, lam=1e-8, beta=1.0, coefficients="auto",
        check_every=1)``, ``banach(relaxation=1.0, check_every=1)``, ``broyden(m=10,
        check_every=1)``.

    Returns
    -------
    FixedPointResult
        ``x`` (structured like ``z0``), ``iterations``, ``residuals``, ``converged`` (each
        ``(batch,)``) and the residual ``trace``.

    Raises
    ------
    ValueError
        Unknown method, bad tolerance or option values, non-finite ``z0``, ``differentiable=True``
        with a method that cannot run under autograd.
    TypeError
        Unknown options, a ``z0`` or an output of ``f`` that is not a state like ``z0``.
    ConvergenceError
        With ``on_failure="raise"``, when a sample fails.

    Examples
    --------
    >>> import torch, fixedpoint
    >>> A = torch.tensor([[0.5, 0.2], [0.1, 0.3]])
    >>> b = torch.tensor([[1.0, 2.0]])
    >>> result = fixedpoint.solve(lambda z: z @ A.T + b, torch.zeros(1, 2), tol=1e-10)
    >>> torch.allclose(result.x, torch.linalg.solve(torch.eye(2) - A, b[0])[None])
    True
    """
    solver = get_solver(method)
    check_options(method, solver, options)
    if boolean("differentiable", differentiable):
        if not supports_differentiable(method):
            raise ValueError(
                f"differentiable=True differentiates the iterations of {differentiable_solvers()} "
                f"(the solvers that run under autograd), got method {method!r}; use one of "
                "those, or fixedpoint.implicit for gradients by implicit differentiation."
            )
        options["differentiable"] = True
    return solver(
        f, z0, tol=tol, max_iter=max_iter, stop_mode=stop_mode, on_failure=on_failure, **options
    )
