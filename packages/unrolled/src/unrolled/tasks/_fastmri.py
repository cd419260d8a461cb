"""The user's fastMRI files as an MRI task (``multicoil_mri`` / ``singlecoil_mri`` with ``root=``).

:class:`physops.FastMRISliceDataset` checks the files; the splits come from the folder layout or
an explicit rule (:mod:`._splits`); multi-coil slices are read from the coil-map cache
(:mod:`._coilmaps`), which holds each volume's maps, cropped k-space and reference, computed
once per volume. Each slice becomes a sample of the same layout as the embedded real-anatomy
data (see :class:`FastMRITask`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

import physops

from .._batch import Batch
from .._validate import check_split
from ._coilmaps import (
    MapSettings,
    Volume,
    center_crop,
    ensure_entry,
    model_kspace,
    read_entry_slice,
    read_volume,
)
from ._dataset import Sample, TaskDataset, mri_batch, resolve_dtypes
from ._splits import split_files

__all__ = ["FASTMRI_OPTIONS", "FastMRITask", "fastmri_dataset"]

#: Task options that only fastMRI files take (``root=``), with their defaults.
FASTMRI_OPTIONS: dict[str, Any] = {
    "split_by_file": None,
    "split_seed": 0,
    "maps_method": "espirit",
    "maps_cache": None,
}
_REFERENCE_KEY = {"multicoil": "reconstruction_rss", "singlecoil": "reconstruction_esc"}


class FastMRITask(TaskDataset):
    """fastMRI slices turned into MRI samples, multi-coil ones read from the coil-map cache.

    For each slice: the coil images :math:`F^{-1} k` are cropped to ``image_size`` (default the
    header's reconstruction matrix) in the image domain and transformed back, giving fully
    sampled k-space of the crop; multi-coil maps come from the volume's cache entry (ESPIRiT by
    default, estimated once per volume from the calibration region that every slice samples);
    the target is the SENSE-1 image (single-coil: the cropped image), complex; a 1D mask seeded
    by ``(seed, index)`` undersamples it. Files that carry their own ``mask`` (fastMRI test data,
    already undersampled) keep it: then only the readout (rows) is cropped, there is no
    reference (``has_target`` is False) and ``target`` is the zero-filled image. Every sample is
    scaled so that its target's peak magnitude is 1 (``sample["scale"]`` holds the factor).

    Attributes
    ----------
    volumes : list of Volume
        One per file: its path, slice count, crop, and ``output`` (the header's reconstruction
        matrix, the size of fastMRI's submissions).
    reference_key : str or None
        ``"reconstruction_rss"`` (``"reconstruction_esc"`` single-coil) when every file holds
        fastMRI's reference, which :func:`unrolled.fastmri_metrics` scores against.
    """

    def __init__(self, task: str, split: str, options: dict[str, Any], challenge: str):
        super().__init__(task, split, options)
        self.challenge = challenge
        self.multicoil = challenge == "multicoil"
        self.dtypes = resolve_dtypes(options["dtype"])
        files = split_files(
            options["root"],
            challenge,
            check_split(split),
            options["split_by_file"],
            options["split_seed"],
        )
        self.source = physops.FastMRISliceDataset(files, challenge)
        settings = MapSettings(
            options["maps_method"],
            options["image_size"],
            options["calibration"],
            options["center_fraction"],
        )
        self.volumes: list[Volume] = [read_volume(p, settings, challenge) for p in files]
        self.has_target = all(v.mask is None for v in self.volumes)
        self.reference_key = _REFERENCE_KEY[challenge] if self.source.has_target else None
        self._items = [(v, s) for v, vol in enumerate(self.volumes) for s in range(vol.slices)]
        self._entries: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self._items)

    def locate(self, index: int) -> tuple[Volume, int]:
        """Return the volume and the slice number of item ``index``."""
        v, s = self._items[self.check_index(index)]
        return self.volumes[v], s

    def volume_items(self, volume: int) -> range:
        """Return the item indices of the slices of ``self.volumes[volume]``, in slice order."""
        start = sum(v.slices for v in self.volumes[:volume])
        return range(start, start + self.volumes[volume].slices)

    def describe(self, index: int) -> str:
        """``"file.h5, slice 3"``: where item ``index`` comes from."""
        volume, s = self.locate(index)
        return f"{volume.path.name}, slice {s}"

    def _entry(self, v: int) -> Any:
        entry = self._entries.get(v)
        if entry is None:
            entry, _ = ensure_entry(self.volumes[v], self.options["maps_cache"])
            self._entries[v] = entry
        return entry

    def prepare_maps(self, progress: bool = False) -> int:
        """Fill the coil-map cache of every volume of this split now (multi-coil).

        What the first epoch would do as it goes, done before training so that its cost (time,
        and ESPIRiT's working memory) stays out of the training loop's figures. Returns the
        number of volumes computed now (0 when the cache was complete, or single-coil).
        """
        if not self.multicoil:
            return 0
        from tqdm.auto import tqdm

        computed = 0
        total = sum(v.slices for v in self.volumes)
        with tqdm(total=total, desc="coil maps", unit="slice", disable=not progress) as bar:
            for v, volume in enumerate(self.volumes):
                entry, fresh = ensure_entry(volume, self.options["maps_cache"], progress=bar.update)
                self._entries[v] = entry
                computed += int(fresh)
                if not fresh:
                    bar.update(volume.slices)
        return computed

    def _coil_data(self, index: int) -> tuple[Tensor, Tensor | None, Tensor]:
        """Return the slice's model k-space, maps and reference (cache entry or computed here)."""
        v, s = self._items[index]
        if self.multicoil:
            return read_entry_slice(self._entry(v), s)
        volume = self.volumes[v]
        full, images = model_kspace(self.source[index]["kspace"], volume.crop)
        if volume.mask is not None:
            full = full * torch.from_numpy(volume.mask.astype("float32"))
            images = physops.ifftc(full)
        return full, None, images

    def _mask(self, index: int, shape: tuple[int, int]) -> Tensor:
        volume, _ = self.locate(index)
        if volume.mask is not None:
            return torch.from_numpy(volume.mask.astype("float32")).expand(shape).contiguous()
        o = self.options
        make = physops.random_mask_1d if o["mask"] == "random" else physops.equispaced_mask_1d
        seed = (o["seed"] * 1_000_003 + index) % (2**32)
        return make(shape, o["center_fraction"], o["acceleration"], seed=seed).mask.float()

    def __getitem__(self, index: int) -> Sample:
        index = self.check_index(index)
        full, maps, target = self._coil_data(index)
        mask = self._mask(index, (int(full.shape[-2]), int(full.shape[-1])))
        scale = 1.0 / max(float(target.abs().max()), 1e-30)
        sample: Sample = {
            # in place: ``full`` is this item's own copy (16 coils at 320 x 320: 13 MB a slice)
            "kspace": full.mul_(mask * scale).to(torch.complex64),
            "mask": mask,
            "target": (target * scale).to(torch.complex64),
            "scale": torch.tensor(scale, dtype=torch.float64),
            "index": torch.tensor(index, dtype=torch.int64),
        }
        if maps is not None:
            sample["maps"] = maps.to(torch.complex64)
        return sample

    def output_image(self, index: int, image: Tensor) -> Tensor:
        """Crop a reconstruction of item ``index`` to the header's reconstruction matrix."""
        volume, _ = self.locate(index)
        return center_crop(image, volume.output)

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
    return FastMRITask(task, split, {**FASTMRI_OPTIONS, **options}, challenge)
