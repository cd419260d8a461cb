r"""One optimizer step of :func:`unrolled.train`: plain (one Adam) or greedy (GLEAM Alg. 1).

The loss of a model on a batch :math:`(y, A, x)`:

.. math::

    \mathcal{L} = \ell(\hat x_N, x)                                  \quad\text{(default)}, \qquad
    \mathcal{L} = \textstyle\sum_{k=1}^{N} \ell(\hat x_k, x)         \quad\text{(RIM)}, \qquad
    \mathcal{L} = \ell(\hat x_N, x) + w \textstyle\sum_{k<N} \mathrm{MSE}(\hat x_k, x)
                                                                     \quad\text{(LUSER aux.)}

(:func:`model_loss`). The greedy engine hands the stages to :class:`greedytrain.GreedyTrainer`;
each module runs its stages with the strategy's ``inner`` mode (:func:`module_wrapper`).

Several processes (:mod:`._distributed`): the plain engine wraps the model's loss in
:class:`~torch.nn.parallel.DistributedDataParallel` (each rank its share of the batch, gradients
averaged); the greedy engine runs P-GLEAM through
:class:`greedytrain.distributed.DistributedGreedyTrainer` (modules spread over the ranks of each
of ``strategy.replicas`` pipelines). Mixed precision (:mod:`._precision`): forward and loss under
autocast, the loss scaled for float16 (per module for greedy).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

import greedytrain
from greedytrain.distributed import DistributedGreedyTrainer
from revlayers import ReversibleSequence

from .._base import Stage, StageContext, UnrolledModel
from .._batch import Batch
from .._checkpoint import checkpoint_segments
from .._compile import compile_networks
from .._strategy import Strategy
from ._distributed import World
from ._options import TrainOptions
from ._precision import MixedPrecision

__all__ = [
    "Engine",
    "GreedyEngine",
    "PlainEngine",
    "aux_loss_weight",
    "context_to",
    "make_engine",
    "model_loss",
    "module_wrapper",
]


def _make_scheduler(optimizer: torch.optim.Optimizer, opts: TrainOptions) -> Any:
    if opts.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=opts.steps, eta_min=opts.min_lr
        )
    if opts.scheduler == "step":
        every = opts.scheduler_step or max(1, opts.steps // 3)
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=every, gamma=opts.scheduler_gamma
        )
    return None


def _adam(params: list[nn.Parameter], opts: TrainOptions) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=opts.lr, betas=opts.betas, weight_decay=opts.weight_decay)


def _mse(x_hat: Tensor, x: Tensor) -> Tensor:
    d = x_hat - x
    return (torch.view_as_real(d) if d.is_complex() else d).square().mean()


def aux_loss_weight(model: nn.Module) -> float:
    """Return the model's auxiliary-loss weight ``model.aux_loss_weight`` (LUSER), 0 when absent."""
    weight = getattr(model, "aux_loss_weight", 0.0)
    if weight is None:
        return 0.0
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
        raise ValueError(
            f"{type(model).__name__}.aux_loss_weight must be a number >= 0, got {weight!r}"
        )
    return float(weight)


def model_loss(
    model: UnrolledModel, batch: Batch, loss_fn: Callable[[Tensor, Tensor], Tensor]
) -> Tensor:
    """Return the training loss of ``model`` on ``batch`` (see the module docstring)."""
    weight = aux_loss_weight(model)
    if model.loss_over_stages or weight > 0:
        outs = model.intermediates(batch.y, batch.physics, batch.x0)
        if model.loss_over_stages:
            return torch.stack([loss_fn(o, batch.target) for o in outs]).sum()
        total = loss_fn(outs[-1], batch.target)
        if len(outs) > 1:
            total = total + weight * torch.stack([_mse(o, batch.target) for o in outs[:-1]]).sum()
        return total
    return loss_fn(model(batch.y, batch.physics, batch.x0), batch.target)


