"""Anderson acceleration (type II, Walker & Ni 2011) with per-sample stopping and safeguards."""

from __future__ import annotations

from typing import Literal, TypeAlias

import torch
from torch import Tensor

from ._driver import Step, check_fraction, iterate
from ._result import FixedPointResult, OnFailure, StopMode
from ._state import State, StateFn, batch_norm, check_state, components

Coefficients: TypeAlias = Literal["auto", "complex", "real"]
COEFFICIENTS = ("auto", "complex", "real")


class _AndersonStep:
    """The Anderson update for a batch of flat iterates ``(batch, n)``.

    The history of ``m`` residuals ``g_i = f(x_i) - x_i`` and mixed images
    ``y_i = x_i + beta g_i`` lives in two ring buffers ``(batch, m, n)``. The Gram matrix
    ``H_ij = <g_i, g_j> = sum conj(g_i) g_j`` gains one row per iteration (one batched
    vector-matrix product) and the next iterate ``sum_i a_i y_i`` is one batched product, so an
    iteration reads the history twice and writes two vectors.
    """

    def __init__(self, x0: Tensor, m: int, lam: float, beta: float) -> None:
        batch, n = x0.shape
        self.m, self.beta = m, beta
        self.G = x0.new_empty(batch, m, n)
        self.Y = x0.new_empty(batch, m, n)
        # the Gram matrix is kept in double precision for the small solve
        dtype = torch.complex128 if x0.is_complex() else torch.float64
        self.gram = torch.zeros(batch, m, m, dtype=dtype, device=x0.device)
        # relative Tikhonov regularisation H + lam diag(H), applied as an elementwise product
        self.reg = torch.ones(m, m, dtype=dtype, device=x0.device)
        self.reg.diagonal().add_(lam)
        self.ones = torch.ones(batch, m, 1, dtype=dtype, device=x0.device)
        # fallback coefficients: all weight on the newest slot (a plain, damped Picard step)
        self.onehot = torch.eye(m, dtype=dtype, device=x0.device)

    def residual_buffer(self, k: int) -> Tensor | None:
        return self.G[:, (k - 1) % self.m]

    def __call__(self, k: int, x: Tensor, fx: Tensor, g: Tensor) -> Tensor:
        m = self.m
        s = (k - 1) % m
        n = min(k, m)
        # g was written into G[:, s] by the loop (residual_buffer)
        if self.beta == 1.0:
            self.Y[:, s] = fx
        else:
            torch.add(x, g, alpha=self.beta, out=self.Y[:, s])
        if n == 1:
            self.gram[:, 0, 0] = batch_norm(g).square()
            return self.Y[:, 0].clone()
        G, Y = (self.G, self.Y) if n == m else (self.G[:, :n], self.Y[:, :n])
        # h_j = <g_s, g_j> for the n valid slots: the new row (and column) of the Gram matrix
        h = torch.bmm(g.conj().unsqueeze(1), G.transpose(1, 2)).squeeze(1).to(self.gram.dtype)
        self.gram[:, s, :n] = h
        self.gram[:, :n, s] = h.conj()
        a = self._coefficients(self.gram[:, :n, :n], s)
        return torch.bmm(a.to(Y.dtype).unsqueeze(1), Y).squeeze(1)

    def _coefficients(self, gram: Tensor, newest: int) -> Tensor:
        r"""argmin ``a^H H a + lam sum_i H_ii |a_i|^2`` subject to ``sum_i a_i = 1``.

        ``a = (H + lam D)^{-1} 1 / (1^T (H + lam D)^{-1} 1)`` with ``D = diag(H)``, by a Cholesky
        factorisation in double precision (its accuracy does not depend on the scaling of the
        residuals, so the regularisation is relative). A sample whose system is not positive
        definite falls back to the Picard step (all weight on the newest iterate).
        """
        n = gram.shape[-1]
        H = gram * self.reg[:n, :n]
        L, info = torch.linalg.cholesky_ex(H)
        y = torch.cholesky_solve(self.ones[:, :n], L).squeeze(-1)
        a = y / y.sum(-1, keepdim=True)
        return torch.where((info == 0).unsqueeze(-1), a, self.onehot[newest, :n])


