r"""Batched conjugate gradient with an implicit (constant-memory) backward.

``cg`` solves :math:`A x = b` for a Hermitian positive-definite :math:`A` given as a function,
one independent system per sample, with per-sample inner products and per-sample stopping. MoDL's
data-consistency step :math:`(A^H A + \mu I)\, x = A^H y + \mu z` is the main use;
:func:`least_squares` builds exactly that system from an operator.

Implicit backward
-----------------
Differentiating through the CG iterations stores every iterate: memory grows with ``max_iter``.
At the solution :math:`x^* = A_\theta^{-1} b` the implicit function theorem gives instead

.. math::

    \frac{\partial L}{\partial b} = A^{-1} g, \qquad
    \frac{\partial L}{\partial \theta}
      = -\Big(\frac{\partial (A_\theta x^*)}{\partial \theta}\Big)^H A^{-1} g, \qquad
    g = \frac{\partial L}{\partial x^*}

(:math:`A` is Hermitian, so :math:`A^{-H} = A^{-1}`): one more CG solve with the same system. It is
implemented without knowing what :math:`\theta` is:

1. solve for :math:`x^*` without recording a graph;
2. compute the residual :math:`r = b - A_\theta(x^*)` *with* the graph (it is about zero in value,
   but differentiable in :math:`b` and in every tensor ``apply_A`` uses: a learnable :math:`\mu`,
   coil maps, a network's output);
3. return :math:`x^* + S(r)`, where :math:`S` is an :class:`torch.autograd.Function` whose forward
   returns zeros and whose backward maps :math:`v \mapsto A^{-1} v` by CG.

Chain rule through step 2 then yields exactly the formulas above, for every tensor ``apply_A``
closes over. The memory held for the backward is one application of ``apply_A``, whatever the
iteration count. The gradients are those of the exact solution: they equal backpropagation through
the iterations when CG has converged, and approximate them otherwise (``backward="unrolled"``
differentiates the iterations themselves, at memory cost growing with the iterations).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from physops._linop import LinearOperator, ensure_operator

__all__ = ["SolveResult", "cg", "least_squares"]

_BACKWARDS = ("implicit", "unrolled")
_ON_FAIL = ("ignore", "warn", "raise")


class SolveResult(NamedTuple):
    """What :func:`cg` returns (a named tuple: ``x, iterations, residual, converged = ...``).

    Attributes
    ----------
    x
        The solution, shape and dtype of ``b``; differentiable (see :func:`cg`).
    iterations
        ``(*batch,)`` int64: CG iterations each system ran (0 when the start was already good).
    residual
        ``(*batch,)`` real: relative residual :math:`\\|b - A x\\| / \\|b\\|` of each system (the
        absolute residual where :math:`b = 0`), from CG's recursion.
    converged
        ``(*batch,)`` bool: whether ``residual <= tol``.
    """

    x: Tensor
    iterations: Tensor
    residual: Tensor
    converged: Tensor


class _Settings(NamedTuple):
    max_iter: int
    tol: float
    batch_dims: int


def _real_dot(a: Tensor, b: Tensor, dims: tuple[int, ...]) -> Tensor:
    r"""Per-sample :math:`\mathrm{Re}\langle a, b\rangle` summed over ``dims``."""
    if a.is_complex():
        return (torch.view_as_real(a.resolve_conj()) * torch.view_as_real(b.resolve_conj())).sum(
            dim=(*dims, -1)
        )
    return (a * b).sum(dim=dims)


def _cg_iterations(
    apply_A: Callable[[Tensor], Tensor], b: Tensor, x0: Tensor | None, settings: _Settings
) -> SolveResult:
    """Plain batched CG; records a graph only if the caller's grad mode does."""
    dims = tuple(range(settings.batch_dims, b.ndim))
    batch_shape = b.shape[: settings.batch_dims]
    view = (*batch_shape, *([1] * len(dims)))
    b_norm = _real_dot(b, b, dims).sqrt()
    threshold = settings.tol * b_norm
    if x0 is None:
        x = torch.zeros_like(b)
        r = b
    else:
        x = torch.where((b_norm > 0).reshape(view), x0, torch.zeros_like(x0))
        r = b - _checked(apply_A, x, b)
    rr = _real_dot(r, r, dims)
    active = rr.sqrt() > threshold
    iterations = torch.zeros(batch_shape, dtype=torch.int64, device=b.device)
    p = r
    first = x0 is None
    for _ in range(settings.max_iter):
        if not bool(active.any()):
            break
        ap = _checked(apply_A, p, b) if first else apply_A(p)
        first = False
        p_ap = _real_dot(p, ap, dims)
        step = active & (p_ap > 0)  # p_ap <= 0 only if A is not positive definite: stop there
        # Safe denominators keep NaN out of the unused branch of torch.where (and its gradient).
        alpha = torch.where(step, rr / torch.where(step, p_ap, torch.ones_like(p_ap)), 0.0)
        x = x + alpha.reshape(view) * p
        r = r - alpha.reshape(view) * ap
        rr_new = _real_dot(r, r, dims)
        iterations = iterations + step.to(torch.int64)
        safe_rr = torch.where(rr > 0, rr, torch.ones_like(rr))
        beta = torch.where(step, rr_new / safe_rr, 0.0)
        p = r + beta.reshape(view) * p
        rr = torch.where(step, rr_new, rr)
        active = step & (rr.sqrt() > threshold)
    r_norm = rr.detach().sqrt()
    residual = torch.where(b_norm > 0, r_norm / torch.where(b_norm > 0, b_norm, 1.0), r_norm)
    converged = r_norm <= threshold
    return SolveResult(x, iterations, residual, converged)


