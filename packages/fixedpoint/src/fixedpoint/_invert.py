"""Inversion of gradient steps: solve the backward-Euler step ``x = y + g(x)`` by iteration."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, overload

import torch
from torch import Tensor

from ._precision import in_full_precision
from ._result import FixedPointResult, OnFailure, StopMode
from ._solve import check_options, get_solver, solve
from ._state import State, StateSpec, check_state, components, describe, rebuild
from ._validate import boolean


# the overloads only tell type checkers what return_result selects; the implementation below
# documents (and checks) every argument
@overload
def invert_step(
    g: Callable[[State], State], y: State, *, return_result: Literal[False] = ..., **kwargs: Any
) -> State: ...


@overload
def invert_step(
    g: Callable[[State], State], y: State, *, return_result: Literal[True], **kwargs: Any
) -> FixedPointResult: ...


@in_full_precision
def invert_step(
    g: Callable[[State], State],
    y: State,
    *,
    method: str = "anderson",
    lipschitz: float | Tensor | None = None,
    tol: float = 1e-6,
    max_iter: int = 100,
    stop_mode: StopMode = "rel",
    on_failure: OnFailure = "warn",
    x0: State | None = None,
    return_result: bool = False,
    **options: Any,
) -> State | FixedPointResult:
    r"""Solve :math:`x = y + g(x)`: invert the step :math:`y = x - g(x)` (MEL, Alg. 2).

    A gradient step :math:`y = x - \alpha \nabla D(x)` is a forward-Euler step; its inverse is the
    backward-Euler step :math:`x = y + \alpha \nabla D(x)`, found by the iteration
    :math:`x \leftarrow y + g(x)` from :math:`x_0 = y` (or its Anderson acceleration). By Banach's
    theorem the solution is unique and the iteration converges when

    .. math::

        \operatorname{Lip}(g) < 1 \qquad \text{(MEL, Eq. 7)},

    for example :math:`g(x) = \alpha A^H (A x - b)` with :math:`\alpha < 1 / \lambda_{\max}(A^H A)`.
    Given ``lipschitz`` :math:`\ge 1`, the function refuses before iterating. Given
    :math:`L` = ``lipschitz`` :math:`< 1`, the returned :math:`x` is within
    :math:`L / (1 - L)` times the absolute residual of the exact inverse.

    The solve is batched with per-sample stopping and never builds an autograd graph, so it can
    run inside a backward pass (under :func:`torch.no_grad` or :func:`torch.enable_grad`).

    Parameters
    ----------
    g : callable
        ``g(x)``, returning a state shaped like ``y``; for a gradient step,
        ``lambda x: alpha * grad_D(x)``. Always called on the whole batch.
    y : Tensor or tuple of Tensor
        The output of the step, ``(batch, *shape)`` per tensor.
    method : str
        ``"anderson"`` (default; :math:`2m + 3` states of memory) or ``"banach"`` (MEL's plain
        iteration; at most four states).
    lipschitz : float or Tensor, optional
        A bound on :math:`\operatorname{Lip}(g)`, a number or one per sample ``(batch,)``.
    tol, max_iter, stop_mode, on_failure, **options
        As in :func:`solve`; the residual is :math:`\|y + g(x) - x\|` (relative to
        :math:`\|y + g(x)\|` for ``stop_mode="rel"``).
    x0 : Tensor or tuple of Tensor, optional
        Initial iterate; ``y`` by default.
    return_result : bool
        Return the whole :class:`FixedPointResult` (achieved residuals, iterations, convergence)
        instead of ``x`` alone.

    Returns
    -------
    Tensor or tuple of Tensor, or FixedPointResult
        ``x``, structured like ``y`` (detached), or the result.

    Raises
    ------
    ValueError
        When ``lipschitz >= 1`` (for any sample), or is negative or not finite.

    Examples
    --------
    >>> import torch, fixedpoint
    >>> A = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    >>> b = torch.tensor([[1.0, 0.5]])
    >>> alpha = 0.9 / torch.linalg.eigvalsh(A.T @ A).max()
    >>> grad = lambda x: (x @ A.T - b) @ A            # gradient of ||A x - b||^2 / 2
    >>> x = torch.tensor([[0.3, -0.2]])
    >>> z = x - alpha * grad(x)                       # the gradient step to invert
    >>> x_rec = fixedpoint.invert_step(lambda v: alpha * grad(v), z, lipschitz=0.9, tol=1e-7)
    >>> torch.allclose(x_rec, x, atol=1e-5)
    True
    """
    parts = check_state(y, "y")
    boolean("return_result", return_result)
    _check_lipschitz(lipschitz, parts[0].shape[0])
    check_options(method, get_solver(method), options)
    spec = StateSpec(y, complex_view=True)
    checked = False

    def step_map(x: State) -> State:
        nonlocal checked
        gx = g(x)
        if not checked:
            spec.check_output(gx, "g")
            checked = True
        return rebuild(y, [a + b for a, b in zip(parts, components(gx))])

    if x0 is not None and describe(x0) != describe(y):
        raise ValueError(
            f"x0 must be structured like y ({describe(y)}), got {describe(x0)}; "
            "leave it out to start from y."
        )
    start = y if x0 is None else x0
    result = solve(
        step_map,
        start,
        method,
        tol=tol,
        max_iter=max_iter,
        stop_mode=stop_mode,
        on_failure=on_failure,
        **options,
    )
    return result if return_result else result.x


def _check_lipschitz(lipschitz: object, batch: int) -> None:
    if lipschitz is None:
        return
    if isinstance(lipschitz, Tensor):
        if lipschitz.is_complex() or lipschitz.dim() > 1:
            raise ValueError(
                "lipschitz must be a real number or a real tensor of shape () or (batch,), got "
                f"{lipschitz.dtype} of shape {tuple(lipschitz.shape)}."
            )
        if lipschitz.dim() == 1 and lipschitz.shape[0] != batch:
            raise ValueError(
                f"lipschitz has {lipschitz.shape[0]} entries but y has a batch of {batch}; pass "
                "one bound per sample or a single number."
            )
        values = lipschitz.detach().double().flatten().cpu()
    elif isinstance(lipschitz, (int, float)) and not isinstance(lipschitz, bool):
        values = torch.tensor([float(lipschitz)], dtype=torch.float64)
    else:
        raise TypeError(
            f"lipschitz must be a number, a tensor or None, got {type(lipschitz).__name__}."
        )
    if not bool(torch.isfinite(values).all()) or bool((values < 0).any()):
        raise ValueError(
            f"lipschitz must be finite and >= 0, got {values.tolist()}; pass an upper bound of "
            "Lip(g), e.g. alpha * lambda_max(A^H A) for g(x) = alpha * A^H (A x - b)."
        )
    bad = values >= 1
    if bool(bad.any()):
        where = "" if values.numel() == 1 else f" for samples {bad.nonzero().flatten().tolist()}"
        worst = float(values.max())
        raise ValueError(
            f"invert_step: the Lipschitz bound of g is {worst:g} >= 1{where}, so x = y + g(x) may "
            "have no unique solution and the iteration x <- y + g(x) is not guaranteed to converge "
            "(MEL, Eq. 7: Lip(g) < 1). For a gradient step g(x) = alpha * grad D(x) take "
            f"alpha < 1 / Lip(grad D), i.e. scale alpha by less than {1 / worst:.3g} (for "
            "D(x) = ||A x - b||^2 / 2, Lip(grad D) = lambda_max(A^H A))."
        )
