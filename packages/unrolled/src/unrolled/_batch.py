"""What the training loop and the models consume: a batch of measurements, operator and target."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

__all__ = ["Batch"]


@dataclass
class Batch:
    """One mini-batch of an inverse problem.

    Attributes
    ----------
    y:
        Measurements ``(B, *out_shape)`` as ``physics`` produces them.
    physics:
        The forward operator of this batch (per-sample maps and masks inside).
    target:
        The reference image ``(B, *image_shape)`` (complex for MRI, real for CT and deblurring).
    x0:
        The initial image, or ``None`` for the model's default (``physics.adjoint(y)``).
    """

    y: Tensor
    physics: nn.Module
    target: Tensor
    x0: Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        """Return the batch on ``device`` (the operator moves in place, as ``Module.to`` does)."""
        return replace(
            self,
            y=self.y.to(device),
            physics=self.physics.to(device),
            target=self.target.to(device),
            x0=None if self.x0 is None else self.x0.to(device),
        )

    @property
    def size(self) -> int:
        """The batch size."""
        return int(self.y.shape[0])