def _checked(apply_A: Callable[[Tensor], Tensor], v: Tensor, b: Tensor) -> Tensor:
    out = apply_A(v)
    if not isinstance(out, Tensor) or out.shape != b.shape or out.dtype != b.dtype:
        got = (
            f"shape {tuple(out.shape)} and dtype {out.dtype}"
            if isinstance(out, Tensor)
            else type(out).__name__
        )
        raise ValueError(
            f"cg: apply_A must map a tensor of the shape and dtype of b ({tuple(b.shape)}, "
            f"{b.dtype}) to the same shape and dtype, got {got}: A must be square (for MoDL use "
            "lambda v: op.normal(v) + mu * v, not op itself)."
        )
    return out


class _InverseOfA(torch.autograd.Function):
    """Forward: zeros like ``r``. Backward: ``v -> A^{-1} v`` by CG (A Hermitian)."""

    @staticmethod
    def forward(
        ctx: Any, r: Tensor, apply_A: Callable[[Tensor], Tensor], settings: _Settings
    ) -> Tensor:
        ctx.apply_A = apply_A
        ctx.settings = settings
        return torch.zeros_like(r)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        with torch.no_grad():
            solution = _cg_iterations(ctx.apply_A, grad, None, ctx.settings)
        return solution.x, None, None


def cg(
    apply_A: Callable[[Tensor], Tensor],
    b: Tensor,
    x0: Tensor | None = None,
    *,
    max_iter: int = 100,
    tol: float = 1e-5,
    batch_dims: int = 1,
    backward: str = "implicit",
    on_fail: str = "ignore",
) -> SolveResult:
    r"""Solve :math:`A x = b` for Hermitian positive-definite :math:`A` by conjugate gradient.

    Every sample is its own system: inner products are per sample (summed over all but the first
    ``batch_dims`` dimensions), each sample stops once
    :math:`\|b - A x\| \le \mathrm{tol}\,\|b\|`, and the loop ends when all have stopped or after
    ``max_iter`` iterations.

    Parameters
    ----------
    apply_A
        :math:`v \mapsto A v`, shape and dtype preserving and Hermitian positive definite per
        sample, e.g. ``lambda v: op.normal(v) + mu * v``. It may close over learnable tensors.
    b
        Right-hand side ``(*batch, *rest)``, real or complex.
    x0
        Initial guess like ``b`` (default zeros). It only speeds the solve up: no gradient
        reaches it.
    max_iter
        Iteration budget (>= 0). Unrolled networks typically use a fixed 5 to 10.
    tol
        Relative residual at which a sample stops (>= 0; 0 runs all ``max_iter`` iterations).
    batch_dims
        How many leading dimensions index independent systems (default 1; 0 for one system).
    backward
        ``"implicit"`` (default): gradients by a second CG solve with the same system (see the
        module notes); memory does not grow with the iterations, gradients reach ``b`` and every
        tensor ``apply_A`` uses (first-order only: it cannot be differentiated twice).
        ``"unrolled"``: plain autograd through the iterations.
    on_fail
        What to do when a sample did not converge: ``"ignore"`` (default: the result says so in
        ``converged``; unrolled networks run a fixed budget on purpose), ``"warn"`` or ``"raise"``.

    Returns
    -------
    SolveResult
        ``(x, iterations, residual, converged)``.

    Examples
    --------
    >>> import torch, physops
    >>> m = torch.randn(3, 4, 4, dtype=torch.float64)
    >>> spd = m @ m.mT + 4 * torch.eye(4, dtype=torch.float64)
    >>> b = torch.randn(3, 4, dtype=torch.float64)
    >>> res = physops.cg(lambda v: (spd @ v[..., None])[..., 0], b, tol=1e-12)
    >>> torch.allclose(res.x, torch.linalg.solve(spd, b)), bool(res.converged.all())
    (True, True)
    """
    if not callable(apply_A):
        raise TypeError(f"cg: apply_A must be callable (v -> A v), got {type(apply_A).__name__}.")
    if not isinstance(b, Tensor):
        raise TypeError(f"cg: b must be a torch.Tensor, got {type(b).__name__}.")
    if not (b.is_floating_point() or b.is_complex()):
        raise TypeError(f"cg: b must be floating or complex, got dtype {b.dtype}.")
    if x0 is not None:
        if not isinstance(x0, Tensor):
            raise TypeError(f"cg: x0 must be a torch.Tensor or None, got {type(x0).__name__}.")
        if x0.shape != b.shape or x0.dtype != b.dtype:
            raise ValueError(
                f"cg: x0 must have the shape and dtype of b ({tuple(b.shape)}, {b.dtype}), got "
                f"({tuple(x0.shape)}, {x0.dtype})."
            )
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
        raise ValueError(f"cg: max_iter must be a non-negative integer, got {max_iter!r}.")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 <= tol < math.inf:
        raise ValueError(f"cg: tol must be a finite number >= 0, got {tol!r}.")
    if isinstance(batch_dims, bool) or not isinstance(batch_dims, int):
        raise TypeError(f"cg: batch_dims must be an int, got {type(batch_dims).__name__}.")
    if not 0 <= batch_dims < b.ndim:
        raise ValueError(
            f"cg: batch_dims must satisfy 0 <= batch_dims < b.ndim = {b.ndim}, got {batch_dims}: "
            "at least one dimension must remain for the inner products."
        )
    if backward not in _BACKWARDS:
        raise ValueError(
            f"cg: unknown backward {backward!r}; valid names are {', '.join(_BACKWARDS)}."
        )
    if on_fail not in _ON_FAIL:
        raise ValueError(f"cg: unknown on_fail {on_fail!r}; valid names are {', '.join(_ON_FAIL)}.")
    settings = _Settings(max_iter, float(tol), batch_dims)

    if backward == "unrolled" or not torch.is_grad_enabled():
        result = _cg_iterations(apply_A, b, None if x0 is None else x0.detach(), settings)
    else:
        with torch.no_grad():
            solved = _cg_iterations(
                apply_A, b.detach(), None if x0 is None else x0.detach(), settings
            )
        x_star = solved.x
        residual = b - apply_A(x_star)  # ~0 in value; carries the graph to b and apply_A's tensors
        x = (
            x_star + _InverseOfA.apply(residual, apply_A, settings)
            if residual.requires_grad
            else x_star
        )
        result = solved._replace(x=x)

    if on_fail != "ignore" and not bool(result.converged.all()):
        failed = int((~result.converged).sum())
        message = (
            f"cg did not converge for {failed} of {result.converged.numel()} systems within "
            f"max_iter={max_iter} (largest relative residual {float(result.residual.max()):.3g}, "
            f"tol={tol}): raise max_iter, loosen tol, or check that A is Hermitian positive "
            "definite."
        )
        if on_fail == "raise":
            raise RuntimeError(message)
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    return result


