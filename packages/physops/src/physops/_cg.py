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

import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from physops._linop import LinearOperator, ensure_operator
from physops._precision import compiled_eagerly, in_full_precision
from physops._validate import finite_number, integer, known_name, nonnegative_int

__all__ = ["ConvergenceError", "ConvergenceWarning", "SolveResult", "cg", "least_squares"]

_BACKWARDS = ("implicit", "unrolled")
_POLICIES = ("ignore", "warn", "raise")


class SolveResult(NamedTuple):
    r"""What :func:`cg` returns (a named tuple: ``x, iterations, residuals, converged = ...``).

    The field names are those of every memroll solver (``fixedpoint`` too).

    Attributes
    ----------
    x
        The solution, shape and dtype of ``b``; differentiable (see :func:`cg`).
    iterations
        ``(*batch,)`` int64: CG iterations each system ran (0 when the start was already good).
    residuals
        ``(*batch,)`` real: relative residual :math:`\|b - A x\| / \|b\|` of each system (the
        absolute residual where :math:`b = 0`), from CG's recursion.
    converged
        ``(*batch,)`` bool: whether ``residuals <= tol``.
    """

    x: Tensor
    iterations: Tensor
    residuals: Tensor
    converged: Tensor

    @property
    def residual(self) -> Tensor:
        """Deprecated alias of :attr:`residuals` (removed in physops 0.3)."""
        warnings.warn(
            "physops.SolveResult.residual is deprecated and will be removed in physops 0.3: use "
            "SolveResult.residuals (the field name every memroll solver shares).",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.residuals


class ConvergenceWarning(RuntimeWarning):
    """Warned by :func:`cg` with ``on_failure="warn"`` when a system did not converge."""


class ConvergenceError(RuntimeError):
    """Raised by :func:`cg` with ``on_failure="raise"`` when a system did not converge.

    Parameters
    ----------
    message
        What failed and how to fix it.
    result
        The :class:`SolveResult` reached, kept as ``error.result`` for inspection.
    """

    def __init__(self, message: str, result: SolveResult) -> None:
        super().__init__(message)
        self.result = result


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
    @in_full_precision
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        with torch.no_grad():
            solution = _cg_iterations(ctx.apply_A, grad, None, ctx.settings)
        return solution.x, None, None


def _policy(on_failure: str, on_fail: str | None, who: str) -> str:
    """Return the failure policy, honouring the deprecated ``on_fail`` alias (physops 0.1)."""
    if on_fail is not None:
        warnings.warn(
            f"{who}(on_fail=...) is deprecated and will be removed in physops 0.3: use "
            "on_failure=... (the argument name every memroll solver shares).",
            DeprecationWarning,
            stacklevel=3,
        )
        if on_failure not in ("ignore", on_fail):
            raise ValueError(
                f"{who}: got on_failure={on_failure!r} and the deprecated on_fail={on_fail!r}; "
                "pass on_failure only."
            )
        on_failure = on_fail
    return known_name(on_failure, "on_failure", who, _POLICIES)


def _checked_inputs(
    apply_A: object, b: object, x0: object, batch_dims: object
) -> tuple[Tensor, Tensor | None, int]:
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
    dims = integer(batch_dims, "batch_dims", "cg")
    if not 0 <= dims < b.ndim:
        raise ValueError(
            f"cg: batch_dims must satisfy 0 <= batch_dims < b.ndim = {b.ndim}, got {dims}: "
            "at least one dimension must remain for the inner products."
        )
    return b, x0, dims


def _report(result: SolveResult, policy: str, max_iter: int, tol: float) -> None:
    """Apply the failure policy to a finished solve (``"ignore"``, ``"warn"`` or ``"raise"``)."""
    if policy == "ignore" or bool(result.converged.all()):
        return
    failed = int((~result.converged).sum())
    message = (
        f"cg did not converge for {failed} of {result.converged.numel()} systems within "
        f"max_iter={max_iter} (largest relative residual {float(result.residuals.max()):.3g}, "
        f"tol={tol}): raise max_iter, loosen tol, or check that A is Hermitian positive "
        "definite."
    )
    if policy == "raise":
        raise ConvergenceError(message, result)
    warnings.warn(message, ConvergenceWarning, stacklevel=3)


# torch.compile runs CG eagerly (a graph break): its loop stops on a data-dependent residual test
# and its implicit backward is a custom autograd.Function that runs another CG
@compiled_eagerly
@in_full_precision
def cg(
    apply_A: Callable[[Tensor], Tensor],
    b: Tensor,
    x0: Tensor | None = None,
    *,
    max_iter: int = 100,
    tol: float = 1e-5,
    batch_dims: int = 1,
    backward: str = "implicit",
    on_failure: str = "ignore",
    on_fail: str | None = None,
) -> SolveResult:
    r"""Solve :math:`A x = b` for Hermitian positive-definite :math:`A` by conjugate gradient.

    Every sample is its own system: inner products are per sample (summed over all but the first
    ``batch_dims`` dimensions), each sample stops once
    :math:`\|b - A x\| \le \mathrm{tol}\,\|b\|`, and the loop ends when all have stopped or after
    ``max_iter`` iterations. Under ``torch.autocast`` the solve (and its backward) runs with
    autocast off, a half-precision ``b`` brought up to float32 / complex64.

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
    on_failure
        What to do when a sample did not converge: ``"ignore"`` (default: the result says so in
        ``converged``; unrolled networks run a fixed budget on purpose), ``"warn"``
        (:class:`ConvergenceWarning`) or ``"raise"`` (:class:`ConvergenceError`, with the result
        as ``error.result``).
    on_fail
        Deprecated alias of ``on_failure`` (physops 0.1); warns ``DeprecationWarning``.

    Returns
    -------
    SolveResult
        ``(x, iterations, residuals, converged)``.

    Raises
    ------
    ConvergenceError
        With ``on_failure="raise"``, when a system did not reach ``tol`` within ``max_iter``.

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
    policy = _policy(on_failure, on_fail, "cg")
    b, x0, batch_dims = _checked_inputs(apply_A, b, x0, batch_dims)
    max_iter = nonnegative_int(max_iter, "max_iter", "cg")
    tol = finite_number(tol, "tol", "cg", low=0)
    known_name(backward, "backward", "cg", _BACKWARDS)
    settings = _Settings(max_iter, tol, batch_dims)
    start = None if x0 is None else x0.detach()

    if backward == "unrolled" or not torch.is_grad_enabled():
        result = _cg_iterations(apply_A, b, start, settings)
    else:
        with torch.no_grad():
            solved = _cg_iterations(apply_A, b.detach(), start, settings)
        x_star = solved.x
        residual = b - apply_A(x_star)  # ~0 in value; carries the graph to b and apply_A's tensors
        x = (
            x_star + _InverseOfA.apply(residual, apply_A, settings)
            if residual.requires_grad
            else x_star
        )
        result = solved._replace(x=x)
    _report(result, policy, max_iter, tol)
    return result


@in_full_precision
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
    on_failure: str = "ignore",
    on_fail: str | None = None,
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
    x0, max_iter, tol, backward, on_failure
        As in :func:`cg` (MoDL uses ``max_iter=10``). Inner products are per sample (first dim).
    on_fail
        Deprecated alias of ``on_failure``.

    Returns
    -------
    SolveResult
        As :func:`cg`; gradients reach ``y``, ``mu``, ``z`` and the operator's learnable tensors.
    """
    policy = _policy(on_failure, on_fail, "least_squares")
    op = ensure_operator(op, "least_squares: op")
    weight = _checked_mu(mu)
    rhs = op.adjoint(y)
    # A per-sample float64 mu must not promote a complex64 image to complex128.
    if isinstance(weight, Tensor):
        weight = weight.to(rhs.real.dtype)
    rhs = rhs + weight * z if z is not None else rhs
    return cg(
        lambda v: op.normal(v) + weight * v,
        rhs,
        x0,
        max_iter=max_iter,
        tol=tol,
        batch_dims=1,
        backward=backward,
        on_failure=policy,
    )


def _checked_mu(mu: object) -> float | Tensor:
    """``mu`` if it is a positive finite number or a real tensor of such values."""
    if isinstance(mu, bool) or not isinstance(mu, (int, float, Tensor)):
        raise TypeError(
            f"least_squares: mu must be a positive number or a real tensor, got "
            f"{type(mu).__name__}."
        )
    fix = (
        ": (A^H A + mu I) is only positive definite for mu > 0. Keep a learnable mu positive, "
        "e.g. mu = torch.nn.functional.softplus(raw_mu)"
    )
    if not isinstance(mu, Tensor):
        return finite_number(mu, "mu", "least_squares", low=0, low_open=True, hint=fix)
    if mu.is_complex() or not mu.is_floating_point():
        raise TypeError(f"least_squares: mu must be a real floating tensor, got {mu.dtype}.")
    values = mu.detach()
    if bool((values <= 0).any()) or not bool(torch.isfinite(values).all()):
        raise ValueError(
            f"least_squares: mu must be positive and finite, got a tensor with minimum "
            f"{float(values.min()):.3g}{fix}."
        )
    return mu
