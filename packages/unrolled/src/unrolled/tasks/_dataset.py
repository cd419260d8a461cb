"""The dataset every task returns, and what the tasks share to make their samples and batches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

import physops

from .._batch import Batch
from .._validate import one_of

__all__ = [
    "DTYPES",
    "Sample",
    "TaskDataset",
    "builder_options",
    "mri_batch",
    "resolve_dtypes",
    "seeded_generator",
    "stack_samples",
]

#: Real and complex dtypes of a task's ``dtype`` option.
DTYPES = {
    "float32": (torch.float32, torch.complex64),
    "float64": (torch.float64, torch.complex128),
}

#: One item of a task: a dict of tensors.
Sample = dict[str, Any]


def builder_options(arguments: dict[str, Any]) -> dict[str, Any]:
    """Return a task builder's options as it was called: its arguments but the split.

    Call it first thing with ``locals()``, so that the options a dataset records are always
    exactly the builder's keyword parameters (a new option cannot be forgotten).
    """
    return {name: value for name, value in arguments.items() if name != "split"}


def seeded_generator(seed: int, index: int, stream: int) -> torch.Generator:
    """Return a private generator seeded by ``(seed, index, stream)``: one item, one draw."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + index) * 8 + stream) % (2**63))


def resolve_dtypes(dtype: str) -> tuple[torch.dtype, torch.dtype]:
    """Return the real and complex dtypes of ``dtype`` (``"float32"`` or ``"float64"``)."""
    one_of("dtype", dtype, tuple(DTYPES), " (complex data follows: complex64 / complex128)")
    return DTYPES[dtype]


def stack_samples(samples: Sequence[Sample], key: str, dtype: torch.dtype | None = None) -> Tensor:
    """Return the ``key`` tensors of ``samples`` stacked on a new batch axis, as ``dtype``.

    A single sample's tensor becomes a view (``x[None]``), not a copy.
    """
    out = samples[0][key][None] if len(samples) == 1 else torch.stack([s[key] for s in samples])
    return out if dtype is None else out.to(dtype)


def mri_batch(
    samples: Sequence[Sample],
    multicoil: bool,
    dtypes: tuple[torch.dtype, torch.dtype],
    dims: int = 2,
) -> Batch:
    """Stack MRI samples into a batch with their operator.

    The samples hold ``kspace``, ``target``, ``mask``, and ``maps`` when ``multicoil``; the
    operator is ``physops.Sense(maps, mask)`` or ``physops.FourierSampling(mask)``.
    """
    real_dtype, complex_dtype = dtypes
    y = stack_samples(samples, "kspace", complex_dtype)
    target = stack_samples(samples, "target", complex_dtype)
    mask = stack_samples(samples, "mask", real_dtype)
    physics: physops.LinearOperator
    if multicoil:
        physics = physops.Sense(stack_samples(samples, "maps", complex_dtype), mask)
    else:
        physics = physops.FourierSampling(mask, ndim=dims)
    return Batch(y=y, physics=physics, target=target, x0=None)


# ------------------------------------------------------------------------------------------------
# the dataset every task returns
# ------------------------------------------------------------------------------------------------
class TaskDataset(Dataset):
    """A split of a task: samples (dicts of tensors) and the ``collate`` that makes batches.

    Attributes
    ----------
    task, split:
        The task's registered name and the split.
    options:
        The task's options as resolved (defaults filled in), e.g. for a run's config file.
    complex, dims, color_channels:
        The image type, as the models' ``complex``, ``dims`` and ``color_channels`` arguments
        take it (:attr:`model_kwargs`).
    has_target:
        ``False`` only for data without a reference (fastMRI test files): then ``target`` is the
        zero-filled image and metrics are meaningless.
    """

    complex: bool = True
    dims: int = 2
    color_channels: int | None = None
    has_target: bool = True

    def __init__(self, task: str, split: str, options: dict[str, Any]):
        self.task = task
        self.split = split
        self.options = dict(options)

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, index: int) -> Sample:  # pragma: no cover - abstract
        raise NotImplementedError

    def collate(self, samples: Sequence[Sample]) -> Batch:  # pragma: no cover - abstract
        """Stack samples into a :class:`~unrolled.Batch` (a ``DataLoader`` ``collate_fn``)."""
        raise NotImplementedError

    def batch(self, indices: Sequence[int] | None = None) -> Batch:
        """Return the batch of the items ``indices`` (default: every item)."""
        chosen = range(len(self)) if indices is None else indices
        return self.collate([self[int(i)] for i in chosen])

    @property
    def model_kwargs(self) -> dict[str, Any]:
        """``complex``, ``dims`` (and ``color_channels`` where set) for a model of this task."""
        out: dict[str, Any] = {"complex": self.complex, "dims": self.dims}
        if self.color_channels is not None:
            out["color_channels"] = self.color_channels
        return out

    def check_index(self, index: int) -> int:
        """Return ``index`` in ``[0, len)``; raise ``IndexError`` when it is out of range.

        Negative indices count from the end.
        """
        n = len(self)
        if isinstance(index, bool) or not isinstance(index, int) or not -n <= index < n:
            raise IndexError(f"index {index!r} out of range for {n} samples of {self!r}")
        return index % n

    # the 0.1 name, which task datasets written by users call
    _index = check_index

    def __repr__(self) -> str:
        return f"{type(self).__name__}(task={self.task!r}, split={self.split!r}, n={len(self)})"