def anderson(
    f: StateFn,
    z0: State,
    *,
    tol: float = 1e-4,
    max_iter: int = 50,
    stop_mode: StopMode = "rel",
    on_failure: OnFailure = "warn",
    m: int = 5,
    lam: float = 1e-8,
    beta: float = 1.0,
    coefficients: Coefficients = "auto",
) -> FixedPointResult:
    r"""Solve ``z = f(z)`` by Anderson acceleration (type II, Walker & Ni 2011).

    With the last :math:`n = \min(k, m)` iterates :math:`x_i` and residuals
    :math:`g_i = f(x_i) - x_i`, every sample takes

    .. math::

        \alpha = \arg\min_{\sum_i \alpha_i = 1} \Big\|\sum_i \alpha_i g_i\Big\|^2
                 + \lambda \sum_i \|g_i\|^2 |\alpha_i|^2, \qquad
        x_{k+1} = \sum_i \alpha_i \big((1 - \beta)\, x_i + \beta f(x_i)\big),

    with its own coefficients :math:`\alpha` (per-sample Gram matrices). The first step is a
    (damped) Picard step. For complex states the Gram matrix is Hermitian,
    :math:`H_{ij} = \langle g_i, g_j\rangle = \sum \overline{g_i}\, g_j`, and the coefficients are
    complex (``coefficients="complex"``), which is right for maps that are complex-differentiable
    (complex-linear operators plus an injection); for maps that are only real-differentiable
    (a CNN on real and imaginary channels, :math:`|z|`, a conjugation) ``coefficients="real"`` uses
    :math:`\operatorname{Re} H` and real coefficients, identical to running on the real view.
    The regulariser is relative (Jacobi-scaled), so it does not stall at tight tolerances. A sample
    whose least-squares system is singular falls back to the Picard step instead of failing.
    Memory: :math:`2m + 3` states besides ``f``'s own.

    Parameters
    ----------
    f : callable
        The map, called as ``f(z)`` on a state shaped like ``z0``; must return the same structure,
        shapes and dtypes. It is always called on the whole batch.
    z0 : Tensor or tuple of Tensor
        Initial iterate, ``(batch, *shape)`` per tensor; floating or complex.
    tol, max_iter, stop_mode, on_failure
        As in :func:`banach`.
    m : int
        History size (>= 1; ``m = 1`` is the damped Picard iteration).
    lam : float
        Relative Tikhonov regularisation :math:`\lambda \ge 0` of the least-squares system.
    beta : float
        Mixing :math:`\beta \in (0, 1]`.
    coefficients : {"auto", "complex", "real"}
        ``"auto"``: complex when every component of the state is complex, else real.

    Returns
    -------
    FixedPointResult
        Solution, per-sample iterations, residuals, convergence flags and residual trace.

    Examples
    --------
    >>> import torch, fixedpoint
    >>> A = 0.9 * torch.eye(3)
    >>> b = torch.ones(2, 3)
    >>> result = fixedpoint.anderson(lambda z: z @ A + b, torch.zeros(2, 3), tol=1e-5)
    >>> torch.allclose(result.z, 10 * b), result.iterations.tolist()  # Picard needs 89
    (True, [3, 3])
    """
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"m (Anderson's history size) must be an integer >= 1, got {m!r}.")
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0 <= lam < float("inf"):
        raise ValueError(
            f"lam (Anderson's relative regularisation) must be a finite number >= 0, got {lam!r}."
        )
    mix = check_fraction(beta, "beta")
    if coefficients not in COEFFICIENTS:
        raise ValueError(
            f"coefficients must be one of {', '.join(map(repr, COEFFICIENTS))}, "
            f"got {coefficients!r}."
        )
    if coefficients == "complex":
        parts = check_state(z0, "z0")
        if not all(t.is_complex() for t in components(parts)):
            raise ValueError(
                "coefficients='complex' needs a complex state (every component complex), got "
                f"dtypes {[str(t.dtype) for t in parts]}; use coefficients='real' or 'auto'."
            )

    def make_step(x0: Tensor) -> Step:
        return _AndersonStep(x0, m, float(lam), mix)

    return iterate(
        f,
        z0,
        make_step,
        complex_view=coefficients != "real",
        tol=tol,
        max_iter=max_iter,
        stop_mode=stop_mode,
        on_failure=on_failure,
        method="anderson",
    )
