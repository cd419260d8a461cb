"""Invertible residual block ``y = x + g(x)`` with ``Lip(g) < 1`` (i-ResNet; MEL Alg. 2, Eq. 7)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ._base import InvertibleModule, replaying, store_callable, stored_callable
from ._errors import ConvergenceError
from ._reverse import relative_error
from ._validate import finite_number, one_of, positive_int

__all__ = ["InverseResult", "InvertibleResidual"]

_POLICIES = ("raise", "warn")
_NORMALISED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class InverseResult:
    """Result of inverting ``y = x + g(x)`` by a fixed-point solve ``z <- y - g(z)``.

    Attributes
    ----------
    x : Tensor
        The solution.
    iterations : int
        Iterations the solver ran (``-1`` when an external solver did not say).
    residual : float
        Relative fixed-point residual ``||z - (y - g(z))|| / ||z||`` at the returned ``x``
        (for the built-in solver: of the last step).
    converged : bool
        ``residual <= tol``.
    """

    x: Tensor
    iterations: int
    residual: float
    converged: bool


def _banach(
    f: Callable[[Tensor], Tensor], z0: Tensor, tol: float, max_iter: int
) -> tuple[Tensor, int, float]:
    """Plain fixed-point iteration ``z <- f(z)`` until the relative step is below ``tol``."""
    z = z0
    residual = math.inf
    for it in range(1, max_iter + 1):
        z_new = f(z)
        residual = relative_error(z_new - z, z_new)
        z = z_new
        if residual <= tol:
            return z, it, residual
    return z, max_iter, residual


class _SpectralScale(nn.Module):
    """Parametrization ``W -> W * min(1, c / sigma(W))`` with a power-iteration estimate of sigma.

    ``sigma`` is the spectral norm of the weight reshaped to ``(out, -1)``; for a convolution
    with ``K`` kernel taps the operator norm is at most ``sqrt(K) * sigma``, so ``c`` is set to
    ``lipschitz / sqrt(K)`` there (a guaranteed, conservative bound). The power-iteration
    vectors advance only in :meth:`update`, which :class:`InvertibleResidual` calls once per
    forward call in training mode (never while the engine replays layers), so the forward pass,
    the inverse and the recomputation all use the same normalised weight.
    """

    u: Tensor
    v: Tensor

    def __init__(self, weight: Tensor, bound: float) -> None:
        super().__init__()
        mat = weight.detach().reshape(weight.shape[0], -1)
        self.bound = bound
        self.register_buffer("u", nn.functional.normalize(torch.randn_like(mat[:, 0]), dim=0))
        self.register_buffer("v", nn.functional.normalize(torch.randn_like(mat[0]), dim=0))
        self.update(mat, iterations=20)

    @torch.no_grad()
    def update(self, mat: Tensor, iterations: int = 1) -> None:
        for _ in range(iterations):
            self.v.copy_(nn.functional.normalize(mat.T @ self.u, dim=0))
            self.u.copy_(nn.functional.normalize(mat @ self.v, dim=0))

    def forward(self, weight: Tensor) -> Tensor:
        mat = weight.reshape(weight.shape[0], -1)
        sigma = torch.dot(self.u, mat @ self.v)
        return weight / torch.clamp(sigma / self.bound, min=1.0)


class InvertibleResidual(InvertibleModule):
    r"""Residual block ``y = x + g(x, *context)`` inverted by the fixed point ``x = y - g(x)``.

    With ``Lip(g) < 1`` the map is a bijection and the Banach iteration ``z <- y - g(z)``,
    started at ``z = y``, converges linearly at rate ``Lip(g)`` (i-ResNet; MEL Alg. 2 and Eq. 7:
    a gradient step ``x - alpha grad D(x)`` is of this form with ``g = -alpha grad D``).

    Parameters
    ----------
    g : callable
        ``g(x, *context)`` shaped like ``x``. With ``lipschitz`` set, ``g`` must be an
        ``nn.Module`` whose layers with parameters are ``Linear``/``Conv1d/2d/3d`` (activations
        must be 1-Lipschitz, e.g. ReLU, ELU, tanh).
    lipschitz : float or None
        Spectral normalisation of every ``Linear``/``Conv`` of ``g`` so that
        ``Lip(g) <= lipschitz < 1`` (per layer: ``W * min(1, c / sigma)``, sigma estimated by
        power iteration; for convolutions with ``K`` taps ``c = lipschitz / sqrt(K)``, a
        guaranteed bound on the operator norm). ``None``: ``g`` is trusted to be a contraction
        (a physics step with ``alpha < 1 / ||A^H A||``) and nothing is normalised.
    solver : callable, optional
        ``solver(f, z0)`` returning the fixed point of ``f`` as a tensor or as an object with an
        attribute ``z`` (or ``x``); e.g. ``functools.partial(fixedpoint.solve, method="anderson",
        tol=1e-10)``. Default: Banach iteration to ``tol`` in at most ``max_iter`` steps.
    tol : float, optional
        Relative fixed-point residual to reach (default ``1e-5`` for 32-bit and ``1e-12`` for
        64-bit states). The residual of an external solver's answer is checked the same way.
    max_iter : int
        Iterations of the built-in solver.
    on_nonconvergence : {"raise", "warn"}
        What :meth:`inverse` does when the residual stays above ``tol``: raise
        :class:`ConvergenceError` or emit a ``RuntimeWarning``.
    parameters : iterable of tensors or modules
        Tensors ``g`` closes over that need gradients but are not parameters of ``g`` (e.g. a
        learnable step size). They are not registered: their owner moves and saves them.
    pass_context : bool
        Call ``g(x, *context)`` (default) or ``g(x)``.

    Notes
    -----
    The inverse is a solve stopped at ``tol``, so ``exact_inverse`` is ``False``: with
    ``check_drift="auto"`` a :class:`~revlayers.ReversibleSequence` checks this layer's
    reconstruction at every reverse step.

    Shapes: ``x``, ``y`` any shape and dtype ``g`` accepts (real or complex).
    """

    exact_inverse = False

    def __init__(
        self,
        g: Callable[..., Tensor],
        lipschitz: float | None = 0.9,
        *,
        solver: Callable[[Callable[[Tensor], Tensor], Tensor], object] | None = None,
        tol: float | None = None,
        max_iter: int = 200,
        on_nonconvergence: Literal["raise", "warn"] = "raise",
        parameters: Iterable[Tensor | nn.Module] = (),
        pass_context: bool = True,
    ) -> None:
        super().__init__()
        if not callable(g):
            raise TypeError(f"InvertibleResidual expects g to be callable, got {type(g).__name__}.")
        if lipschitz is not None:
            if isinstance(lipschitz, bool) or not isinstance(lipschitz, (int, float)):
                raise TypeError(
                    f"InvertibleResidual expects lipschitz to be a float in (0, 1) or None, got "
                    f"{type(lipschitz).__name__}."
                )
            finite_number(
                "InvertibleResidual",
                "lipschitz",
                lipschitz,
                low=0.0,
                high=1.0,
                expected="in (0, 1) so that x + g(x) is invertible",
            )
            if not isinstance(g, nn.Module):
                raise TypeError(
                    "InvertibleResidual(lipschitz=...) normalises the layers of g, so g must be an "
                    f"nn.Module, got {type(g).__name__}; pass lipschitz=None if g is a contraction "
                    "by construction."
                )
        if solver is not None and not callable(solver):
            raise TypeError(
                f"InvertibleResidual expects solver to be a callable solver(f, z0), got "
                f"{type(solver).__name__}."
            )
        if tol is not None:
            finite_number("InvertibleResidual", "tol", tol, low=0.0, expected="> 0 or None")
        positive_int("InvertibleResidual", "max_iter", max_iter)
        one_of(
            "InvertibleResidual",
            "on_nonconvergence",
            on_nonconvergence,
            _POLICIES,
            expected=f"in {list(_POLICIES)}",
        )
        store_callable(self, "g", g)
        self.lipschitz = lipschitz
        self.solver = solver
        self.tol = tol
        self.max_iter = max_iter
        self.on_nonconvergence = on_nonconvergence
        self.pass_context = pass_context
        self.declare(parameters)
        self._scales: list[tuple[nn.Module, _SpectralScale]] = []
        if lipschitz is not None and isinstance(g, nn.Module):
            self._normalise(g, float(lipschitz))

    def _normalise(self, g: nn.Module, lipschitz: float) -> None:
        bad = [
            name or type(g).__name__
            for name, m in g.named_modules()
            if not isinstance(m, _NORMALISED) and any(True for _ in m.parameters(recurse=False))
        ]
        if bad:
            raise ValueError(
                "InvertibleResidual(lipschitz=...) can bound Lip(g) only for Linear and Conv "
                f"layers and 1-Lipschitz activations, but g has other layers with parameters: "
                f"{bad}. Remove them, or pass lipschitz=None and guarantee Lip(g) < 1 yourself."
            )
        for m in g.modules():
            if isinstance(m, _NORMALISED):
                weight = m.weight
                taps = math.prod(weight.shape[2:]) if weight.dim() > 2 else 1
                scale = _SpectralScale(weight, lipschitz / math.sqrt(taps))
                parametrize.register_parametrization(m, "weight", scale)
                self._scales.append((m, scale))

    def layer_name(self) -> str:
        """Name the class and ``g``, e.g. ``InvertibleResidual(Sequential)``."""
        g = stored_callable(self, "g")
        return f"InvertibleResidual({getattr(g, '__name__', type(g).__name__)})"

    def extra_repr(self) -> str:
        return f"lipschitz={self.lipschitz}, max_iter={self.max_iter}"

    def _call_g(self, x: Tensor, context: tuple[object, ...]) -> Tensor:
        g = stored_callable(self, "g")
        out = g(x, *context) if self.pass_context else g(x)
        return out  # type: ignore[return-value]

    def forward(self, x: Tensor, *context: object) -> Tensor:
        if self.training and self._scales and not replaying():
            for m, scale in self._scales:
                original = m.parametrizations["weight"].original  # type: ignore[union-attr,index]
                scale.update(original.detach().reshape(original.shape[0], -1))
        return x + self._call_g(x, context)

    def _tolerance(self, y: Tensor) -> float:
        if self.tol is not None:
            return float(self.tol)
        real = y.real.dtype if y.is_complex() else y.dtype
        return 1e-12 if real == torch.float64 else 1e-5

    def solve_inverse(self, y: Tensor, *context: object) -> InverseResult:
        """Solve ``x + g(x) = y`` and report iterations, residual and convergence."""
        if not isinstance(y, Tensor):
            raise TypeError(f"InvertibleResidual.inverse expects a tensor, got {type(y).__name__}.")
        tol = self._tolerance(y)

        def step(z: Tensor) -> Tensor:
            return y - self._call_g(z, context)

        if self.solver is None:
            x, iterations, residual = _banach(step, y, tol, self.max_iter)
        else:
            out = self.solver(step, y)
            found = out if isinstance(out, Tensor) else getattr(out, "z", getattr(out, "x", None))
            if not isinstance(found, Tensor):
                raise TypeError(
                    "InvertibleResidual's solver must return a tensor or an object with a tensor "
                    f"attribute z or x, got {type(out).__name__}."
                )
            x = found
            iterations = int(getattr(out, "iterations", -1)) if not isinstance(out, Tensor) else -1
            residual = relative_error(step(x) - x, x)
        return InverseResult(x, iterations, residual, residual <= tol)

    def inverse(self, y: Tensor, *context: object) -> Tensor:
        result = self.solve_inverse(y, *context)
        if not result.converged:
            tol = self._tolerance(y)
            message = (
                f"{self.layer_name()}: the fixed-point inverse stopped at relative residual "
                f"{result.residual:.3g} > tol={tol:g} after {result.iterations} iterations. "
                "Raise max_iter, loosen tol, pass a faster solver (Anderson), or lower lipschitz "
                "(convergence rate is Lip(g))."
            )
            if self.on_nonconvergence == "raise":
                raise ConvergenceError(
                    message, iterations=result.iterations, residual=result.residual, tolerance=tol
                )
            warnings.warn(message, RuntimeWarning, stacklevel=2)
        return result.x
