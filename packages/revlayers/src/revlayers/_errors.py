"""Exceptions for numerical failures of a reverse pass (bad input raises ValueError/TypeError)."""

from __future__ import annotations

__all__ = ["ConvergenceError", "DriftError"]


class DriftError(RuntimeError):
    """A state rebuilt by the reverse pass drifted past ``check_drift`` from the forward pass.

    Attributes
    ----------
    layer_index : int
        Position of the layer in its :class:`~revlayers.ReversibleSequence`.
    layer_name : str
        A short description of the layer (its class, or the wrapped function's name).
    kind : str
        ``"layer"`` (the rebuilt input, passed through the layer, does not reproduce the state it
        was rebuilt from) or ``"checkpoint"`` (the rebuilt state differs from the state stored by
        the forward pass).
    drift : float
        The measured relative error.
    tolerance : float
        The ``check_drift`` tolerance it exceeded.
    """

    def __init__(
        self,
        message: str,
        *,
        layer_index: int,
        layer_name: str,
        kind: str,
        drift: float,
        tolerance: float,
    ) -> None:
        super().__init__(message)
        self.layer_index = layer_index
        self.layer_name = layer_name
        self.kind = kind
        self.drift = drift
        self.tolerance = tolerance


class ConvergenceError(RuntimeError):
    """An iterative inverse (fixed-point solve) stopped before reaching its tolerance.

    Attributes
    ----------
    iterations : int
        Iterations run (``-1`` when an external solver did not say).
    residual : float
        Final relative fixed-point residual ``||z - f(z)|| / ||z||``.
    tolerance : float
        The tolerance that was asked for.
    """

    def __init__(self, message: str, *, iterations: int, residual: float, tolerance: float) -> None:
        super().__init__(message)
        self.iterations = iterations
        self.residual = residual
        self.tolerance = tolerance
