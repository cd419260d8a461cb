"""GreedyTrainer: GLEAM greedy module-wise training (Alg. 1) and single-process P-GLEAM (Alg. 2)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ._checkpoint import (
    VERSION,
    atomic_save,
    check_version,
    checkpoint_header,
    get_rng_state,
    read_checkpoint,
    set_rng_state,
)
from ._split import StageSequence, split_stages
from ._tree import tree_detach, tree_leaves, tree_to
from ._unit import (
    LossFn,
    ModuleUnit,
    OptimizerFactory,
    SchedulerFactory,
    check_clip,
    check_weight,
    disjoint_parameters,
    per_module,
)
from ._validate import as_devices, as_stages, callable_or_none, integer

__all__ = ["GreedyTrainer"]

ModuleWrapper = Callable[[Sequence[nn.Module]], nn.Module]
ContextTo = Callable[[Any, torch.device], Any]


def _identity(state: Any) -> Any:
    return state


def _first_device(module: nn.Module) -> torch.device | None:
    for tensor in [*module.parameters(), *module.buffers()]:
        return tensor.device
    return None


def _state_device(state: Any) -> torch.device:
    leaves = tree_leaves(state)
    return leaves[0].device if leaves else torch.device("cpu")


def _module_settings(
    m_count: int,
    loss_fn: Any,
    optimizer_factory: Any,
    scheduler_factory: Any,
    loss_weights: Any,
    clip_grad_norm: Any,
) -> list[dict[str, Any]]:
    """Return each module's loss, factories, weight and clipping, checked."""
    losses = per_module(loss_fn, m_count, "loss_fn")
    factories = per_module(optimizer_factory, m_count, "optimizer_factory")
    schedulers = per_module(scheduler_factory, m_count, "scheduler_factory")
    weights = per_module(loss_weights, m_count, "loss_weights")
    clips = per_module(clip_grad_norm, m_count, "clip_grad_norm")
    settings = []
    for m in range(m_count):
        if not callable(losses[m]):
            raise TypeError(
                f"loss_fn for module {m} must be callable as loss_fn(prediction, target) -> "
                f"scalar tensor, got {losses[m]!r}"
            )
        callable_or_none(
            factories[m],
            f"optimizer_factory for module {m}",
            "factory(params) -> torch.optim.Optimizer, or None for Adam",
        )
        callable_or_none(
            schedulers[m], f"scheduler_factory for module {m}", "factory(optimizer) -> LR scheduler"
        )
        settings.append(
            {
                "loss_fn": losses[m],
                "optimizer_factory": factories[m],
                "scheduler_factory": schedulers[m],
                "weight": check_weight(weights[m], m),
                "clip_grad_norm": check_clip(clips[m], m),
            }
        )
    return settings


