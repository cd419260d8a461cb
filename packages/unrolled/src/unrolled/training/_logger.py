"""Monitoring of :func:`unrolled.train`: ``logger="csv" | "tensorboard"``.

The run folder's CSV files (``log.csv``, ``val.csv``) are always written: they are the run's
record, which a resumed run rewrites up to its checkpoint. ``logger="tensorboard"`` also writes
TensorBoard event files to ``run_dir/tensorboard`` through
:class:`torch.utils.tensorboard.SummaryWriter` (the optional extra
``memroll-unrolled[tensorboard]``), from rank 0 of a distributed job:

=========================  ====================================================================
tag                        value
=========================  ====================================================================
``train/loss``             the step's training loss (the last module's for greedy)
``train/lr``               the learning rate the step used
``train/loss_module_<m>``  greedy: each module's loss
``train/step_time_s``      the step's wall time
``memory/peak_mb``         peak memory so far (:class:`MemoryProbe`: the process's peak RSS on
                           CPU, ``torch.cuda.max_memory_allocated`` on CUDA), in MiB
``val/psnr``, ``val/ssim``, the validation means
``val/nrmse``
=========================  ====================================================================

A resumed run drops the events past its checkpoint (``purge_step``). For anything else, pass
``callback=`` to :func:`unrolled.train`: it gets every step's row (the dict above, on every rank).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from .._validate import one_of

__all__ = ["LOGGERS", "TensorBoardLogger", "check_logger", "make_logger"]

#: The values of ``TrainOptions.logger``.
LOGGERS = ("csv", "tensorboard")
_MiB = 2.0**20


def check_logger(logger: object) -> str:
    """Return ``logger`` if it is one of :data:`LOGGERS`, else raise ``ValueError``.

    ``"tensorboard"`` without the ``tensorboard`` package raises ``ImportError`` naming the
    extra to install.
    """
    one_of("logger", logger, LOGGERS, " (the run folder's CSV files are always written)")
    if logger == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        raise ImportError(
            "logger='tensorboard' needs the tensorboard package: pip install "
            "'memroll-unrolled[tensorboard]' (or pip install tensorboard), or use logger='csv'"
        )
    return str(logger)


class TensorBoardLogger:
    """Writes a run's steps and validations as TensorBoard scalars (see the module docstring)."""

    def __init__(self, folder: str | Path, start: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder), purge_step=start if start else None)

    def log_step(self, row: dict[str, Any], peak_bytes: int | None) -> None:
        """Write one training step's row (``step``, ``loss``, ``lr``, ``time_s``, ...)."""
        step = int(row["step"])
        self.writer.add_scalar("train/loss", float(row["loss"]), step)
        self.writer.add_scalar("train/lr", float(row["lr"]), step)
        self.writer.add_scalar("train/step_time_s", float(row["time_s"]), step)
        for key, value in row.items():
            if key.startswith("loss_module_"):
                self.writer.add_scalar(f"train/{key}", float(value), step)
        if peak_bytes is not None:
            self.writer.add_scalar("memory/peak_mb", peak_bytes / _MiB, step)

    def log_validation(self, row: dict[str, Any]) -> None:
        """Write one validation's means (``step``, ``psnr``, ``ssim``, ``nrmse``)."""
        for key in ("psnr", "ssim", "nrmse"):
            self.writer.add_scalar(f"val/{key}", float(row[key]), int(row["step"]))

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()


def make_logger(logger: str, run_dir: str | Path | None, start: int) -> TensorBoardLogger | None:
    """Return the extra logger of ``logger`` (``None`` for ``"csv"``: CSV files are always written).

    ``run_dir`` is ``None`` on ranks other than 0 and without a run folder: nothing is written.
    """
    if logger != "tensorboard" or run_dir is None:
        return None
    return TensorBoardLogger(Path(run_dir) / "tensorboard", start)
