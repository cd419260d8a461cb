"""Resuming a run: the options that must match, and the run folder's checkpoint to continue from."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from .._strategy import Strategy
from ._options import TrainOptions
from ._run import RunFolder

__all__ = ["RESUME_KEYS", "check_resume", "open_run"]

# options that must match when a run resumes (the others may change: steps, device, workers, ...)
RESUME_KEYS = (
    "batch_size",
    "loss",
    "loss_options",
    "lr",
    "betas",
    "weight_decay",
    "scheduler",
    "scheduler_step",
    "scheduler_gamma",
    "min_lr",
    "clip_grad_norm",
    "seed",
)


def check_resume(saved: dict[str, Any], opts: TrainOptions, strategy: Strategy) -> None:
    """Raise ``ValueError`` when ``saved`` (a checkpoint) cannot continue with these options."""
    for key in RESUME_KEYS:
        old, new = saved["options"].get(key), getattr(opts, key)
        if isinstance(old, list):
            old = tuple(old)
        if old != new:
            raise ValueError(
                f"cannot resume: option {key}={new!r} differs from the run's {key}={old!r}; "
                "resume with the run's options (only steps, device, num_workers, progress, "
                "val_every, checkpoint_every, log_every and compile may change)"
            )
    placement = ("devices", "replicas")  # where modules run, not what is trained
    saved_strategy = {**asdict(Strategy()), **saved["strategy"]}
    old = {k: v for k, v in saved_strategy.items() if k not in placement}
    if old != {k: v for k, v in asdict(strategy).items() if k not in placement}:
        raise ValueError(
            f"cannot resume: strategy {strategy.describe()!r} differs from the run's "
            f"{Strategy(**{**saved['strategy'], 'devices': None, 'replicas': 1}).describe()!r}"
        )
    if saved["step"] > opts.steps:
        raise ValueError(
            f"cannot resume: the checkpoint is at step {saved['step']}, beyond steps={opts.steps}"
        )


def open_run(opts: TrainOptions, strategy: Strategy) -> tuple[RunFolder | None, dict | None]:
    """Return the run folder (``None`` without ``run_dir``) and, when resuming, its checkpoint."""
    if opts.run_dir is None:
        return None, None
    run = RunFolder(opts.run_dir)
    if run.has_checkpoint() and not opts.resume:
        raise ValueError(
            f"{str(run.path)!r} already holds a run (checkpoint.pt): pass resume=True to "
            "continue it, or choose another run_dir"
        )
    if not opts.resume:
        return run, None
    if not run.has_checkpoint():
        raise ValueError(f"resume=True but {str(run.checkpoint)!r} does not exist")
    saved = run.read_checkpoint()  # checkpoint.pt, else checkpoint.prev.pt (RunFileError)
    check_resume(saved, opts, strategy)
    return run, saved
