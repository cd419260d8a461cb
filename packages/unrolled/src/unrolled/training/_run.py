"""The run folder of :func:`unrolled.train` (checkpoints, logs) and its result."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import random
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ._io import load_buffers, load_model

__all__ = [
    "RunFolder",
    "TrainResult",
    "atomic_path",
    "atomic_write_text",
    "rng_state",
    "seed_everything",
    "set_rng_state",
]


# ------------------------------------------------------------------------------------------------
# RNG states
# ------------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)  # also every CUDA device
    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 - the legacy global generator users seed


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),  # noqa: NPY002
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------------------
# the run folder
# ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary file beside ``path``; it replaces ``path`` when the block succeeds.

    The temporary file is synced to disk before ``os.replace``, so ``path`` is always either its
    old content or the complete new one (never half written), even if the process is killed;
    when the block raises, the temporary file is removed and ``path`` is left as it was.

    Examples
    --------
    >>> with atomic_path("out.h5") as tmp:                    # doctest: +SKIP
    ...     with h5py.File(tmp, "w") as f:
    ...         f["reconstruction"] = images
    """
    target = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    r"""Write ``text`` to ``path`` atomically (:func:`atomic_path`), with ``\n`` line ends."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        handle.write(text)


class RunFolder:
    """The run's files: checkpoint, best model, CSV logs, result summary."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.checkpoint = self.path / "checkpoint.pt"
        self.best = self.path / "best.pt"
        self.log = self.path / "log.csv"
        self.val = self.path / "val.csv"
        self.result = self.path / "train_result.json"

    @staticmethod
    def _csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue()

    def rewrite(self, path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
        atomic_write_text(path, self._csv(rows, columns))

    def append(self, path: Path, row: dict[str, Any], columns: list[str]) -> None:
        if not path.exists():
            self.rewrite(path, [], columns)
        with open(path, "a", newline="") as handle:
            csv.DictWriter(
                handle, fieldnames=columns, extrasaction="ignore", lineterminator="\n"
            ).writerow(row)
            handle.flush()


# ------------------------------------------------------------------------------------------------
# the result
# ------------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes
    ----------
    steps:
        Steps completed (the run's total, including steps before a resume).
    strategy:
        The strategy as :meth:`Strategy.describe` writes it (``"greedy(M=4, inner=reversible)"``).
    history:
        One dict per step: ``step`` (1-based), ``epoch``, ``loss``, ``lr``, ``time_s`` (greedy:
        ``loss_module_<m>``).
    val_history:
        One dict per validation: ``step``, ``psnr``, ``ssim``, ``nrmse`` (means), ``best``.
    best:
        The validation with the lowest nRMSE (``None`` without validation).
    best_state:
        The model's state at ``best`` (CPU tensors; kept in memory only without ``run_dir``,
        else it is ``run_dir/best.pt``). :meth:`load_best` puts it into a model.
    peak_memory_bytes, memory_baseline_bytes, memory_kind:
        Peak memory of the training loop of this process (``"cpu_peak_rss"``: the process's peak
        RSS after ``/proc/self/clear_refs``, ``"cuda_max_allocated"``:
        ``torch.cuda.max_memory_allocated``) and the memory in use when it started.
    median_step_time_s:
        Median wall time of an optimizer step (data loading excluded; the first step of the
        process is left out as warm-up when there are more).
    run_dir, resumed_from:
        The run folder and the step the run resumed from (``None`` for a fresh run).
    world_size, backend:
        The processes of the job (1 and ``None`` for a process alone; ``torch.distributed``'s
        backend, ``"gloo"`` or ``"nccl"``, under ``torchrun``).
    """

    steps: int
    strategy: str
    history: list[dict[str, Any]]
    val_history: list[dict[str, Any]]
    best: dict[str, Any] | None
    best_state: dict[str, Any] | None
    peak_memory_bytes: int | None
    memory_baseline_bytes: int | None
    memory_kind: str
    median_step_time_s: float
    run_dir: str | None = None
    resumed_from: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    world_size: int = 1
    backend: str | None = None

    @property
    def losses(self) -> list[float]:
        """The training loss of every step."""
        return [float(row["loss"]) for row in self.history]

    @property
    def final_loss(self) -> float:
        return self.losses[-1] if self.history else float("nan")

    def load_best(self, model: nn.Module) -> nn.Module:
        """Load the best validated weights into ``model`` (from memory or ``run_dir/best.pt``)."""
        if self.best_state is not None:
            model.load_state_dict(self.best_state["model"])
            load_buffers(model, self.best_state["buffers"])
            return model
        if self.run_dir is not None and (Path(self.run_dir) / "best.pt").is_file():
            load_model(model, Path(self.run_dir) / "best.pt")
            return model
        raise ValueError("this run has no best model: train with val_data to select one")

    def summary(self) -> dict[str, Any]:
        """Return the run in plain data (``train_result.json``)."""
        return {
            "steps": self.steps,
            "strategy": self.strategy,
            "final_loss": self.final_loss,
            "best": self.best,
            "peak_memory_bytes": self.peak_memory_bytes,
            "memory_baseline_bytes": self.memory_baseline_bytes,
            "memory_kind": self.memory_kind,
            "median_step_time_s": self.median_step_time_s,
            "resumed_from": self.resumed_from,
            "run_dir": self.run_dir,
            "world_size": self.world_size,
            "backend": self.backend,
            "options": self.options,
        }