class _Loss(nn.Module):
    """The model's training loss on a batch as a module (what DistributedDataParallel wraps)."""

    def __init__(self, model: UnrolledModel, loss_fn: Callable[..., Tensor]):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Batch) -> Tensor:
        return model_loss(self.model, batch, self.loss_fn)


def _fp32(model: nn.Module) -> MixedPrecision:
    device = next((t.device for t in [*model.parameters(), *model.buffers()]), "cpu")
    return MixedPrecision(model, "fp32", torch.device(device))


class PlainEngine:
    """Backprop, checkpoint, reversible and implicit: one Adam over the whole model.

    With a distributed ``world`` the loss module runs inside ``DistributedDataParallel``
    (``find_unused_parameters=False``: every trainable parameter gets a gradient each step, also
    through the custom autograd Functions of the reversible, implicit and CG steps, which
    return them as ordinary gradients); the logged loss is the mean over the ranks.
    """

    def __init__(
        self,
        model: UnrolledModel,
        loss_fn: Callable[..., Tensor],
        opts: TrainOptions,
        *,
        world: World | None = None,
        precision: MixedPrecision | None = None,
    ):
        self.model, self.loss_fn, self.opts = model, loss_fn, opts
        self.world = world if world is not None else World()
        self.precision = precision if precision is not None else _fp32(model)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = _adam(self.params, opts)
        self.scheduler = _make_scheduler(self.optimizer, opts)
        self.scaler = self.precision.scaler()
        self.runner: nn.Module = _Loss(model, loss_fn)
        if self.world.distributed:
            self.runner = DistributedDataParallel(self.runner, device_ids=None)
        #: This rank's share of each batch: ``(part, parts)``.
        self.data_share = (self.world.rank, self.world.size)

    def step(self, batch: Batch, step: int) -> tuple[float, dict[str, float]]:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self.precision.step():
            with self.precision.autocast():
                loss = self.runner(batch)
            if not self.world.distributed:
                _check_finite(loss, step)
            (loss if self.scaler is None else self.scaler.scale(loss)).backward()
        value = self.world.mean(loss.detach())  # every rank: the loss of the whole batch
        _check_finite(value, step)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.opts.clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.params, self.opts.clip_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()
        return float(value), {}

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def sync(self) -> None:
        """Every rank holds the whole model already (DDP keeps the replicas equal)."""

    def close(self) -> None:
        """Drop the DistributedDataParallel wrapper, and with it this rank's process group."""
        if isinstance(self.runner, DistributedDataParallel):
            self.runner = self.runner.module

    def state_dict(self) -> dict[str, Any]:
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "loss": loss_state(self.loss_fn),
        }
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        load_loss_state(self.loss_fn, state.get("loss"))


def loss_state(loss_fn: Callable[..., Tensor]) -> dict[str, Any] | None:
    """Return a stateful loss's state (:class:`MaskedNMSE`'s generator), ``None`` for others."""
    get = getattr(loss_fn, "state_dict", None)
    return get() if callable(get) else None


def load_loss_state(loss_fn: Callable[..., Tensor], state: dict[str, Any] | None) -> None:
    """Restore :func:`loss_state` (a checkpoint of 0.1 or of a stateless loss has none)."""
    load = getattr(loss_fn, "load_state_dict", None)
    if state is not None and callable(load):
        load(state)


def _check_finite(loss: Tensor, step: int) -> None:
    if not bool(torch.isfinite(loss.detach()).all()):
        raise FloatingPointError(
            f"the training loss is {float(loss.detach())} at step {step + 1}; the parameters were "
            "not updated. Lower lr, set clip_grad_norm, or check the data (resume from the last "
            "checkpoint after changing nothing but those)"
        )


class _CheckpointedModule(nn.Module):
    """A greedy module's stages under activation checkpointing (the ``"checkpoint"`` inner mode)."""

    def __init__(self, stages: Sequence[nn.Module], every: int):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.every = every

    def forward(self, state: Any, context: Any) -> Any:
        steps = [(lambda s, _stage=stage: _stage(s, context)) for stage in self.stages]
        if not torch.is_grad_enabled():
            for step in steps:
                state = step(state)
            return state
        return checkpoint_segments(steps, list(self.stages), state, self.every)


