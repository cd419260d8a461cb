"""The task registry: :data:`TASKS` by name, :func:`make_dataset`, :func:`register_task`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._validate import check_split, unknown_name
from ._dataset import TaskDataset
from ._images import ct, deblur
from ._mri import mri3d, multicoil_mri, singlecoil_mri
from ._ptychography import ptychography

__all__ = ["TASKS", "TaskSpec", "get_task", "make_dataset", "register_task"]


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: ``build(split, **options) -> TaskDataset`` and a one-line summary."""

    name: str
    build: Callable[..., TaskDataset]
    summary: str

    def defaults(self) -> dict[str, Any]:
        """Return the task's options and their default values (from ``build``'s signature)."""
        params = inspect.signature(self.build).parameters
        return {k: p.default for k, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


TASKS: dict[str, TaskSpec] = {}


def register_task(
    name: str, build: Callable[..., TaskDataset], summary: str = "", *, replace: bool = False
) -> None:
    """Add a task to :data:`TASKS` (the slot for Fourier ptychography and users' own tasks).

    ``build(split, *, option=default, ...)`` takes the split positionally and every option as a
    keyword with a default, and returns a :class:`TaskDataset`.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"a task name must be a non-empty str, got {name!r}")
    if not callable(build):
        raise TypeError(f"build must be callable as build(split, **options), got {build!r}")
    if name in TASKS and not replace:
        raise ValueError(f"task {name!r} is already registered; pass replace=True to override it")
    TASKS[name] = TaskSpec(name, build, summary)


def get_task(name: str) -> TaskSpec:
    """Return the task registered under ``name``; an unknown name lists the valid ones."""
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise unknown_name("task", name, sorted(TASKS)) from None


def make_dataset(task: str, split: str = "train", **options: Any) -> TaskDataset:
    """Return the ``split`` of ``task`` with ``options`` (see each task's function for its options).

    Examples
    --------
    >>> data = make_dataset("multicoil_mri", "train", image_size=32)      # doctest: +SKIP
    >>> batch = data.collate([data[0], data[1]])                          # doctest: +SKIP
    >>> loader = DataLoader(data, batch_size=4, collate_fn=data.collate)  # doctest: +SKIP
    """
    spec = get_task(task)
    check_split(split)
    valid = spec.defaults()
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown option {unknown[0]!r} for task {task!r}; valid options: {', '.join(valid)}"
        )
    return spec.build(split, **options)


register_task("multicoil_mri", multicoil_mri, "multi-coil 2D MRI, Sense(maps, mask) (GLEAM, MEL)")
register_task("singlecoil_mri", singlecoil_mri, "single-coil 2D MRI, 1D random columns (LUSER)")
register_task("deblur", deblur, "Gaussian deblurring, 9x9 kernel of variance 5, noise 0.01 (LUSER)")
register_task("ct", ct, "sparse-view CT, 200 of 1000 angles (LUSER)")
register_task("mri3d", mri3d, "multi-coil 3D MRI on real-anatomy slabs (i-RIM 3D, 3D MoDL)")
register_task(
    "ptychography", ptychography, "Fourier ptychography, single-LED images of real objects (MEL)"
)
