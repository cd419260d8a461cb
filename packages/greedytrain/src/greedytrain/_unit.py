"""One GLEAM module: its runner, optimizer, scheduler, loss, clipping and AMP, on one device."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from ._split import check_same_layout
from ._validate import number

__all__ = ["LossFn", "ModuleUnit", "OptimizerFactory", "SchedulerFactory", "per_module"]

LossFn = Callable[[Any, Any], Tensor]
OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]
T = TypeVar("T")


def default_optimizer(params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """GLEAM's choice: Adam with beta = (0.9, 0.999), here with PyTorch's default lr = 1e-3."""
    return torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.999))


def per_module(value: T | Sequence[T], modules: int, name: str) -> list[T]:
    """``value`` repeated for every module, or a list/tuple of one value per module."""
    if isinstance(value, list | tuple):
        if len(value) != modules:
            raise ValueError(
                f"{name} was given as a sequence of {len(value)} entries, but there are "
                f"{modules} modules: give one entry per module, or a single value for all"
            )
        return list(value)
    return [value] * modules  # type: ignore[list-item]


class ModuleUnit:
    """The training machinery of module ``index`` (stages ``first`` .. ``last``).

    ``forward`` runs the module under autocast (when asked) and returns its output state and its
    loss; ``backward_root`` gives the (weighted, scaled) tensor to backpropagate; ``step`` applies
    gradient clipping, the optimizer and the scheduler, then drops the gradients.
    """

    def __init__(
        self,
        index: int,
        first: int,
        last: int,
        runner: nn.Module,
        device: torch.device | None,
        loss_fn: LossFn,
        weight: float,
        optimizer_factory: OptimizerFactory | None,
        scheduler_factory: SchedulerFactory | None,
        clip_grad_norm: float | None,
        amp: bool,
        amp_dtype: torch.dtype | None,
        check_layout: bool,
    ) -> None:
        self.index, self.first, self.last = index, first, last
        self.runner = runner
        self.device = device
        self.loss_fn = loss_fn
        self.weight = weight
        self.clip_grad_norm = clip_grad_norm
        self.check_layout = check_layout
        self.params = [p for p in runner.parameters() if p.requires_grad]
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        if self.params:
            factory = optimizer_factory if optimizer_factory is not None else default_optimizer
            self.optimizer = factory(self.params)
            if not isinstance(self.optimizer, torch.optim.Optimizer):
                raise TypeError(
                    f"optimizer_factory must return a torch.optim.Optimizer, got "
                    f"{type(self.optimizer).__name__} for module {index}"
                )
            if scheduler_factory is not None:
                self.scheduler = scheduler_factory(self.optimizer)
                if not (hasattr(self.scheduler, "step") and hasattr(self.scheduler, "state_dict")):
                    raise TypeError(
                        "scheduler_factory must return an LR scheduler (with step() and "
                        f"state_dict()), got {type(self.scheduler).__name__} for module {index}"
                    )
        self.amp = amp
        self.amp_dtype = amp_dtype
        self.scaler: torch.amp.GradScaler | None = None
        if amp and self.optimizer is not None and self._amp_dtype_for(device) == torch.float16:
            self.scaler = torch.amp.GradScaler(device.type if device is not None else "cuda")

    @property
    def trainable(self) -> bool:
        return self.optimizer is not None

    @property
    def name(self) -> str:
        if self.first == self.last:
            stages = f"stage {self.first}"
        else:
            stages = f"stages {self.first}-{self.last}"
        return f"module {self.index} ({stages})"

    def _amp_dtype_for(self, device: torch.device | None) -> torch.dtype:
        if self.amp_dtype is not None:
            return self.amp_dtype
        return torch.float16 if device is not None and device.type == "cuda" else torch.bfloat16

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self._amp_dtype_for(device))

    def forward(
        self,
        state: Any,
        context: Any,
        target: Any,
        output_fn: Callable[[Any], Any],
        device: torch.device,
    ) -> tuple[Any, Tensor]:
        """Run the module; return its output state and unweighted loss.

        The loss is ``loss_fn(output_fn(out), target)``, computed under autocast with ``amp``.
        """
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
        grad_mode = torch.enable_grad() if self.trainable else torch.no_grad()
        with grad_mode, self.autocast(device):
            out = self.runner(state, context)
            if self.check_layout:
                check_same_layout(state, out, self.name)
            loss = self.loss_fn(output_fn(out), target)
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise ValueError(
                f"loss_fn of {self.name} returned {shape}; it must return a scalar tensor "
                "(reduce with .mean() or .sum())"
            )
        if self.trainable and not loss.requires_grad:
            raise ValueError(
                f"the loss of {self.name} does not depend on its parameters: check that "
                "output_fn does not detach the state and that the stages use their parameters"
            )
        return out, loss

    def backward_root(self, loss: Tensor) -> Tensor:
        """Return the tensor to backpropagate for ``loss``: weighted, and scaled under fp16 AMP."""
        root = loss.reshape(()) * self.weight if self.weight != 1.0 else loss.reshape(())
        if self.scaler is not None:
            root = self.scaler.scale(root)
        return root

    def step(self, before_step: Callable[[list[nn.Parameter]], None] | None = None) -> None:
        """Clip, update, advance the scheduler and drop the gradients."""
        if self.optimizer is None:
            return
        if before_step is not None:
            before_step(self.params)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.params, self.clip_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return {
            "runner": self.runner.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.runner.load_state_dict(state["runner"])
        if self.optimizer is not None and state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])


def check_weight(weight: object, index: int) -> float:
    """Return module ``index``'s loss weight, a finite number >= 0."""
    return number(weight, f"loss_weights[{index}]", low=0, expected="finite and >= 0")


def check_clip(clip: object, index: int) -> float | None:
    """Return module ``index``'s gradient-norm bound (a finite number > 0), or None."""
    if clip is None:
        return None
    return number(
        clip,
        f"clip_grad_norm for module {index}",
        low=0,
        low_open=True,
        expected="a finite number > 0 (the largest gradient norm), or None for no clipping",
        type_expected="a number or None",
    )


def disjoint_parameters(runners: Iterable[nn.Module]) -> None:
    """Raise when a parameter belongs to two modules (GLEAM gives each module its own optimizer)."""
    owner: dict[int, int] = {}
    for m, runner in enumerate(runners):
        for p in runner.parameters():
            if id(p) in owner and owner[id(p)] != m:
                raise ValueError(
                    f"a parameter is shared by modules {owner[id(p)]} and {m}; greedy training "
                    "gives every module its own optimizer, so shared (tied) weights must live in "
                    "one module: choose a split that keeps the stages sharing weights together, "
                    "or train end-to-end (modules=1)"
                )
            owner[id(p)] = m