class _ReversibleModule(nn.Module):
    """A greedy module's stages as one reversible chain of their invertible layers."""

    def __init__(self, stages: Sequence[nn.Module], strategy: Strategy):
        super().__init__()
        layers = []
        for stage in stages:
            found = stage.invertible_layers() if isinstance(stage, Stage) else None
            if found is None:
                raise ValueError(
                    f"inner='reversible' needs invertible stages, got a {type(stage).__name__}"
                )
            layers += found
        self.chain = ReversibleSequence(
            layers,
            checkpoint_every=strategy.checkpoint_every,
            check_drift=strategy.check_drift,
            on_drift=strategy.on_drift,
        )

    def forward(self, state: Any, context: Any) -> Any:
        return self.chain(state, *context)


def module_wrapper(strategy: Strategy) -> Callable[[Sequence[nn.Module]], nn.Module] | None:
    """How a greedy module runs its stages: its strategy's ``inner`` mode (None: plain)."""
    if strategy.inner == "checkpoint":
        every = strategy.checkpoint_every or 1
        return lambda stages: _CheckpointedModule(stages, every)
    if strategy.inner == "reversible":
        return lambda stages: _ReversibleModule(stages, strategy)
    return None  # backprop; implicit stages switch their own backward (set_equilibrium_backward)


def _physics_on(physics: nn.Module, device: torch.device) -> nn.Module:
    """``physics`` if its tensors are on ``device``, else a copy moved there."""
    tensors = [*physics.parameters(), *physics.buffers()]
    if all(t.device == device for t in tensors):
        return physics
    return copy.deepcopy(physics).to(device)


def context_to(obj: Any, device: torch.device) -> Any:
    """Move a greedy module's context ``(y, physics)`` or target to ``device``.

    The operator is copied to the module's device (``physics.to`` would move the one every
    module shares); a context already there is returned as it is.
    """
    if isinstance(obj, StageContext):
        return StageContext(obj.y.to(device), _physics_on(obj.physics, device))
    if isinstance(obj, Tensor):
        return obj.to(device)
    return obj


