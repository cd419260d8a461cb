"""Implicit layers: a fixed point forward, implicit differentiation (or backprop) backward."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeAlias

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from ._precision import compiled_eagerly, in_full_precision
from ._result import FixedPointResult, OnFailure, StopMode
from ._solve import (
    check_options,
    differentiable_solvers,
    get_solver,
    solve,
    supports_differentiable,
)
from ._spectral import spectral_radius, vjp_function
from ._state import State, check_state, components, rebuild
from ._validate import (
    fraction,
    nonnegative_int,
    one_of,
    positive_int,
    solver_settings,
    tensor_params,
)

Backward: TypeAlias = Literal["implicit", "jacobian_free", "phantom", "unrolled"]
BACKWARDS = ("implicit", "jacobian_free", "phantom", "unrolled")


@dataclass
class ImplicitDiagnostics:
    """What :func:`implicit` reports about its solves; pass one in and read it afterwards.

    Attributes
    ----------
    forward : FixedPointResult or None
        The forward solve of ``z* = f(z*)`` (its ``x`` is ``z*``, detached).
    backward : FixedPointResult or None
        The backward solve of ``u = v + J^H u`` (``backward="implicit"`` only); filled when the
        backward pass runs, overwritten by every later backward pass through the same call.
    spectral_radius : Tensor or None
        ``(batch,)`` power-iteration estimate of the spectral radius of ``J`` at ``z*``
        (when ``spectral_radius_iterations > 0``).
    """

    forward: FixedPointResult | None = None
    backward: FixedPointResult | None = None
    spectral_radius: Tensor | None = None


@dataclass(frozen=True)
class _BackwardConfig:
    f: Callable[..., State]
    is_tuple: bool
    n_state: int
    mode: Backward
    method: str
    tol: float
    max_iter: int
    stop_mode: StopMode
    on_failure: OnFailure
    options: Mapping[str, Any]
    phantom_steps: int
    phantom_damping: float
    diagnostics: ImplicitDiagnostics | None = field(default=None)


class _ImplicitGrad(torch.autograd.Function):
    """Identity forward; backward maps the cotangent ``v`` of ``z`` to ``u``.

    ``implicit`` applies it to the output of one differentiable step ``z = f(z*, *params)``, so that
    autograd then carries ``u`` through that step to everything ``f`` depends on:

    * ``"implicit"``: ``u = v + J^H u``, i.e. ``u = (I - J)^{-H} v``, solved by fixed-point
      iteration with vector-Jacobian products on a graph of ``f`` rebuilt at ``z*``;
    * ``"phantom"``: ``u = lam sum_{i<k} ((1 - lam) I + lam J^H)^i v`` (``k`` damped steps).
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        cfg: _BackwardConfig,
        saved: tuple[Tensor, ...],
        *z: Tensor,
    ) -> tuple[Tensor, ...]:
        ctx.cfg = cfg  # type: ignore[attr-defined]
        ctx.save_for_backward(*saved)
        # a clone, not the input itself: an output that aliases an input becomes a view, and
        # in-place operations on it would be refused
        return tuple(t.clone() for t in z)

    @staticmethod
    @once_differentiable
    @in_full_precision
    def backward(ctx: FunctionCtx, *grads: Tensor) -> tuple[Tensor | None, ...]:
        cfg: _BackwardConfig = ctx.cfg  # type: ignore[attr-defined]
        v = tuple(grads)
        if cfg.mode == "phantom" and cfg.phantom_steps == 1:  # no Jacobian needed
            return (None, None, *(cfg.phantom_damping * t for t in v))
        saved = ctx.saved_tensors  # type: ignore[attr-defined]
        z_star, params = saved[: cfg.n_state], saved[cfg.n_state :]
        # one graph of f at z*, reused by every vector-Jacobian product below
        leaves = tuple(t.detach().requires_grad_() for t in z_star)
        with torch.enable_grad():
            out = cfg.f(_structure(cfg, leaves), *params)
        vjp = vjp_function(components(out), leaves)
        if cfg.mode == "phantom":
            lam = cfg.phantom_damping
            w = v
            u = tuple(lam * t for t in v)
            for _ in range(cfg.phantom_steps - 1):
                jw = vjp(w)
                w = tuple((1 - lam) * a + lam * b for a, b in zip(w, jw))
                u = tuple(a + lam * b for a, b in zip(u, w))
        else:

            def adjoint_map(state: State) -> State:
                jw = vjp(components(state))
                return _structure(cfg, [a + b for a, b in zip(v, jw)])

            result = solve(
                adjoint_map,
                _structure(cfg, v),
                cfg.method,
                tol=cfg.tol,
                max_iter=cfg.max_iter,
                stop_mode=cfg.stop_mode,
                on_failure=cfg.on_failure,
                **cfg.options,
            )
            if cfg.diagnostics is not None:
                cfg.diagnostics.backward = result
            u = components(result.x)
        return (None, None, *u)


