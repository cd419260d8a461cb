"""The user's fastMRI files as an MRI task (``multicoil_mri`` / ``singlecoil_mri`` with ``root=``).

:class:`physops.FastMRISliceDataset` reads the slices; this module turns each into a sample of
the same layout as the embedded real-anatomy data (see :class:`FastMRITask`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import physops

from .._batch import Batch
from .._validate import check_split
from ._dataset import Sample, TaskDataset, mri_batch, resolve_dtypes

__all__ = ["FastMRITask", "fastmri_dataset"]


# ------------------------------------------------------------------------------------------------
def _split_files(root: str | os.PathLike[str], challenge: str, split: str) -> Path:
    base = Path(root)
    if not base.exists():
        raise ValueError(f"root={str(root)!r} does not exist: pass a fastMRI .h5 file or folder")
    for name in (split, f"{challenge}_{split}"):
        if (base / name).is_dir():
            return base / name
    return base


def _center_crop(x: Tensor, shape: tuple[int, int]) -> Tensor:
    rows, cols = x.shape[-2:]
    h, w = min(shape[0], rows), min(shape[1], cols)
    top, left = (rows - h) // 2, (cols - w) // 2
    return x[..., top : top + h, left : left + w]


class FastMRITask(TaskDataset):
    """fastMRI slices (:class:`physops.FastMRISliceDataset`) turned into MRI samples.

    For each slice: the coil images :math:`F^{-1} k` are cropped to ``image_size`` (default the
    header's reconstruction size) in the image domain and transformed back, giving fully sampled
    k-space of the crop; multi-coil maps are estimated by :func:`physops.espirit_maps` from its
    central ``calibration`` box (GLEAM's fastMRI setting); the target is the SENSE-1 image
    (single-coil: the cropped image), complex; a 1D mask seeded by ``(seed, index)`` undersamples
    it. Files that carry their own ``mask`` (fastMRI test data, already undersampled) keep it:
    then only the readout (rows) is cropped, there is no reference (``has_target`` is False) and
    ``target`` is the zero-filled image. Every sample is scaled so that its target's peak
    magnitude is 1 (``sample["scale"]`` holds the factor).
    """

    def __init__(self, task: str, split: str, options: dict[str, Any], challenge: str):
        super().__init__(task, split, options)
        self.challenge = challenge
        self.multicoil = challenge == "multicoil"
        self.dtypes = resolve_dtypes(options["dtype"])
        path = _split_files(options["root"], challenge, check_split(split))
        self.source = physops.FastMRISliceDataset(path, challenge)
        # fastMRI test files carry a mask and no reconstruction
        self.has_target = bool(self.source.has_target)

    def __len__(self) -> int:
        return len(self.source)

    def _crop_shape(self, sample: Sample) -> tuple[int, int]:
        size = self.options["image_size"]
        if size is not None:
            return (size, size)
        recon = sample["metadata"]["recon_size"]
        return (int(recon[0]), int(recon[1]))

    def __getitem__(self, index: int) -> Sample:
        index = self.check_index(index)
        raw = self.source[index]
        kspace = raw["kspace"]
        given_mask = raw.get("mask")
        crop = self._crop_shape(raw)
        if given_mask is not None:
            crop = (crop[0], kspace.shape[-1])  # undersampled columns: crop the readout only
        images = _center_crop(physops.ifftc(kspace), crop)
        full = physops.fftc(images)
        o = self.options
        if given_mask is None:
            make = physops.random_mask_1d if o["mask"] == "random" else physops.equispaced_mask_1d
            mask = make(
                tuple(full.shape[-2:]),
                o["center_fraction"],
                o["acceleration"],
                seed=(o["seed"] * 1_000_003 + index) % (2**32),
            ).mask.float()
        else:
            mask = _center_crop(given_mask, crop).float()
        if self.multicoil:
            cal = min(o["calibration"], *full.shape[-2:])
            maps = physops.espirit_maps(full, calibration=cal, kernel_size=max(2, min(6, cal // 2)))
            target = physops.sense1(images, maps) if given_mask is None else None
        else:
            maps = None
            target = images if given_mask is None else None
        y = full * mask
        if target is None:  # no reference: the zero-filled image stands in
            zero_filled = physops.ifftc(y)
            target = physops.sense1(zero_filled, maps) if maps is not None else zero_filled
        scale = 1.0 / max(float(target.abs().max()), 1e-30)
        sample: Sample = {
            "kspace": (y * scale).to(torch.complex64),
            "mask": mask,
            "target": (target * scale).to(torch.complex64),
            "scale": torch.tensor(scale, dtype=torch.float64),
            "index": torch.tensor(index, dtype=torch.int64),
        }
        if maps is not None:
            sample["maps"] = maps.to(torch.complex64)
        return sample

    def collate(self, samples: Sequence[Sample]) -> Batch:
        shapes = {tuple(s["target"].shape) for s in samples}
        if len(shapes) > 1:
            raise ValueError(
                f"fastMRI slices of different sizes {sorted(shapes)} cannot share a batch: pass "
                "image_size=N to crop every slice to N x N, or use batch_size=1"
            )
        return mri_batch(samples, self.multicoil, self.dtypes)


def fastmri_dataset(task: str, challenge: str, split: str, options: dict[str, Any]) -> TaskDataset:
    """Return the ``split`` of the user's fastMRI files as the MRI task ``task``.

    The files are at ``options["root"]``; ``challenge`` is ``"multicoil"`` or ``"singlecoil"``.
    """
    if options.get("mask", "random") not in ("random", "equispaced"):
        raise ValueError(
            "fastMRI data are 2D Cartesian: use 1D column masks, mask='random' or 'equispaced', "
            f"got mask={options['mask']!r}"
        )
    return FastMRITask(task, split, options, challenge)