class GreedyEngine:
    """GLEAM Alg. 1 through :class:`greedytrain.GreedyTrainer`; P-GLEAM across devices or ranks.

    In one process, ``strategy.devices`` places module m on ``devices[m % D]`` (the operator is
    copied to each device, :func:`context_to`). With a distributed ``world`` the modules are
    spread over the ranks of ``strategy.replicas`` pipelines
    (:class:`greedytrain.distributed.DistributedGreedyTrainer`); each pipeline takes its share
    of the batch, and :meth:`sync` gives every rank the modules the others trained.
    """

    def __init__(
        self,
        model: UnrolledModel,
        loss_fn: Callable[..., Tensor],
        opts: TrainOptions,
        strategy: Strategy,
        *,
        world: World | None = None,
        precision: MixedPrecision | None = None,
    ):
        self.model, self.loss_fn = model, loss_fn
        self.world = world if world is not None else World()
        self.precision = precision if precision is not None else _fp32(model)
        self.devices = strategy.devices
        self.home = torch.device(opts.device)
        self._at_home = False
        common: dict[str, Any] = {
            "scheduler_factory": (
                None
                if opts.scheduler == "none"
                else (lambda optimizer: _make_scheduler(optimizer, opts))
            ),
            "clip_grad_norm": opts.clip_grad_norm,
            "output_fn": model.readout,
            "module_wrapper": module_wrapper(strategy),
            "amp": self.precision.enabled,
            "amp_dtype": self.precision.dtype,
        }

        def factory(params: list[nn.Parameter]) -> torch.optim.Optimizer:
            return _adam(params, opts)

        self.trainer: greedytrain.GreedyTrainer
        if self.world.distributed:
            self.trainer = DistributedGreedyTrainer(
                model.stages,
                loss_fn,
                factory,
                modules=strategy.modules,
                replicas=strategy.replicas,
                device=torch.device(opts.device),
                **common,
            )
            self.data_share = (self.trainer.replica, strategy.replicas)
        else:
            devices = None if strategy.devices is None else list(strategy.devices)
            self.trainer = greedytrain.GreedyTrainer(
                model.stages,
                loss_fn,
                factory,
                modules=strategy.modules,
                devices=devices,
                context_to=context_to if devices is not None else None,
                **common,
            )
            self.data_share = (0, 1)

    def _place(self, home: bool) -> None:
        """Move every module to the model's device (``home``) or back to its own device."""
        devices = self.devices or ()
        for m, runner in enumerate(self.trainer.runners):
            runner.to(self.home if home else torch.device(devices[m % len(devices)]))
        self._at_home = home

    def step(self, batch: Batch, step: int) -> tuple[float, dict[str, float]]:
        self.model.train()
        if self._at_home:
            self._place(home=False)
        with self.precision.step():
            state0, context = self.model.prepare(batch.y, batch.physics, batch.x0)
            losses = self.trainer.train_step(state0, context, batch.target)
        for loss in losses:
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"a module's training loss is {loss} at step {step + 1} (module losses "
                    f"{losses}); lower lr or set clip_grad_norm"
                )
        return losses[-1], {f"loss_module_{m}": v for m, v in enumerate(losses)}

    @property
    def lr(self) -> float:
        for optimizer in self.trainer.optimizers:
            if optimizer is not None:
                return float(optimizer.param_groups[0]["lr"])
        return float("nan")

    def sync(self) -> None:
        """Give every rank (and the training device) the whole trained model.

        Under P-GLEAM each module's weights are broadcast from the rank of the first pipeline
        that trains it (collective); with ``devices`` every module moves to the model's device
        (and back to its own before the next step, :meth:`step` does it through greedytrain).
        """
        trainer = self.trainer
        if isinstance(trainer, DistributedGreedyTrainer):
            offset = trainer.replica * trainer.positions
            for m, runner in enumerate(trainer.runners):
                self.world.broadcast_module(runner, src=trainer.owner_of(m) - offset)
        elif self.devices is not None and not self._at_home:
            self._place(home=True)

    def close(self) -> None:
        """Stop the P-GLEAM heartbeat of this rank."""
        if isinstance(self.trainer, DistributedGreedyTrainer):
            self.trainer.close()

    def state_dict(self) -> dict[str, Any]:
        """Return the trainer's state (collective under P-GLEAM: whole on rank 0, else None)."""
        return {"greedy": self.trainer.state_dict(), "loss": loss_state(self.loss_fn)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trainer.load_state_dict(state["greedy"], restore_rng=False)
        load_loss_state(self.loss_fn, state.get("loss"))


#: The optimizer step of :func:`unrolled.train`: ``step(batch, step) -> (loss, extras)``,
#: ``lr``, ``state_dict()`` and ``load_state_dict()``.
Engine = PlainEngine | GreedyEngine


def make_engine(
    model: UnrolledModel,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    opts: TrainOptions,
    strategy: Strategy,
    *,
    world: World | None = None,
    precision: MixedPrecision | None = None,
) -> Engine:
    """Return the optimizer step of ``strategy``: GLEAM's greedy engine, else one Adam.

    ``world`` (default: this process alone) makes it data parallel or P-GLEAM; ``precision``
    (default float32) its mixed precision. ``opts.compile`` compiles the model's networks first
    (in place, before ``DistributedDataParallel`` wraps the model).
    """
    if opts.compile:
        compile_networks(model)
    if strategy.name == "greedy":
        return GreedyEngine(model, loss_fn, opts, strategy, world=world, precision=precision)
    return PlainEngine(model, loss_fn, opts, world=world, precision=precision)
