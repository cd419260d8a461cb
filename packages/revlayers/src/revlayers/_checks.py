"""Property checker for users' own invertible layers."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._base import frozen_stats, norm_layers, replay
from ._reverse import relative_error
from ._validate import finite_number

__all__ = ["check_inverse"]


def check_inverse(
    module: nn.Module, x: Tensor, *context: object, tol: float | None = None
) -> float:
    r"""Relative reconstruction error ``||inverse(forward(x)) - x|| / ||x||`` of a layer.

    Runs without gradients and leaves the module's state untouched (running statistics of norms
    are restored; layers that honour :func:`revlayers.replaying` skip their updates), so it can
    be called on a model in the middle of training.

    Parameters
    ----------
    module : nn.Module
        Any module with ``forward(x, *context)`` and ``inverse(y, *context)``.
    x : Tensor
        A representative input.
    *context
        Context arguments passed to both directions.
    tol : float, optional
        If given, raise ``ValueError`` with the measured figure when the error exceeds it.

    Returns
    -------
    float
        The relative error (about ``1e-7`` for exact float32 layers, ``1e-15`` in float64).
    """
    if not isinstance(module, nn.Module) or not callable(getattr(module, "inverse", None)):
        raise TypeError(
            "check_inverse expects an nn.Module with forward(x, *context) and "
            f"inverse(y, *context), got {type(module).__name__}."
        )
    if not isinstance(x, Tensor):
        raise TypeError(f"check_inverse expects x to be a tensor, got {type(x).__name__}.")
    if tol is not None:
        finite_number("check_inverse", "tol", tol, low=0.0, expected="> 0 or None")
    with torch.no_grad(), replay(), frozen_stats(norm_layers(module)):
        y = module(x, *context)
        x_rec = getattr(module, "inverse")(y, *context)  # noqa: B009 - nn.Module attribute typing
    if not isinstance(x_rec, Tensor) or x_rec.shape != x.shape:
        raise ValueError(
            f"check_inverse: {type(module).__name__}.inverse(forward(x)) returned "
            f"{getattr(x_rec, 'shape', type(x_rec).__name__)}, expected a tensor of shape "
            f"{tuple(x.shape)}."
        )
    error = relative_error(x_rec - x, x)
    if tol is not None and not error <= tol:
        raise ValueError(
            f"check_inverse: {type(module).__name__} is not inverted by its inverse: relative "
            f"reconstruction error {error:.3g} > tol={tol:g}."
        )
    return error
