"""How the models parametrise their positive scalars, and how many parameters a model has."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["count_parameters", "inverse_softplus", "positive"]


def positive(raw: Tensor) -> Tensor:
    """Return the positive parametrisation of step sizes and weights: ``softplus(raw)``."""
    return F.softplus(raw)


def inverse_softplus(value: float) -> float:
    """Return the ``raw`` with ``softplus(raw) == value > 0``: a positive initial value."""
    return value + math.log(-math.expm1(-value))


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters of ``model``, each shared tensor counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
