"""Model files: the weights and the non-persistent buffers a state dict leaves out."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import greedytrain

__all__ = [
    "CHECKPOINT_FORMAT",
    "MODEL_FORMAT",
    "extra_buffers",
    "load_buffers",
    "load_model",
    "save_model",
]

MODEL_FORMAT = "memroll-unrolled-model"
#: The format of a training checkpoint (:func:`unrolled.train`'s ``checkpoint.pt``).
CHECKPOINT_FORMAT = "memroll-unrolled-train"


def load_buffers(model: nn.Module, buffers: dict[str, Tensor]) -> None:
    """Copy ``buffers`` (name -> tensor, as :func:`extra_buffers` gives them) into ``model``."""
    with torch.no_grad():
        for name, value in buffers.items():
            model.get_buffer(name).copy_(value)


def extra_buffers(model: nn.Module) -> dict[str, Tensor]:
    """Return the model's non-persistent buffers (e.g.

    certified Lipschitz bounds), which ``state_dict`` leaves out but which change what the model
    computes.
    """
    persistent = set(model.state_dict().keys())
    return {
        name: buffer.detach().cpu().clone()
        for name, buffer in model.named_buffers()
        if name not in persistent
    }


def save_model(
    model: nn.Module, path: str | os.PathLike[str], *, step: int | None = None, **info: Any
) -> Path:
    """Write the model's weights (and non-persistent buffers) atomically to ``path``."""
    return greedytrain.atomic_save(
        {
            "format": MODEL_FORMAT,
            "version": 1,
            "model_class": type(model).__name__,
            "step": step,
            "model": model.state_dict(),
            "buffers": extra_buffers(model),
            **info,
        },
        path,
    )


def load_model(
    model: nn.Module, path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load weights into ``model`` from a model file.

    The file is a ``best.pt`` (:func:`save_model`) or a training ``checkpoint.pt``; returns the
    file's other entries (``step``, ``metrics``, ...).
    """
    target = Path(path)
    if not target.is_file():
        raise FileNotFoundError(f"no model file at {str(target)!r}")
    # weights_only=False: training checkpoints hold optimizer and RNG states; load only files
    # written by unrolled
    data = torch.load(target, map_location=map_location, weights_only=False)
    if not isinstance(data, dict) or data.get("format") not in (MODEL_FORMAT, CHECKPOINT_FORMAT):
        raise ValueError(
            f"{str(target)!r} is not a model file of unrolled (best.pt or checkpoint.pt)"
        )
    if data.get("model_class") not in (None, type(model).__name__):
        raise ValueError(
            f"{str(target)!r} holds a {data['model_class']}, but the model is a "
            f"{type(model).__name__}: build the same model class with the same settings"
        )
    model.load_state_dict(data["model"])
    load_buffers(model, data.get("buffers", {}))
    return {k: v for k, v in data.items() if k not in ("model", "buffers", "engine", "rng")}