class GreedyTrainer:
    r"""Greedy module-wise training of an unrolled network (GLEAM); end-to-end with ``modules=1``.

    The N stages are grouped into M contiguous modules; module :math:`m` maps the detached output
    of module :math:`m-1` to its own output and is trained on its own loss (GLEAM Eq. 10):

    .. math::

        x^{(m)} = F_{\theta_m}\big(\operatorname{sg}[x^{(m-1)}];\ c\big), \qquad
        \theta_m \leftarrow \operatorname{opt}_m\Big(\nabla_{\theta_m}
        w_m \mathcal{L}_m\big(g(x^{(m)}), x\big)\Big),

    where :math:`\operatorname{sg}` stops gradients (``detach``), :math:`c` is the context
    (measurements, operator), :math:`g` is ``output_fn`` and :math:`x` the target. One
    ``train_step`` runs Alg. 1 for one mini-batch: forward of module m, backward, update, graph
    freed, then module m + 1. Training memory is therefore that of one module, not of the network.

    With ``devices`` of length D, module m lives on ``devices[m % D]`` and the modules are handled
    in blocks of D (P-GLEAM, Alg. 2): the D forward passes of a block run in a chain, then their
    backward passes are issued together (one autograd call; on CUDA the autograd engine runs each
    device's part on its own thread and stream, so they overlap). The updates equal GLEAM's.

    Parameters
    ----------
    stages
        The N stages (``nn.Module``), each called as ``stage(state, context) -> state``. ``state``
        is a tensor or a (nested) tuple / list / dict of tensors, e.g. i-RIM's ``(eta, s)``.
    loss_fn
        ``loss_fn(prediction, target) -> scalar tensor``; GLEAM gives every module the same loss.
        A list of M callables gives each module its own.
    optimizer_factory
        ``factory(params) -> torch.optim.Optimizer``, called once per module with that module's
        trainable parameters; None: Adam(lr=1e-3, betas=(0.9, 0.999)) as in GLEAM. A list of M
        factories gives each module its own.
    modules
        M, the number of modules; None means M = N (GLEAM's setting), 1 means end-to-end.
    devices
        None: every module stays where its stages are. A device or list of D devices: module m is
        moved to ``devices[m % D]`` (single-process P-GLEAM when D > 1).
    split
        ``"even"`` (N/M stages each; M must divide N), ``"balanced"`` (sizes differ by at most one,
        the first modules take the extra stages), or a list of M sizes. See ``module_sizes``.
    loss_weights
        A weight per module (or one for all) multiplying its loss before backward.
    scheduler_factory
        ``factory(optimizer) -> LR scheduler``, stepped once per ``train_step`` after the update.
    clip_grad_norm
        Clip each module's gradient norm to this value (per module: a list), or None.
    amp
        Run forward and loss under ``torch.autocast`` on each module's device (bfloat16 on CPU,
        float16 with a per-module ``GradScaler`` on CUDA, unless ``amp_dtype`` says otherwise).
    amp_dtype
        The autocast dtype when ``amp`` is true.
    output_fn
        Maps a state to the prediction the loss and metrics see (default: the state itself), e.g.
        ``lambda s: s[0]`` for i-RIM's ``(eta, s)``.
    module_wrapper
        Builds a module's runner from its list of stages, ``wrapper(stages) -> nn.Module`` called
        as ``runner(state, context) -> state`` and computing the same function as applying the
        stages in order (e.g. wrapped in activation checkpointing or a reversible engine).
        Default: :class:`StageSequence`.
    context_to
        ``context_to(obj, device) -> obj`` moves the context and the target to a module's device
        (only called when ``devices`` is given). Default: move every tensor in the (nested)
        structure, leave other objects (e.g. an operator module) as they are.
    check_shapes
        Raise ``ValueError`` when a stage (or a wrapped module) returns a state whose nesting or
        tensor shapes differ from its input's.

    Attributes
    ----------
    module_sizes : list of int
        The number of stages of each module; ``module_ranges`` gives their stage indices.
    runners : nn.ModuleList
        The M module runners (holding the stages).
    optimizers, schedulers : list
        Per module (None for a module without trainable parameters / without a scheduler).
    step : int
        The number of ``train_step`` calls so far (restored by :meth:`load`).

    Examples
    --------
    >>> stages = [Stage() for _ in range(8)]                       # doctest: +SKIP
    >>> trainer = GreedyTrainer(stages, nn.functional.l1_loss, None, modules=8)  # doctest: +SKIP
    >>> losses = trainer.train_step(x0, {"y": y, "A": A}, x)       # 8 floats  # doctest: +SKIP
    """

    def __init__(
        self,
        stages: Sequence[nn.Module] | nn.ModuleList | nn.Sequential,
        loss_fn: LossFn | Sequence[LossFn],
        optimizer_factory: OptimizerFactory | Sequence[OptimizerFactory] | None = None,
        modules: int | None = None,
        devices: Sequence[torch.device | str | int] | torch.device | str | None = None,
        *,
        split: str | Sequence[int] = "even",
        loss_weights: float | Sequence[float] = 1.0,
        scheduler_factory: SchedulerFactory | Sequence[SchedulerFactory | None] | None = None,
        clip_grad_norm: float | Sequence[float | None] | None = None,
        amp: bool = False,
        amp_dtype: torch.dtype | None = None,
        output_fn: Callable[[Any], Any] | None = None,
        module_wrapper: ModuleWrapper | None = None,
        context_to: ContextTo | None = None,
        check_shapes: bool = True,
    ) -> None:
        stage_list = as_stages(stages)
        n = len(stage_list)
        m_count = n if modules is None else modules
        self.module_sizes: list[int] = split_stages(n, m_count, split)
        starts = [sum(self.module_sizes[:m]) for m in range(m_count)]
        self.module_ranges: list[range] = [
            range(s, s + size) for s, size in zip(starts, self.module_sizes)
        ]
        self.stages: tuple[nn.Module, ...] = tuple(stage_list)
        self.devices = as_devices(devices)
        self.amp = bool(amp)
        if amp_dtype is not None and amp_dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"amp_dtype must be torch.float16 or torch.bfloat16, got {amp_dtype}")
        self.amp_dtype = amp_dtype
        callable_or_none(output_fn, "output_fn", "state -> prediction")
        self.output_fn: Callable[[Any], Any] = output_fn if output_fn is not None else _identity
        callable_or_none(context_to, "context_to", "context_to(obj, device) -> obj")
        self.context_to: ContextTo = context_to if context_to is not None else tree_to
        self.check_shapes = check_shapes
        settings = _module_settings(
            m_count, loss_fn, optimizer_factory, scheduler_factory, loss_weights, clip_grad_norm
        )
        callable_or_none(module_wrapper, "module_wrapper", "stages -> nn.Module")
        self.runners = nn.ModuleList(self._build_runners(module_wrapper))
        disjoint_parameters(self.runners)
        wrapped = check_shapes and module_wrapper is not None
        self.units: list[ModuleUnit] = [
            self._build_unit(m, settings[m], wrapped) for m in sorted(self._owned_modules())
        ]
        self._units_by_index = {unit.index: unit for unit in self.units}
        self._step = 0

    def _build_runners(self, module_wrapper: ModuleWrapper | None) -> list[nn.Module]:
        """Return one runner per module: its stages in a StageSequence, or the wrapper's."""
        runners: list[nn.Module] = []
        for m, r in enumerate(self.module_ranges):
            module_stages = list(self.stages[r.start : r.stop])
            if module_wrapper is None:
                runners.append(
                    StageSequence(module_stages, offset=r.start, check_shapes=self.check_shapes)
                )
                continue
            runner = module_wrapper(module_stages)
            if not isinstance(runner, nn.Module):
                raise TypeError(
                    f"module_wrapper returned a {type(runner).__name__} for module {m}; it must "
                    "return an nn.Module called as runner(state, context) -> state"
                )
            runners.append(runner)
        return runners

    def _build_unit(self, m: int, settings: dict[str, Any], check_layout: bool) -> ModuleUnit:
        """Move module ``m`` to its device and give it its optimizer, scheduler and scaler."""
        device = self._device_of(m)
        if device is not None:
            self.runners[m].to(device)
        r = self.module_ranges[m]
        return ModuleUnit(
            index=m,
            first=r.start,
            last=r.stop - 1,
            runner=self.runners[m],
            device=device,
            amp=self.amp,
            amp_dtype=self.amp_dtype,
            check_layout=check_layout,
            **settings,
        )

    # ------------------------------------------------------------------ layout
    def _owned_modules(self) -> set[int]:
        """Return the modules this process trains (all here; a subset in distributed)."""
        return set(range(len(self.module_sizes)))

    def _device_of(self, m: int) -> torch.device | None:
        if self.devices is not None:
            return self.devices[m % len(self.devices)]
        return _first_device(self.runners[m])

    @property
    def num_modules(self) -> int:
        """M, the number of modules."""
        return len(self.module_sizes)

    @property
    def num_stages(self) -> int:
        """N, the number of stages."""
        return len(self.stages)

    @property
    def step(self) -> int:
        """How many ``train_step`` calls have been made (restored by :meth:`load`; settable)."""
        return self._step

    @step.setter
    def step(self, value: int) -> None:
        self._step = integer(value, "step", low=0)

    def _per_module(self, attribute: str) -> list[Any]:
        return [
            getattr(self._units_by_index[m], attribute) if m in self._units_by_index else None
            for m in range(self.num_modules)
        ]

    @property
    def optimizers(self) -> list[torch.optim.Optimizer | None]:
        """Per module: its optimizer (None without trainable parameters or on another rank)."""
        return self._per_module("optimizer")

    @property
    def scalers(self) -> list[torch.amp.GradScaler | None]:
        """Per module: its AMP ``GradScaler`` (float16 autocast only), else None."""
        return self._per_module("scaler")

    @property
    def schedulers(self) -> list[Any]:
        """Per module: its LR scheduler, or None."""
        return self._per_module("scheduler")

    def __repr__(self) -> str:
        placement = "" if self.devices is None else f", devices={[str(d) for d in self.devices]}"
        return (
            f"{type(self).__name__}(stages={self.num_stages}, modules={self.num_modules}, "
            f"module_sizes={self.module_sizes}{placement}, step={self._step})"
        )

    # ------------------------------------------------------------------ training
    def _blocks(self) -> list[list[int]]:
        d = 1 if self.devices is None else len(self.devices)
        m_count = self.num_modules
        return [list(range(b, min(b + d, m_count))) for b in range(0, m_count, d)]

    def _place(
        self, unit: ModuleUnit, state: Any, context: Any, target: Any, cache: dict[Any, Any]
    ) -> tuple[Any, Any, Any, torch.device]:
        device = unit.device
        if self.devices is None or device is None:
            return tree_detach(state), context, target, device or _state_device(state)
        if device not in cache:
            cache[device] = (self.context_to(context, device), self.context_to(target, device))
        ctx, tgt = cache[device]
        return tree_detach(tree_to(state, device)), ctx, tgt, device

    def train_step(self, state0: Any, context: Any, target: Any) -> list[float]:
        """One GLEAM step on one mini-batch; returns the loss of every module (unweighted).

        Parameters
        ----------
        state0
            The initial state :math:`x^{(0)}` (e.g. the zero-filled or adjoint reconstruction);
            a tensor or a nested tuple / list / dict of tensors. It is detached.
        context
            Passed unchanged to every stage (measurements, operator, mask...).
        target
            The reference every module's loss compares its prediction with.

        Returns
        -------
        list of float
            ``losses[m]`` is ``loss_fn_m(output_fn(x^{(m)}), target)`` before its update.
        """
        cache: dict[Any, Any] = {}
        carry = [state0]  # the one reference to the state between blocks (see _train_block)
        del state0
        losses: list[Tensor] = []
        for block in self._blocks():
            self._train_block(block, carry, context, target, cache, losses)
        self._step += 1
        return [float(loss) for loss in losses]

    def _train_block(
        self,
        block: list[int],
        carry: list[Any],
        context: Any,
        target: Any,
        cache: dict[Any, Any],
        losses: list[Tensor],
    ) -> None:
        """Train the modules of ``block`` on the state in ``carry``; leave its output there.

        The forward passes run in a chain, then one backward call, then the updates. Nothing of
        the block's graphs outlives this call: its losses are kept detached, its outputs only as
        the detached next input, its gradients are set to None by the updates. So the next
        block's forward starts with no memory held for this block but that input (and each
        module's optimizer state). The input state travels in ``carry`` rather than as an
        argument, so that no caller's variable keeps it alive once the forward has used it (only
        the graph holds it, until the backward pass frees it).
        """
        state = carry.pop()
        units: list[ModuleUnit] = []
        roots: list[Tensor] = []
        for m in block:
            unit = self._units_by_index[m]
            inp, ctx, tgt, device = self._place(unit, state, context, target, cache)
            out, loss = unit.forward(inp, ctx, tgt, self.output_fn, device)
            state = tree_detach(out)
            losses.append(loss.detach())
            units.append(unit)
            if unit.trainable:
                roots.append(unit.backward_root(loss))
            del out, inp, loss
        if roots:
            # Disjoint graphs: one call computes every module's gradients; on CUDA the engine's
            # per-device threads run them concurrently.
            torch.autograd.backward(roots)
        del roots  # the last references to the graphs (and whatever their nodes hold)
        for unit in units:
            unit.step()
        carry.append(state)

    # ------------------------------------------------------------------ inference
    def _modes(self) -> list[bool]:
        return [runner.training for runner in self.runners]

    def _run_stages(self, state0: Any, context: Any, n_stages: int | None, each: str) -> list[Any]:
        """Return the states after each module (``each="module"``) or stage, up to ``n_stages``."""
        n = integer(
            self.num_stages if n_stages is None else n_stages,
            "n_stages",
            low=1,
            high=self.num_stages,
            expected=f"between 1 and the {self.num_stages} stages",
            type_expected="an int or None",
        )
        if each not in ("module", "stage"):
            raise ValueError(f"per must be 'module' or 'stage', got {each!r}")
        cache: dict[Any, Any] = {}
        states: list[Any] = []
        state = state0
        modes = self._modes()
        try:
            self.runners.eval()
            with torch.no_grad():
                for m, r in enumerate(self.module_ranges):
                    if r.start >= n:
                        break
                    state = self._infer_module(
                        m,
                        range(r.start, min(r.stop, n)),
                        state,
                        context,
                        cache,
                        states if each == "stage" else None,
                    )
                    if each == "module":
                        states.append(state)
        finally:
            for runner, mode in zip(self.runners, modes):
                runner.train(mode)
        return states

    def _infer_module(
        self,
        m: int,
        stages: range,
        state: Any,
        context: Any,
        cache: dict[Any, Any],
        per_stage: list[Any] | None,
    ) -> Any:
        """Run ``stages`` of module ``m`` (all of them through its runner) on its device."""
        unit = self._units_by_index.get(m)
        device = self._device_of(m) if unit is None else unit.device
        if self.devices is not None and device is not None:
            if device not in cache:
                cache[device] = self.context_to(context, device)
            context = cache[device]
            state = tree_to(state, device)
        autocast = (
            unit.autocast(device or _state_device(state))
            if unit is not None
            else contextlib.nullcontext()
        )
        with autocast:
            if per_stage is None and stages == self.module_ranges[m]:
                return self.runners[m](state, context)
            for i in stages:
                state = self.stages[i](state, context)
                if per_stage is not None:
                    per_stage.append(state)
        return state

    def predict(self, state0: Any, context: Any, n_stages: int | None = None) -> Any:
        """Inference with early exit: ``output_fn`` of the state after the first ``n_stages``.

        Runs in ``eval`` mode under ``torch.no_grad`` (and autocast when ``amp``). GLEAM trains
        every module to predict the target, so stopping early gives a usable (coarser)
        reconstruction (GLEAM Fig. 8 and 9). ``n_stages=None`` runs all N stages.
        """
        return self.output_fn(self._run_stages(state0, context, n_stages, "module")[-1])

    def evaluate(
        self,
        state0: Any,
        context: Any,
        target: Any,
        metric: Callable[[Any, Any], Any] | None = None,
        per: str = "module",
    ) -> list[float]:
        """``metric(output_fn(state), target)`` after every module (or stage, ``per="stage"``).

        ``metric`` defaults to each module's own loss function. The GLEAM paper's Fig. 9 is this
        with ``per="stage"`` and PSNR as the metric.
        """
        states = self._run_stages(state0, context, None, per)
        values: list[float] = []
        for k, state in enumerate(states):
            if metric is not None:
                fn: Callable[[Any, Any], Any] = metric
            else:
                m = (
                    k
                    if per == "module"
                    else next(i for i, r in enumerate(self.module_ranges) if k in r)
                )
                unit = self._units_by_index.get(m)
                if unit is None:
                    raise ValueError(f"module {m} is not trained by this process; pass a metric")
                fn = unit.loss_fn
            prediction = self.output_fn(state)
            tgt = target
            if isinstance(prediction, Tensor) and isinstance(target, Tensor):
                tgt = target.to(prediction.device)
            with torch.no_grad():
                values.append(float(fn(prediction, tgt)))
        return values

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, extra: Any = None) -> dict[str, Any]:
        """Return everything a bit-identical resume needs, as tensors and plain values.

        Modules, optimizers, schedulers, AMP scalers, the step counter, the RNG states (torch,
        CUDA, Python, NumPy) and the format version, plus ``extra``; it loads with
        ``torch.load(weights_only=True)`` as long as ``extra`` holds tensors and plain values.
        """
        data = checkpoint_header(self.module_sizes, self._step)
        data["units"] = [self._units_by_index[m].state_dict() for m in range(self.num_modules)]
        data["rng"] = [get_rng_state()]
        data["extra"] = extra
        return data

    def _check_compatible(self, data: dict[str, Any], where: str) -> None:
        if not isinstance(data, dict) or "module_sizes" not in data:
            raise ValueError(
                f"{where} is not a greedytrain state dict (see GreedyTrainer.state_dict)"
            )
        # version 1 dicts (greedytrain 0.1, loaded by the user) differ only in their RNG states
        check_version(data, where, accept=(1, VERSION))
        if list(data["module_sizes"]) != list(self.module_sizes):
            raise ValueError(
                f"{where} holds {len(data['module_sizes'])} modules of sizes "
                f"{data['module_sizes']}, but this trainer has {self.num_modules} modules of sizes "
                f"{self.module_sizes}: build the trainer with the same stages, modules and split"
            )

    def _own_rng_state(self, states: list[Any]) -> Any:
        """Return the RNG state this process restores from a checkpoint's list of them."""
        return states[0]

    def load_state_dict(self, data: dict[str, Any], restore_rng: bool = True) -> Any:
        """Restore what :meth:`state_dict` returned (this process's modules); return ``extra``."""
        self._check_compatible(data, "the state dict")
        for m, unit in self._units_by_index.items():
            unit.load_state_dict(data["units"][m])
        self._step = int(data["step"])
        if restore_rng:
            set_rng_state(self._own_rng_state(data["rng"]))
        return data.get("extra")

    def save(self, path: str | os.PathLike[str], extra: Any = None) -> None:
        """Write a checkpoint atomically that loads without running code.

        The file goes to a temporary file, is fsynced, then renamed onto ``path``: a crash or a
        full disk while saving leaves the previous checkpoint intact. ``extra`` (tensors and
        plain values, e.g. the epoch and data-loader position) is stored with it and returned
        by :meth:`load`; anything else is refused with a ``TypeError`` naming it.
        """
        atomic_save(self.state_dict(extra), path, weights_only=True)

    def load(self, path: str | os.PathLike[str], restore_rng: bool = True) -> Any:
        """Resume from a checkpoint written by :meth:`save` (or by the distributed trainer).

        Returns the ``extra`` saved with it. The file is read with
        ``torch.load(weights_only=True)``: a file that would need Python's full unpickler is
        refused (``ValueError`` saying what it refers to) and nothing in it runs; a file of another
        format version is refused naming it. Continuing training gives bit-identical results to a
        run that was never interrupted (same hardware, threads and data order).
        """
        return self.load_state_dict(read_checkpoint(path), restore_rng=restore_rng)
