"""Evaluation of trained models: per-sample metrics and GLEAM's PSNR after every stage.

Metrics are those of :func:`unrolled.psnr`, :func:`unrolled.ssim`, :func:`unrolled.nrmse`
(scikit-image, on magnitude images, the reference's peak as data range; GLEAM Sec. V-C4): PSNR
in dB, SSIM and nRMSE per sample.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

import greedytrain

from .._base import UnrolledModel
from .._batch import Batch
from ._metrics import nrmse, psnr, ssim
from ._run import atomic_write_text

__all__ = [
    "METRICS",
    "MetricsTable",
    "check_dataset",
    "evaluate",
    "psnr_per_stage",
    "resolve_collate",
]

METRICS = ("psnr", "ssim", "nrmse")


# ------------------------------------------------------------------------------------------------
# batches from datasets
# ------------------------------------------------------------------------------------------------
def _first(samples: Sequence[Any]) -> Batch:
    """Return the collate of a dataset of ready :class:`Batch` objects (one per step)."""
    return samples[0]


def resolve_collate(
    data: Any, collate: Callable[[list[Any]], Batch] | None, name: str, batch_size: int
) -> Callable[[list[Any]], Batch]:
    """Return the collate function of ``data``.

    ``collate`` if given, else ``data.collate`` (task datasets), else one ready ``Batch`` per
    item; raises naming what is missing.
    """
    if collate is not None:
        if not callable(collate):
            raise TypeError(
                f"collate for {name} must be callable (samples -> Batch), got {collate!r}"
            )
        return collate
    own = getattr(data, "collate", None)
    if callable(own):
        return own
    if isinstance(data[0], Batch):
        if batch_size != 1:
            raise ValueError(
                f"{name} holds ready Batch objects, used one per step: pass batch_size=1 (got "
                f"{batch_size}), or a dataset of samples with a collate"
            )
        return _first
    raise TypeError(
        f"{name} has no collate method and its items are {type(data[0]).__name__}, not Batch: "
        "pass collate=fn (samples -> unrolled.Batch), or use unrolled.make_dataset(...)"
    )


def check_dataset(data: object, name: str) -> int:
    """Return the length of ``data``, a non-empty map-style dataset.

    Anything else raises a ``TypeError`` or a ``ValueError`` naming ``name``.
    """
    if not (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
        raise TypeError(
            f"{name} must be a map-style dataset (with __len__ and __getitem__), such as "
            f"unrolled.make_dataset(...) or a list of Batch objects, got {type(data).__name__}"
        )
    n = len(data)
    if n == 0:
        raise ValueError(f"{name} is empty")
    return n


def _loader(
    data: Any,
    collate: Callable[[list[Any]], Batch] | None,
    name: str,
    batch_size: int,
    num_workers: int,
    max_samples: int | None,
    batches: Sequence[Sequence[int]] | None = None,
) -> tuple[DataLoader, int, list[list[int]]]:
    """Return the loader, the number of samples and the batches (lists of dataset indices)."""
    n = check_dataset(data, name)
    n = n if max_samples is None else min(n, max_samples)
    if n == 0:
        raise ValueError(f"{name} is empty")
    collate_fn = resolve_collate(data, collate, name, batch_size)
    if batches is None:
        chosen = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    else:
        chosen = [[int(i) for i in b] for b in batches if len(b)]
    loader = DataLoader(
        data,
        batch_sampler=chosen,
        collate_fn=collate_fn,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(0),  # leaves the global RNG alone
    )
    return loader, n, chosen


# ------------------------------------------------------------------------------------------------
# per-sample metrics
# ------------------------------------------------------------------------------------------------
@dataclass
class MetricsTable:
    """Per-sample metrics.

    One row per sample, ``sample`` (its position in the dataset), ``psnr`` (dB), ``ssim`` and
    ``nrmse``.
    """

    rows: list[dict[str, float]]

    def __len__(self) -> int:
        return len(self.rows)

    def column(self, name: str) -> list[float]:
        if self.rows and name not in self.rows[0]:
            raise ValueError(f"no column {name!r}; columns: {', '.join(self.rows[0])}")
        return [float(r[name]) for r in self.rows]

    def mean(self) -> dict[str, float]:
        """Return the mean of every metric over the samples."""
        return {m: sum(self.column(m)) / len(self.rows) for m in METRICS}

    def std(self) -> dict[str, float]:
        """Return the (population) standard deviation of every metric over the samples."""
        means = self.mean()
        return {
            m: math.sqrt(sum((v - means[m]) ** 2 for v in self.column(m)) / len(self.rows))
            for m in METRICS
        }

    def summary(self) -> dict[str, Any]:
        """Return ``{"samples": n, "psnr": {"mean": .., "std": ..}, ...}`` (JSON-friendly)."""
        means, stds = self.mean(), self.std()
        out: dict[str, Any] = {"samples": len(self.rows)}
        out.update({m: {"mean": means[m], "std": stds[m]} for m in METRICS})
        return out

    def to_csv(self, path: str | os.PathLike[str]) -> None:
        """Write the rows as CSV (``sample, psnr, ssim, nrmse``), atomically."""
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=["sample", *METRICS], lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(path, out.getvalue())


def _metric_rows(x_hat: Tensor, target: Tensor, samples: Sequence[int]) -> list[dict[str, float]]:
    values = {
        "psnr": psnr(x_hat, target),
        "ssim": ssim(x_hat, target),
        "nrmse": nrmse(x_hat, target),
    }
    return [
        {"sample": samples[i], **{m: float(values[m][i]) for m in METRICS}}
        for i in range(target.shape[0])
    ]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Any,
    *,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    collate: Callable[[list[Any]], Batch] | None = None,
    num_workers: int = 0,
    max_samples: int | None = None,
    batches: Sequence[Sequence[int]] | None = None,
) -> MetricsTable:
    """PSNR, SSIM and nRMSE of ``model``'s reconstruction of every sample of ``data``.

    ``model`` is any module called as ``model(y, physics, x0)``: an unrolled model, or a
    baseline such as :class:`CompressedSensing`.

    Runs in eval mode under ``torch.no_grad`` (the model's mode is restored), in dataset order,
    on the first ``max_samples`` samples (default all). ``data`` as for :func:`unrolled.train`.
    ``batches`` (lists of dataset indices; empty ones are skipped) replaces that order, e.g. one
    rank's share of a distributed validation; each row's ``sample`` is its dataset index.
    """
    loader, _, chosen = _loader(
        data, collate, "data", batch_size, num_workers, max_samples, batches
    )
    device = torch.device(device)
    was_training = model.training
    model.eval()
    rows: list[dict[str, float]] = []
    try:
        for indices, batch in zip(chosen, loader):
            batch = batch.to(device)
            x_hat = model(batch.y, batch.physics, batch.x0)
            rows += _metric_rows(x_hat, batch.target, indices)
    finally:
        model.train(was_training)
    return MetricsTable(rows)


@torch.no_grad()
def psnr_per_stage(
    model: UnrolledModel,
    data: Any,
    *,
    per: str = "stage",
    modules: int | None = None,
    split: str | Sequence[int] = "even",
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    collate: Callable[[list[Any]], Batch] | None = None,
    max_samples: int | None = None,
) -> list[float]:
    """Mean PSNR (dB) of the read-out after every stage, or after every module (GLEAM Fig. 9).

    ``per="stage"`` gives N values (one per unroll); ``per="module"`` gives M values, the PSNR at
    the end of each of the ``modules`` modules (split as :func:`greedytrain.split_stages`; default
    M from the model's greedy strategy, else N). A model trained greedily predicts the target
    after every module, so these values rise and early exit gives a usable image.
    """
    if per not in ("stage", "module"):
        raise ValueError(f"per must be 'stage' or 'module', got {per!r}")
    n_stages = len(model.stages)
    ends = list(range(n_stages))
    if per == "module":
        m = modules if modules is not None else model.strategy.modules
        sizes = greedytrain.split_stages(n_stages, n_stages if m is None else m, split)
        ends = [sum(sizes[: k + 1]) - 1 for k in range(len(sizes))]
    loader, n, _ = _loader(data, collate, "data", batch_size, 0, max_samples)
    device = torch.device(device)
    was_training = model.training
    model.eval()
    totals = [0.0] * len(ends)
    try:
        for batch in loader:
            batch = batch.to(device)
            outs = model.intermediates(batch.y, batch.physics, batch.x0)
            for k, end in enumerate(ends):
                totals[k] += float(psnr(outs[end], batch.target).sum())
    finally:
        model.train(was_training)
    return [t / n for t in totals]