def _structure(cfg: _BackwardConfig, tensors: Any) -> State:
    return tuple(tensors) if cfg.is_tuple else tensors[0]


# torch.compile runs this eagerly (a graph break): the solve loops on a data-dependent residual
# test and the backward (a custom autograd.Function) solves its own fixed point with autograd.grad
@compiled_eagerly
@in_full_precision
def implicit(
    f: Callable[..., State],
    z0: State,
    *params: Tensor,
    backward: Backward = "implicit",
    method: str = "anderson",
    tol: float = 1e-4,
    max_iter: int = 50,
    stop_mode: StopMode = "rel",
    on_failure: OnFailure = "warn",
    backward_method: str | None = None,
    backward_tol: float | None = None,
    backward_max_iter: int | None = None,
    backward_options: Mapping[str, Any] | None = None,
    phantom_steps: int = 5,
    phantom_damping: float = 0.5,
    spectral_radius_iterations: int = 0,
    diagnostics: ImplicitDiagnostics | None = None,
    **options: Any,
) -> State:
    r"""Solve the implicit layer ``z* = f(z*, *params)`` and return ``f(z*)`` with gradients.

    Forward: solve :math:`z^\star = f(z^\star)` with :func:`solve` (no graph kept), then take one
    differentiable step :math:`z = f(z^\star, \theta)` from the detached :math:`z^\star` and return
    it (through an identity :class:`torch.autograd.Function`). Backward: the function turns the
    cotangent :math:`v = \partial L / \partial z` into :math:`u`, and autograd carries :math:`u`
    through the one step, giving :math:`u^H\, \partial f / \partial \theta` for every
    :math:`\theta` the step depends on. By the implicit function theorem,
    :math:`dz^\star/d\theta = (I - J)^{-1} \partial f / \partial \theta` with
    :math:`J = \partial f / \partial z` at :math:`z^\star`, so the exact gradient needs

    .. math::

        u = v + J^H u \quad\Leftrightarrow\quad u = (I - J)^{-H} v,

    and the ``backward`` options are

    * ``"implicit"``: solve :math:`u = v + J^H u` by fixed-point iteration (``backward_method``,
      ``backward_tol``, ...); one vector-Jacobian product (VJP) per iteration, no new graph.
      Exact up to the tolerances.
    * ``"jacobian_free"``: :math:`u = v` (Fung et al. 2022); no extra cost, biased by
      :math:`(I - J)^{-H} - I = J^H + (J^H)^2 + \dots`.
    * ``"phantom"``: :math:`u = \lambda \sum_{i<k} ((1 - \lambda) I + \lambda J^H)^i v`
      (Geng et al. 2021) with ``k = phantom_steps`` and :math:`\lambda` = ``phantom_damping``;
      ``k - 1`` VJPs; tends to the implicit gradient as :math:`k \to \infty`.
    * ``"unrolled"``: plain backprop through the forward solver's iterations
      (:func:`solve` with ``differentiable=True``: same method, tolerance, per-sample stopping,
      freezing and read-out; Anderson's mixing coefficients differentiated, a sample with a
      singular least-squares system taking the Picard step with finite gradients), then the same
      last step. The reference the others approximate; memory grows with the iterations, and
      ``z0`` receives a gradient too. ``method`` must be ``"anderson"`` or ``"banach"``.

    Gradients reach ``params``, the parameters of ``f`` when it is an :class:`torch.nn.Module`,
    and every tensor ``f`` closes over (they are all in the graph of the one step). No gradient
    flows to ``z0`` (the fixed point does not depend on it) except with ``"unrolled"``. Memory is
    independent of the numbers of forward and backward iterations (except with ``"unrolled"``):
    the forward solve keeps no graph, and the backward pass rebuilds one graph of ``f`` at ``z*``
    and reuses it for every vector-Jacobian product (VJP). ``f`` must be deterministic (no
    dropout), since the backward pass evaluates it again.

    Parameters
    ----------
    f : callable
        Called as ``f(z, *params)``; returns a state shaped like ``z``. May be an ``nn.Module``.
        Samples must not interact (per-sample stopping and per-sample estimates assume it), and
        ``f`` should have no side effects (such as BatchNorm's running statistics in training
        mode): it is evaluated once per iteration, then once more in the backward pass.
    z0 : Tensor or tuple of Tensor
        Initial iterate, ``(batch, *shape)`` per tensor, floating or complex.
    *params : Tensor
        Tensors passed to ``f`` after ``z``.
    backward : {"implicit", "jacobian_free", "phantom", "unrolled"}
        Which gradient; see the list above.
    method, tol, max_iter, stop_mode, on_failure, **options
        The forward solve, as in :func:`solve`.
    backward_method, backward_tol, backward_max_iter, backward_options
        The backward solve (``"implicit"``); by default those of the forward solve
        (``backward_options`` defaults to ``options`` when the method is the same, else none).
    phantom_steps : int
        ``k >= 1`` for ``"phantom"``.
    phantom_damping : float
        :math:`\lambda \in (0, 1]` for ``"phantom"``.
    spectral_radius_iterations : int
        When > 0, also estimate the spectral radius of ``J`` at ``z*`` with that many power
        iterations (:func:`spectral_radius`) into ``diagnostics.spectral_radius``.
    diagnostics : ImplicitDiagnostics, optional
        Filled with the forward result now and the backward result when the backward runs.

    Returns
    -------
    Tensor or tuple of Tensor
        ``f(z*, *params)``, structured like ``z0``.

    Examples
    --------
    >>> import torch, fixedpoint
    >>> W = torch.tensor([[0.5, 0.1], [0.0, 0.3]])
    >>> b = torch.tensor([[1.0, -1.0]], requires_grad=True)
    >>> z = fixedpoint.implicit(lambda z, b: torch.tanh(z @ W + b), torch.zeros(1, 2), b,
    ...                         tol=1e-10)
    >>> z.sum().backward()
    >>> b.grad.shape
    torch.Size([1, 2])
    """
    one_of("backward", backward, BACKWARDS)
    parts = check_state(z0, "z0")
    tensor_params(params)
    check_options(method, get_solver(method), options)
    if backward == "unrolled" and not supports_differentiable(method):
        raise ValueError(
            f"backward='unrolled' differentiates the iterations of {differentiable_solvers()} "
            f"(the solvers that run under autograd), got method {method!r}; use one of those, "
            "or another backward (backward='implicit' works with every solver)."
        )
    b_method = method if backward_method is None else backward_method
    if backward_options is None:
        backward_options = options if b_method == method else {}
    solver_settings(tol, max_iter, stop_mode, on_failure)
    cfg = _BackwardConfig(
        f=f,
        is_tuple=isinstance(z0, tuple),
        n_state=len(parts),
        mode=backward,
        method=b_method,
        tol=tol if backward_tol is None else backward_tol,
        max_iter=max_iter if backward_max_iter is None else backward_max_iter,
        stop_mode=stop_mode,
        on_failure=on_failure,
        options=dict(backward_options),
        phantom_steps=positive_int("phantom_steps", phantom_steps),
        phantom_damping=fraction("phantom_damping", phantom_damping),
        diagnostics=diagnostics,
    )
    check_options(cfg.method, get_solver(cfg.method), dict(cfg.options))
    solver_settings(cfg.tol, cfg.max_iter, stop_mode, on_failure)
    nonnegative_int("spectral_radius_iterations", spectral_radius_iterations)
    if spectral_radius_iterations and diagnostics is None:
        raise ValueError(
            "spectral_radius_iterations > 0 needs somewhere to put the estimate: pass "
            "diagnostics=fixedpoint.ImplicitDiagnostics() and read diagnostics.spectral_radius."
        )

    def fixed_point_map(z: State) -> State:
        return f(z, *params)

    unrolled = backward == "unrolled"
    result = solve(
        fixed_point_map,
        z0 if unrolled else rebuild(z0, [t.detach() for t in parts]),
        method,
        tol=tol,
        max_iter=max_iter,
        stop_mode=stop_mode,
        on_failure=on_failure,
        differentiable=unrolled,
        **options,
    )
    z_star = result.x
    if diagnostics is not None:
        detached = rebuild(z_star, [t.detach() for t in components(z_star)])
        diagnostics.forward = replace(result, x=detached) if unrolled else result
        diagnostics.backward = None
        diagnostics.spectral_radius = None
        if spectral_radius_iterations:
            diagnostics.spectral_radius = spectral_radius(
                f, detached, *params, iterations=spectral_radius_iterations
            )
    z = f(z_star, *params)  # the one differentiable step (under the caller's grad mode)
    outs = components(z)
    if backward in ("jacobian_free", "unrolled") or not any(t.requires_grad for t in outs):
        return z
    out = _ImplicitGrad.apply(cfg, (*components(z_star), *params), *outs)
    return _structure(cfg, out)
