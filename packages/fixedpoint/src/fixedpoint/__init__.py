"""Banach and Anderson fixed-point solvers, implicit gradients and inversion of gradient steps.

The public API (see ``README.md`` for an overview):

* :func:`solve` (by name: :func:`get_solver`, :func:`register_solver`), :func:`anderson`,
  :func:`banach`, :func:`broyden` -> :class:`FixedPointResult` (``x``, ``iterations``,
  ``residuals``, ``converged``, ``trace``); failures by :class:`ConvergenceWarning` or
  :class:`ConvergenceError`, under the policy :meth:`FixedPointResult.check`;
  ``solve(..., differentiable=True)`` backpropagates through the iterations;
* :func:`implicit` (``backward="implicit" | "jacobian_free" | "phantom" | "unrolled"``, with
  :class:`ImplicitDiagnostics`) and :func:`spectral_radius`;
* :func:`invert_step`.
"""

from ._anderson import anderson
from ._banach import banach
from ._broyden import broyden
from ._implicit import ImplicitDiagnostics, implicit
from ._invert import invert_step
from ._result import ConvergenceError, ConvergenceWarning, FixedPointResult
from ._solve import available_solvers, get_solver, register_solver, solve, unregister_solver
from ._spectral import spectral_radius
from ._state import State

# the one place the version is written: hatchling reads it for the wheel (pyproject's
# [tool.hatch.version]), and a source tree on PYTHONPATH (the GPU lane) reports it too
__version__ = "0.2.0"

__all__ = [
    "ConvergenceError",
    "ConvergenceWarning",
    "FixedPointResult",
    "ImplicitDiagnostics",
    "State",
    "__version__",
    "anderson",
    "available_solvers",
    "banach",
    "broyden",
    "get_solver",
    "implicit",
    "invert_step",
    "register_solver",
    "solve",
    "spectral_radius",
    "unregister_solver",
]
