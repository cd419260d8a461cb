"""Atomic checkpoint files and the random-number-generator states a bit-identical resume needs."""

from __future__ import annotations

import contextlib
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["FORMAT", "atomic_save", "get_rng_state", "read_checkpoint", "set_rng_state"]

FORMAT = "memroll-greedytrain-checkpoint"
VERSION = 1


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save(obj)`` to a temporary file beside ``path``, flushed, then renamed onto ``path``.

    A crash at any moment leaves either the previous file or the new one, never a torn file: the
    rename is atomic on POSIX and Windows filesystems (``os.replace``).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable
        dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return target


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a greedytrain checkpoint onto the CPU and check its format."""
    target = Path(path)
    if not target.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(target)!r}")
    # weights_only=False: the file holds optimizer/scheduler states and Python RNG states, which
    # the safe unpickler rejects. Load only checkpoints you wrote yourself.
    data = torch.load(target, map_location="cpu", weights_only=False)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(
            f"{str(target)!r} is not a greedytrain checkpoint (written by GreedyTrainer.save or "
            "DistributedGreedyTrainer.save)"
        )
    if data.get("version") != VERSION:
        raise ValueError(
            f"{str(target)!r} has checkpoint version {data.get('version')!r}; this greedytrain "
            f"reads version {VERSION}"
        )
    return data


def get_rng_state() -> dict[str, Any]:
    """The global RNG states of torch (CPU and every initialised CUDA device), Python and NumPy."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    numpy = sys.modules.get("numpy")  # only if the user's program uses NumPy at all
    if numpy is not None:
        state["numpy"] = numpy.random.get_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy

        # the legacy global generator is what user code seeded with np.random.seed
        numpy.random.set_state(state["numpy"])  # noqa: NPY002
