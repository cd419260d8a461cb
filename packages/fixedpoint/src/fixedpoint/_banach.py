"""Banach (Picard) iteration with Krasnoselskii-Mann relaxation."""

from __future__ import annotations

import torch
from torch import Tensor

from ._driver import Step, iterate, settings
from ._result import FixedPointResult, OnFailure, StopMode
from ._state import State, StateFn
from ._validate import fraction


class _BanachStep:
    """``x + tau (f(x) - x)``, out of place (so the same step serves the differentiable mode)."""

    def __init__(self, tau: float) -> None:
        self.tau = tau

    def residual_buffer(self, k: int) -> Tensor | None:
        return None

    def __call__(self, k: int, x: Tensor, fx: Tensor, g: Tensor) -> Tensor:
        return fx if self.tau == 1.0 else torch.add(x, g, alpha=self.tau)


def banach(
    f: StateFn,
    z0: State,
    *,
    tol: float = 1e-4,
    max_iter: int = 50,
    stop_mode: StopMode = "rel",
    on_failure: OnFailure = "warn",
    relaxation: float = 1.0,
    check_every: int = 1,
    differentiable: bool = False,
) -> FixedPointResult:
    r"""Solve ``z = f(z)`` by (relaxed) Banach fixed-point iteration.

    .. math::

        x_{k+1} = (1 - \tau)\, x_k + \tau\, f(x_k), \qquad x_0 = z_0,

    the Picard iteration for :math:`\tau = 1` and the Krasnoselskii-Mann iteration for
    :math:`0 < \tau < 1`. It converges linearly, with rate :math:`L`, when ``f`` is a contraction
    with Lipschitz constant :math:`L < 1` (Banach's theorem); the relaxed iteration also converges
    for a nonexpansive ``f`` (:math:`L = 1`) that has a fixed point. Memory: at most four states
    besides ``f``'s own.

    Parameters
    ----------
    f : callable
        The map, called as ``f(z)`` on a state shaped like ``z0``; must return the same structure,
        shapes and dtypes. It is always called on the whole batch.
    z0 : Tensor or tuple of Tensor
        Initial iterate, ``(batch, *shape)`` per tensor; floating or complex.
    tol : float
        Per-sample tolerance on the residual (see ``stop_mode``).
    max_iter : int
        Maximum number of evaluations of ``f``.
    stop_mode : {"rel", "abs"}
        ``"rel"``: stop sample ``b`` when :math:`\|f(x_b) - x_b\| \le tol\,\|f(x_b)\|`;
        ``"abs"``: when :math:`\|f(x_b) - x_b\| \le tol`.
    on_failure : {"warn", "raise", "ignore"}
        What to do when a sample does not converge or becomes non-finite:
        :class:`ConvergenceWarning`, :class:`ConvergenceError`, or nothing.
    relaxation : float
        :math:`\tau \in (0, 1]`.
    check_every : int
        How often the host learns whether every sample has stopped (one synchronisation). In
        between, samples stop and freeze on the device at exactly the iteration where they meet
        ``tol``, so the result is the same whatever the value; a value ``k > 1`` spares ``k - 1``
        synchronisations out of ``k`` (worth it on a GPU) at the price of up to ``k - 1``
        evaluations of ``f`` after the last sample stopped. On a CPU a synchronisation costs
        nothing and 1, the default, is fastest.
    differentiable : bool
        Run the iterations under the caller's grad mode, out of place, so that autograd records
        them: the result's ``x`` is differentiable with respect to ``z0`` and everything ``f``
        depends on (backprop through the solver, the reference of :func:`implicit`; memory grows
        with the iterations). Iterations, stopping and freezing are those of the default mode.

    Returns
    -------
    FixedPointResult
        Solution, per-sample iterations, residuals, convergence flags and residual trace.

    Examples
    --------
    >>> import torch, fixedpoint
    >>> b = torch.ones(2, 3)
    >>> result = fixedpoint.banach(lambda z: 0.5 * z + b, torch.zeros(2, 3), tol=1e-8, max_iter=100)
    >>> torch.allclose(result.x, 2 * b)
    True
    """
    config = settings(tol, max_iter, stop_mode, on_failure, check_every, differentiable)
    tau = fraction("relaxation", relaxation)

    def make_step(x0: Tensor, grad: bool) -> Step:
        return _BanachStep(tau)

    return iterate(f, z0, make_step, complex_view=True, config=config, method="banach")
