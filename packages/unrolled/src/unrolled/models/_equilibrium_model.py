"""What LUSER and DEQ share.

Where they start, the solver of their equilibrium stages, the calibration of their gradient steps
and the diagnostics of their last solves.
"""

from __future__ import annotations

from typing import Any, cast

from torch import Tensor, nn

import fixedpoint
import physops

from .._base import UnrolledModel
from ..nn import GradientStep, ImageAdapter, calibrate_steps
from ._equilibrium import EquilibriumSolver, EquilibriumStage, as_solver

__all__ = ["INITS", "EquilibriumModel", "check_measurements_are_images"]

INITS = ("adjoint", "measurements")


class EquilibriumModel(UnrolledModel):
    """Base of :class:`~unrolled.LUSER` and :class:`~unrolled.DEQ`.

    Stages that are :class:`EquilibriumStage` s (a gradient step ``step`` and a prox each).

    ``init="measurements"`` starts from ``y`` itself (deblurring, where the measurements are
    images, checked to be images of the model's shape); ``"adjoint"`` from ``A^H y``.
    """

    init: str

    def __init__(self, adapter: ImageAdapter, init: str):
        super().__init__(adapter)
        hint = " (x0 = A^H y: MRI, CT) or 'measurements' (x0 = y: deblurring)"
        if init not in INITS:
            raise ValueError(f"init must be 'adjoint'{hint}, got {init!r}")
        self.init = init

    # ------------------------------------------------------------------ start from y
    def initial_state(self, y: Tensor, physics: nn.Module, x0: Tensor | None) -> Any:
        """``y`` itself for ``init="measurements"`` (without ``x0``), else the base's."""
        if x0 is None and self.init == "measurements":
            return self.adapter.to_net(y)
        return super().initial_state(y, physics, x0)

    def check_inputs(self, y: Tensor, physics: object, x0: Tensor | None) -> None:
        """Run the base's checks, and for ``init="measurements"`` check that ``y`` is an image."""
        super().check_inputs(y, physics, x0)
        if x0 is None and self.init == "measurements":
            check_measurements_are_images(self.adapter, y, physics)

    # ------------------------------------------------------------------ the equilibrium stages
    def equilibrium_stages(self) -> list[EquilibriumStage]:
        """Return the stages, typed as equilibrium stages."""
        return [cast(EquilibriumStage, stage) for stage in self.stages]

    @property
    def solver(self) -> EquilibriumSolver:
        """The equilibrium settings of every stage.

        Assign a new one, or a dict of its fields, to change them all.
        """
        return self.equilibrium_stages()[0].solver

    @solver.setter
    def solver(self, value: EquilibriumSolver | dict[str, Any] | None) -> None:
        chosen = as_solver(value)
        for stage in self.equilibrium_stages():
            stage.solver = chosen

    def gradient_steps(self) -> list[GradientStep]:
        """Return the gradient-step layers (one per distinct stage)."""
        seen: dict[int, GradientStep] = {}
        for stage in self.equilibrium_stages():
            step = cast(GradientStep, stage.step)
            seen.setdefault(id(step), step)
        return list(seen.values())

    def calibrate_steps(
        self,
        physics: physops.LinearOperator,
        x_like: Tensor,
        fraction: float = 1.0,
        iterations: int = 30,
    ) -> float:
        r"""Set every step size to ``fraction / L`` and return ``L``.

        :math:`L = \lambda_{\max}(A^H A)` by power iteration on ``x_like`` (an image of the
        physics). For CT, whose :math:`\|A^H A\|` grows with the image size and the number of
        angles.
        """
        return calibrate_steps(self.gradient_steps(), physics, x_like, fraction, iterations)

    def equilibrium_diagnostics(self) -> list[fixedpoint.ImplicitDiagnostics | None]:
        """Per stage, the diagnostics of its last solve (``None`` before the first call).

        Each is a :class:`fixedpoint.ImplicitDiagnostics`: ``forward.iterations``,
        ``forward.residuals`` and ``forward.converged`` per sample, and in ``"implicit"`` mode
        ``backward`` (the same for the backward solve) once ``loss.backward()`` ran.
        """
        return [stage.diagnostics for stage in self.equilibrium_stages()]


def check_measurements_are_images(adapter: ImageAdapter, y: Tensor, physics: object) -> None:
    """``init='measurements'`` starts from ``y``: it must be an image of the physics."""
    hint = (
        "init='measurements' starts from y itself (deblurring), so y must be an image; use "
        "init='adjoint' (x0 = A^H y) for physics whose measurements are not images (MRI, CT), "
        "or pass x0"
    )
    try:
        adapter.check(y, "y")
    except (TypeError, ValueError) as err:
        raise type(err)(f"{err}; {hint}") from None
    in_shape = getattr(physics, "in_shape", None)
    out_shape = getattr(physics, "out_shape", None)
    if in_shape is not None and out_shape is not None and tuple(in_shape) != tuple(out_shape):
        raise ValueError(
            f"{type(physics).__name__} maps images of shape {tuple(in_shape)} to measurements of "
            f"shape {tuple(out_shape)}; {hint}"
        )