def least_squares(
    op: LinearOperator,
    y: Tensor,
    mu: float | Tensor,
    z: Tensor | None = None,
    *,
    x0: Tensor | None = None,
    max_iter: int = 10,
    tol: float = 1e-6,
    backward: str = "implicit",
    on_fail: str = "ignore",
) -> SolveResult:
    r"""MoDL's data consistency: the regularised least-squares solution by :func:`cg`.

    .. math::

        x = \arg\min_x \|A x - y\|_2^2 + \mu \|x - z\|_2^2
          = (A^H A + \mu I)^{-1} (A^H y + \mu z)

    Parameters
    ----------
    op
        The forward operator :math:`A` (its ``normal`` is used for :math:`A^H A`).
    y
        Measurements ``(batch, *op.out_shape)``.
    mu
        :math:`\mu > 0`: a Python number, a 0-dim tensor (learnable or not) or a per-sample tensor
        broadcastable against the image, e.g. ``(batch, 1, 1)``.
    z
        The prior image (MoDL: the denoiser's output), default zeros.
    x0, max_iter, tol, backward, on_fail
        As in :func:`cg` (MoDL uses ``max_iter=10``). Inner products are per sample (first dim).

    Returns
    -------
    SolveResult
        As :func:`cg`; gradients reach ``y``, ``mu``, ``z`` and the operator's learnable tensors.
    """
    op = ensure_operator(op, "least_squares: op")
    if isinstance(mu, bool) or not isinstance(mu, (int, float, Tensor)):
        raise TypeError(
            f"least_squares: mu must be a positive number or a real tensor, got "
            f"{type(mu).__name__}."
        )
    if isinstance(mu, Tensor):
        if mu.is_complex() or not mu.is_floating_point():
            raise TypeError(f"least_squares: mu must be a real floating tensor, got {mu.dtype}.")
        bad = bool((mu.detach() <= 0).any()) or not bool(torch.isfinite(mu.detach()).all())
        shown = f"a tensor with minimum {float(mu.detach().min()):.3g}"
    else:
        bad = not 0 < mu < math.inf
        shown = repr(mu)
    if bad:
        raise ValueError(
            f"least_squares: mu must be positive and finite, got {shown}: (A^H A + mu I) is only "
            "positive definite for mu > 0. Keep a learnable mu positive, e.g. "
            "mu = torch.nn.functional.softplus(raw_mu)."
        )
    rhs = op.adjoint(y)
    # A per-sample float64 mu must not promote a complex64 image to complex128.
    weight = mu.to(rhs.real.dtype) if isinstance(mu, Tensor) else mu
    rhs = rhs + weight * z if z is not None else rhs
    return cg(
        lambda v: op.normal(v) + weight * v,
        rhs,
        x0,
        max_iter=max_iter,
        tol=tol,
        batch_dims=1,
        backward=backward,
        on_fail=on_fail,
    )
