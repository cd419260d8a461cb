r"""MRI samples at the papers' own sizes, for the paper-scale tables' memory and time.

The embedded real-anatomy tasks of :mod:`unrolled` are square (``image_size``) and hold at most
14 slices per slab; the papers train on 320 x 256 knee slices (GLEAM Table II), 20-frame cines
(GLEAM Table V), 32 x 480 x 320 single-coil volumes (i-RIM Table 1) and 320 x 320 single-coil
slices (LUSER). Memory and time of a training step depend on those shapes, not on the anatomy,
so the paper-scale tables run on two synthetic tasks of their own (:func:`make_dataset` builds
them, and any task of :func:`unrolled.make_dataset`):

==================  ==============================================================================
task                samples
==================  ==============================================================================
``bench_sense``     multi-coil: ``(H, W)`` slices with a 2D Poisson-disc mask
                    (:func:`physops.poisson_disc_mask`), or ``frames = T > 0``: a 2D+time cine
                    ``(T, H, W)`` with a k-t mask per frame (:func:`physops.kt_mask`) and a 2D FFT
                    per frame (``physops.Sense(..., ndim=2)``); birdcage coil maps
``bench_single``    single-coil: ``(H, W)`` slices, or ``depth = D > 0``: ``(D, H, W)`` volumes of
                    2D-encoded slices (a 2D FFT per slice, as fastMRI's knees); fastMRI's 1D
                    random columns (:func:`physops.random_mask_1d`)
==================  ==============================================================================

The image is a real-anatomy slice (:func:`physops.real_anatomy_images`, resized to the larger
side, centre-cropped) with a smooth random phase; a cine moves it by one pixel per frame, a
volume stacks consecutive slices. Noise at ``snr_db`` is added to the sampled k-space. Every
random choice is seeded by ``(seed, index)``. These tasks are for memory and time: no table
scores quality on them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

import physops
import unrolled
from unrolled import Batch, TaskDataset

__all__ = ["SYNTHETIC_TASKS", "SyntheticMRI", "make_dataset"]

_SPLIT_SEED = {"train": 0, "val": 1, "test": 2}
# samples already made in this process, by (task, split, options, index): the paper-scale
# tables run their configurations in one process on CUDA, and a 320 x 256 Poisson-disc mask
# takes seconds to draw
_SAMPLES: dict[tuple[Any, ...], dict[str, Tensor]] = {}


class SyntheticMRI(TaskDataset):
    """Multi-coil or single-coil MRI samples of any shape (see the module docstring)."""

    def __init__(self, task: str, split: str, options: dict[str, Any], multicoil: bool):
        super().__init__(task, split, options)
        self.multicoil = multicoil
        extra = int(options.get("frames" if multicoil else "depth", 0))
        self.shape: tuple[int, ...] = ((extra,) if extra else ()) + (
            int(options["height"]),
            int(options["width"]),
        )
        self.dims = len(self.shape)
        for name, value in zip(("frames/depth", "height", "width"), self.shape[-3:]):
            if value < 4:
                raise ValueError(f"{task}: {name} must be at least 4, got {value}")
        self.real_dtype = torch.float64 if options.get("dtype") == "float64" else torch.float32
        double = self.real_dtype == torch.float64
        self.complex_dtype = torch.complex128 if double else torch.complex64
        side = max(16, *self.shape[-2:])
        self._images = physops.real_anatomy_images(split, image_size=side)

    def __len__(self) -> int:
        return int(self.options.get("samples", 4))

    def _image(self, index: int, generator: torch.Generator) -> Tensor:
        h, w = self.shape[-2:]
        images = self._images
        top, left = (images.shape[-2] - h) // 2, (images.shape[-1] - w) // 2
        crop = images[..., top : top + h, left : left + w]
        if self.dims == 2:
            magnitude = crop[index % len(crop)]
        elif self.multicoil:  # a cine: the slice moves by one pixel per frame
            frame = crop[index % len(crop)]
            magnitude = torch.stack([torch.roll(frame, t, dims=0) for t in range(self.shape[0])])
        else:  # a volume of consecutive slices
            picks = [(index + d) % len(crop) for d in range(self.shape[0])]
            magnitude = crop[picks]
        phase = physops.smooth_phase(tuple(magnitude.shape), generator=generator)
        image = magnitude * torch.exp(1j * phase)
        return (image / image.abs().max().clamp_min(1e-12)).to(torch.complex64)

    def _mask(self, seed: int) -> Tensor:
        o, (h, w) = self.options, self.shape[-2:]
        accel = float(o.get("acceleration", 4.0))
        if not self.multicoil:
            return physops.random_mask_1d((h, w), 0.08 if accel <= 4 else 0.04, accel, seed=seed)[0]
        if self.dims == 3:
            # at most half of a frame's lines in the calibration (kt_mask refuses more)
            lines = max(1, min(8, int(w / (2 * accel))))
            return physops.kt_mask(self.shape, accel, center_lines=lines, seed=seed)
        calibration = max(4, min(24, min(h, w) // 8))
        return physops.poisson_disc_mask((h, w), accel, calibration=calibration, seed=seed)

    def _physics(self, maps: Tensor | None, mask: Tensor) -> physops.LinearOperator:
        if maps is None:
            return physops.FourierSampling(mask, ndim=2)
        return physops.Sense(maps, mask, ndim=2)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        index = self.check_index(index)
        key = (self.task, self.split, tuple(sorted(self.options.items())), index)
        if key not in _SAMPLES:
            _SAMPLES[key] = self._make(index)
        return dict(_SAMPLES[key])

    def _make(self, index: int) -> dict[str, Tensor]:
        seed = int(self.options.get("seed", 0)) * 1000 + _SPLIT_SEED.get(self.split, 3) * 100
        generator = torch.Generator().manual_seed(seed + index)
        target = self._image(index, generator)
        mask = self._mask(seed + index).float()
        sample = {"target": target, "mask": mask}
        maps = None
        if self.multicoil:
            coils = int(self.options.get("num_coils", 8))
            maps = physops.birdcage_maps(self.shape[-2:], coils)
            if self.dims == 3:
                maps = maps[:, None]
            sample["maps"] = maps
        with torch.no_grad():
            clean = self._physics(None if maps is None else maps[None], mask[None])(target[None])[0]
        sampled = mask.expand(clean.shape[-mask.ndim :]) > 0
        rms = clean.abs()[..., sampled].square().mean().sqrt()
        sigma = float(rms) * 10 ** (-float(self.options.get("snr_db", 30.0)) / 20)
        noise = torch.randn(clean.shape, dtype=torch.complex64, generator=generator) * sigma
        sample["kspace"] = clean + noise * (mask > 0)
        return sample

    def collate(self, samples: Sequence[dict[str, Tensor]]) -> Batch:
        """Stack samples into a :class:`unrolled.Batch` with the task's operator."""

        def stack(key: str, dtype: torch.dtype) -> Tensor:
            return torch.stack([s[key] for s in samples]).to(dtype)

        mask = stack("mask", self.real_dtype)
        if not self.multicoil and self.dims == 3:
            mask = mask[:, None]  # one column pattern for every slice of a volume
        maps = stack("maps", self.complex_dtype) if self.multicoil else None
        return Batch(
            y=stack("kspace", self.complex_dtype),
            physics=self._physics(maps, mask),
            target=stack("target", self.complex_dtype),
            x0=None,
        )


