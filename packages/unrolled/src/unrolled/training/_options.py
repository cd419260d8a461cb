"""The options of :func:`unrolled.train` and its deterministic data order."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch.utils.data import Sampler

from .._validate import boolean, finite_number, nonnegative_int, positive_int, unknown_name
from ._logger import check_logger
from ._metrics import get_loss
from ._precision import check_precision

__all__ = ["SCHEDULERS", "StepSampler", "TrainOptions", "batch_indices"]

SCHEDULERS = ("none", "cosine", "step")


# ------------------------------------------------------------------------------------------------
# options
# ------------------------------------------------------------------------------------------------
@dataclass
class TrainOptions:
    """The options of :func:`train` (also a config-file schema: every field is plain data).

    Attributes
    ----------
    steps:
        Total optimizer steps of the run (a resumed run continues up to it).
    batch_size:
        Samples per step (each epoch drops the remainder of its permutation).
    loss:
        Training loss by name: ``"l1"`` (complex L1, GLEAM), ``"mse"``, ``"nmse"``, ``"ssim"``,
        ``"masked_nmse"`` (i-RIM's Eq. 18; its masks are seeded by ``seed``).
    loss_options:
        Options of the loss (:func:`get_loss`'s keywords): ``{"fraction": 0.01}`` for
        ``"masked_nmse"``; the other losses take none.
    lr, betas, weight_decay:
        Adam's settings (GLEAM: ``betas=(0.9, 0.999)``).
    scheduler:
        ``"none"``, ``"cosine"`` (from ``lr`` to ``min_lr`` over ``steps``) or ``"step"``
        (multiply by ``scheduler_gamma`` every ``scheduler_step`` steps, default ``steps // 3``).
    clip_grad_norm:
        Clip the gradient norm (per module for greedy) to this value; ``None`` for no clipping.
    val_every:
        Validate every n steps (and at the end); ``None``: only at the end when ``val_data`` is
        given. Needs ``val_data``.
    val_batch_size, val_samples:
        Batch size of validation (default ``batch_size``) and the number of validation samples
        used (default all).
    checkpoint_every:
        Write ``checkpoint.pt`` every n steps (and always at the end); needs ``run_dir``.
    run_dir:
        Folder of the run's files (see the module docstring); ``None`` writes nothing.
    resume:
        Continue from ``run_dir/checkpoint.pt`` (which must exist). Without it, a ``run_dir``
        that already holds a checkpoint is refused, so no run is overwritten by accident.
    seed:
        Seeds torch, Python and NumPy at the start of a fresh run, and the data order.
    device:
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
    num_workers:
        ``DataLoader`` worker processes (the order stays deterministic).
    progress:
        Show a tqdm progress bar.
    log_every:
        Write a ``log.csv`` row every n steps.
    strategy_options:
        Options of the memory strategy (``checkpoint_every``, ``check_drift``, ``on_drift``,
        ``modules``, ``inner``, ``backward``, ``devices``, ``replicas``; see
        :class:`unrolled.Strategy`).
    precision:
        ``"fp32"``, ``"bf16-mixed"`` or ``"fp16-mixed"``: the learned networks run under
        ``torch.autocast`` in bfloat16 / float16, the physics, CG, fixed-point solvers and
        invertible layers in float32 (see :mod:`unrolled.training._precision`); float16 scales
        the loss (a ``GradScaler``, one per module for greedy). Validation runs in float32.
    logger:
        ``"csv"`` (the run folder's ``log.csv`` and ``val.csv``, always written) or
        ``"tensorboard"``: also TensorBoard event files in ``run_dir/tensorboard`` (needs the
        extra ``memroll-unrolled[tensorboard]`` and ``run_dir``).
    compile:
        Compile the model's learned networks (its priors) with ``torch.compile`` before training
        (:func:`unrolled.compile_networks`): in place, before ``DistributedDataParallel`` wraps
        the model, so parameters and checkpoints are unchanged and a resumed run may switch it.
        The physics, CG, the fixed-point solvers and the reversible engine stay eager (they loop
        on data-dependent tests or are custom autograd Functions). The first steps pay the
        compilation (tens of seconds on a CPU); the networks stay compiled after training. Step
        times compiled / eager are in the README's "torch.compile" section.
    """

    steps: int = 100
    batch_size: int = 1
    loss: str = "l1"
    loss_options: dict[str, Any] = field(default_factory=dict)
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    scheduler: str = "none"
    scheduler_step: int | None = None
    scheduler_gamma: float = 0.5
    min_lr: float = 0.0
    clip_grad_norm: float | None = None
    val_every: int | None = None
    val_batch_size: int | None = None
    val_samples: int | None = None
    checkpoint_every: int | None = None
    run_dir: str | None = None
    resume: bool = False
    seed: int = 0
    device: str = "cpu"
    num_workers: int = 0
    progress: bool = True
    log_every: int = 1
    strategy_options: dict[str, Any] = field(default_factory=dict)
    precision: str = "fp32"
    logger: str = "csv"
    compile: bool = False

    @classmethod
    def from_kwargs(cls, options: dict[str, Any]) -> TrainOptions:
        """Build and validate; an unknown name lists the valid options."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise ValueError(
                f"unknown training option {unknown[0]!r}; valid options: {', '.join(names)}"
            )
        out = cls(**options)
        out.validate()
        return out

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid option."""
        for name in ("steps", "batch_size", "log_every"):
            positive_int(name, getattr(self, name))
        for name in ("scheduler_step", "val_every", "val_batch_size", "val_samples"):
            if getattr(self, name) is not None:
                positive_int(name, getattr(self, name))
        if self.checkpoint_every is not None:
            positive_int("checkpoint_every", self.checkpoint_every)
        nonnegative_int("num_workers", self.num_workers)
        if not isinstance(self.loss_options, dict):
            raise ValueError(
                f"loss_options must be a dict of the loss's options, got {self.loss_options!r}"
            )
        try:
            get_loss(self.loss, **self.loss_options)
        except TypeError as err:  # an option the loss's constructor does not take
            raise ValueError(
                f"loss_options {self.loss_options!r} for loss {self.loss!r}: {err}"
            ) from None
        if self.scheduler not in SCHEDULERS:
            raise unknown_name("scheduler", self.scheduler, SCHEDULERS)
        finite_number("lr", self.lr, low=0, low_open=True)
        finite_number("weight_decay", self.weight_decay, low=0)
        finite_number("min_lr", self.min_lr, low=0)
        finite_number("scheduler_gamma", self.scheduler_gamma, low=0, low_open=True)
        if self.clip_grad_norm is not None:
            finite_number("clip_grad_norm", self.clip_grad_norm, low=0, low_open=True)
        betas = tuple(self.betas) if isinstance(self.betas, (list, tuple)) else None
        if (
            betas is None
            or len(betas) != 2
            or not all(
                isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1
                for b in betas
            )
        ):
            raise ValueError(
                f"betas must be two numbers in [0, 1) (Adam's beta1, beta2; GLEAM: (0.9, 0.999)), "
                f"got {self.betas!r}"
            )
        self.betas = (float(betas[0]), float(betas[1]))
        nonnegative_int("seed", self.seed)
        if not isinstance(self.strategy_options, dict):
            raise ValueError(
                "strategy_options must be a dict of strategy options (checkpoint_every, modules, "
                f"inner, ...), got {self.strategy_options!r}"
            )
        if self.resume and self.run_dir is None:
            raise ValueError("resume=True needs run_dir, the folder of the run to resume")
        if self.checkpoint_every is not None and self.run_dir is None:
            raise ValueError(
                "checkpoint_every needs run_dir, the folder to write checkpoint.pt into"
            )
        check_precision(self.precision)
        boolean("compile", self.compile, " (torch.compile the networks)")
        check_logger(self.logger)
        if self.logger != "csv" and self.run_dir is None:
            raise ValueError(
                f"logger={self.logger!r} needs run_dir, the folder to write its files into"
            )


# ------------------------------------------------------------------------------------------------
# data order
# ------------------------------------------------------------------------------------------------
def batch_indices(step: int, num_samples: int, batch_size: int, seed: int = 0) -> list[int]:
    """Return the dataset indices of training step ``step`` (0-based).

    A deterministic function of ``(seed, step)``.

    Epoch ``e = step // (num_samples // batch_size)`` shuffles the dataset with a generator
    seeded by ``(seed, e)``; the step takes the next ``batch_size`` indices of that permutation
    (the last ``num_samples % batch_size`` are dropped in that epoch).
    """
    per_epoch = num_samples // batch_size
    if per_epoch < 1:
        raise ValueError(
            f"batch_size={batch_size} is larger than the {num_samples} training samples: use "
            f"batch_size <= {num_samples}"
        )
    epoch, k = divmod(step, per_epoch)
    generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63))
    perm = torch.randperm(num_samples, generator=generator)
    return [int(i) for i in perm[k * batch_size : (k + 1) * batch_size]]


class StepSampler(Sampler[list[int]]):
    """Yields the index lists of steps ``start .. stop - 1`` (a ``DataLoader`` batch sampler)."""

    def __init__(self, start: int, stop: int, num_samples: int, batch_size: int, seed: int):
        self.start, self.stop = start, stop
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed

    def __iter__(self) -> Any:
        for step in range(self.start, self.stop):
            yield batch_indices(step, self.num_samples, self.batch_size, self.seed)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)
