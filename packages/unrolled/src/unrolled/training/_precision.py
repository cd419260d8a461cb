r"""Mixed precision for :func:`unrolled.train`: ``precision="fp32" | "bf16-mixed" | "fp16-mixed"``.

The learned networks run under ``torch.autocast`` (bfloat16 or float16 convolutions and matrix
products); everything an unrolled model needs to be exact stays in float32 / complex64:

* the physics (every :class:`physops.LinearOperator`, :func:`physops.cg`) and the fixed-point
  solvers of :mod:`fixedpoint` switch autocast off inside themselves;
* every invertible layer (a :class:`revlayers.InvertibleModule`: couplings, the orthogonal
  :math:`1\times 1` convolutions of i-RIM, MoDL's CG step) runs with autocast off, its inputs
  brought up to float32, except for the networks inside it (a coupling's function), which run
  under autocast and hand back float32. An inverse that subtracts what the forward added then
  recomputes the same bfloat16 network on the same float32 input, so reversible backprop rebuilds
  its states to float32 rounding, as without autocast;
* stages with an equilibrium (LUSER, DEQ) run in float32 entirely;
* ``"reversible"`` (also greedy's ``inner="reversible"``) keeps the exact state of every unroll
  (``checkpoint_every`` = the layers of one stage) unless the strategy sets ``checkpoint_every``
  (:func:`reversible_defaults`): without it the reverse pass of a deep chain drifts further in
  reduced precision than backprop's own error.

This module installs those rules as forward hooks on the model's modules (:class:`MixedPrecision`)
and removes them when training ends. ``"fp16-mixed"`` scales the loss with a
``torch.amp.GradScaler`` (one per module under ``strategy="greedy"``) so that small gradients do
not underflow; ``"bf16-mixed"`` needs none. Validation and evaluation run in float32.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from revlayers import InvertibleModule

from .._base import Stage, UnrolledModel
from .._strategy import Strategy
from .._validate import one_of
from ..models import EquilibriumStage

__all__ = [
    "PRECISIONS",
    "MixedPrecision",
    "check_precision",
    "precision_dtype",
    "reversible_defaults",
]

#: The values of ``TrainOptions.precision``.
PRECISIONS = ("fp32", "bf16-mixed", "fp16-mixed")
_DTYPES = {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}
_HALF = (torch.float16, torch.bfloat16)
# modules whose children are walked rather than run under autocast as a whole
_STRUCTURE = (InvertibleModule, Stage, UnrolledModel, nn.ModuleList, nn.ModuleDict)


def check_precision(precision: object) -> str:
    """Return ``precision`` if it is one of :data:`PRECISIONS`, else raise ``ValueError``."""
    return str(one_of("precision", precision, PRECISIONS, " (mixed precision of the networks)"))


def precision_dtype(precision: str) -> torch.dtype | None:
    """Return the autocast dtype of ``precision`` (``None`` for ``"fp32"``)."""
    return _DTYPES.get(check_precision(precision))


def reversible_defaults(strategy: Strategy, model: UnrolledModel, precision: str) -> Strategy:
    """Return ``strategy`` keeping every unroll's exact state when reversible in reduced precision.

    Unless the strategy sets ``checkpoint_every`` itself. A bfloat16 network recomputed on a
    rebuilt input that differs from the stored one by float32 rounding may round differently,
    so the reverse pass of a deep chain drifts more than in float32: measured on MoDL (coupling
    prior, mu = 1) at 32 unrolls, bf16-mixed reversible without checkpoints was 3e2 away from
    float32 backprop, with one exact state per unroll 5.2e-3, the same as bf16-mixed backprop
    (``benchmarks/precision.py``; README). Such a state costs one image per unroll. ``"fp32"``
    and the other strategies are returned unchanged.
    """
    if (
        check_precision(precision) == "fp32"
        or strategy.forward_name != "reversible"
        or strategy.checkpoint_every is not None
        or not len(model.stages)
    ):
        return strategy
    layers = model.stages[0].invertible_layers()  # type: ignore[operator]
    if not layers:
        return strategy
    return replace(strategy, checkpoint_every=len(layers))


def _upcast(value: Any) -> Any:
    """Return half-precision tensors (also in tuples, named tuples and lists) as float32."""
    if isinstance(value, Tensor):
        return value.float() if value.dtype in _HALF else value
    if isinstance(value, tuple):
        items = [_upcast(v) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    if isinstance(value, list):
        return [_upcast(v) for v in value]
    return value


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


class MixedPrecision:
    """Autocast rules of one model's training steps (see the module docstring).

    Parameters
    ----------
    model:
        The model; hooks go on its invertible layers (float32 islands), on the networks inside
        them (autocast regions) and on its equilibrium stages (float32).
    precision:
        One of :data:`PRECISIONS`; ``"fp32"`` installs nothing.
    device:
        The training device (its type is autocast's ``device_type``).
    """

    def __init__(self, model: nn.Module, precision: str, device: torch.device):
        self.precision = check_precision(precision)
        self.dtype = precision_dtype(precision)
        self.device_type = torch.device(device).type
        self.active = False  # process-wide: backward passes may run on other threads
        self._local = threading.local()
        self._handles: list[RemovableHandle] = []
        if self.dtype is not None:
            self._walk(model, inside_island=False)

    # ------------------------------------------------------------------ hooks
    def _stack(self) -> list[Any]:
        stack = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    def _hook(self, module: nn.Module, enter: Any, region: bool) -> None:
        """Run ``module`` inside ``enter()`` while a step is active; its output in float32.

        An island (``region=False``) also gets its inputs in float32.
        """

        def pre(_: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            context = enter() if self.active else None
            self._stack().append(context)
            if context is None:
                return None
            context.__enter__()
            return None if region else _upcast(args)

        def post(_: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
            context = self._stack().pop()
            if context is None:
                return None
            context.__exit__(None, None, None)
            return _upcast(output)

        self._handles.append(module.register_forward_pre_hook(pre))
        self._handles.append(module.register_forward_hook(post, always_call=True))

    def _island(self) -> contextlib.AbstractContextManager[None]:
        # float32 inside: autocast off (a no-op when it is off already)
        return torch.autocast(self.device_type, enabled=False)

    def _region(self) -> contextlib.AbstractContextManager[None]:
        return torch.autocast(self.device_type, dtype=self.dtype)

    def _walk(self, module: nn.Module, inside_island: bool) -> None:
        """Install the hooks of the islands and regions under ``module``."""
        for child in module.children():
            if isinstance(child, EquilibriumStage):
                self._hook(child, self._island, region=False)
            elif isinstance(child, InvertibleModule):
                self._hook(child, self._island, region=False)
                self._walk(child, inside_island=True)
            elif isinstance(child, _STRUCTURE):
                self._walk(child, inside_island)
            elif inside_island and _has_parameters(child):
                self._hook(child, self._region, region=True)
            elif _has_parameters(child):
                self._walk(child, inside_island)

    def close(self) -> None:
        """Remove every hook (the model computes exactly as before)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    # ------------------------------------------------------------------ use
    @property
    def enabled(self) -> bool:
        """Whether the networks run in reduced precision."""
        return self.dtype is not None

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """Run a training step (forward and backward) in mixed precision: the hooks are live."""
        self.active = self.enabled
        try:
            yield
        finally:
            self.active = False

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """``torch.autocast`` of the forward pass and the loss (a no-op for ``"fp32"``)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler | None:
        """Return a gradient scaler for ``"fp16-mixed"``, else ``None``."""
        if self.dtype != torch.float16:
            return None
        return torch.amp.GradScaler(self.device_type)