#: the options of each synthetic task and their defaults (any other option is refused)
_COMMON = {"acceleration": 4.0, "samples": 4, "snr_db": 30.0, "seed": 0, "dtype": "float32"}
_OPTIONS: dict[str, dict[str, Any]] = {
    "bench_sense": {"height": 320, "width": 256, "frames": 0, "num_coils": 8, **_COMMON},
    "bench_single": {"height": 320, "width": 320, "depth": 0, **_COMMON},
}


def _build(task: str, split: str, **options: Any) -> TaskDataset:
    defaults = _OPTIONS[task]
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise TypeError(f"{task}: unknown options {unknown}; it takes {sorted(defaults)}")
    return SyntheticMRI(task, split, {**defaults, **options}, multicoil=task == "bench_sense")


#: the synthetic tasks by name: ``build(split, **options) -> TaskDataset``
SYNTHETIC_TASKS: dict[str, Callable[..., TaskDataset]] = {
    task: functools.partial(_build, task) for task in _OPTIONS
}


def make_dataset(task: str, split: str, **options: Any) -> TaskDataset:
    """Return a split of a synthetic task, or of a task of :func:`unrolled.make_dataset`.

    The synthetic tasks stay out of :mod:`unrolled`'s registry (registering them would change
    what every other user of the registry in the process sees).
    """
    if task in SYNTHETIC_TASKS:
        return SYNTHETIC_TASKS[task](split, **options)
    return unrolled.make_dataset(task, split, **options)
