r"""The ``"ptychography"`` task: Fourier ptychography from real images (MEL Sec. 5.1).

The samples are complex objects made from real slices and their single-LED images; the model
(:class:`~unrolled.FPMNet`) multiplexes them with its own, learned LED design.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor

import physops

from .._batch import Batch
from .._validate import check_split, finite_number, int_at_least
from ._dataset import TaskDataset, builder_options, resolve_dtypes, seeded_generator

__all__ = ["PtychographyDataset", "ptychography"]


class PtychographyDataset(TaskDataset):
    r"""Simulated FPM samples from real images: complex objects and their single-LED images.

    Item ``i``: the object :math:`x = a\, e^{i\phi}` (:func:`physops.ptychography_object`) with
    amplitude from real-anatomy slice ``i`` of the split and phase from another slice of the
    same split (chosen by ``(seed, i)``), and its single-LED intensities
    :math:`I_\ell(x)` ``(L, n, n)`` (no noise: :class:`FPMNet` adds it after multiplexing).
    Batches are ``Batch(y=I, physics=<single-LED acquisition>, target=x, x0=None)``.

    Attributes
    ----------
    acquisition:
        The single-LED :class:`physops.FourierPtychography` (identity design, not learnable);
        ``FPMNet.from_physics(data.acquisition, ...)`` builds a model of this geometry.
    """

    complex = True
    dims = 2

    def __init__(self, split: str, options: dict[str, Any]):
        super().__init__("ptychography", split, options)
        self.real_dtype, self.complex_dtype = resolve_dtypes(options["dtype"])
        self.images = physops.real_anatomy_images(
            check_split(split), image_size=options["image_size"]
        ).to(self.real_dtype)
        self.acquisition = self.make_physics()

    def make_physics(self) -> physops.FourierPtychography:
        """Return a fresh single-LED acquisition (identity design) in the task's precision."""
        o = self.options
        leds = physops.led_grid(
            o["leds_per_side"], spacing=o["led_spacing"], distance=o["led_distance"]
        )
        op = physops.FourierPtychography(
            o["image_size"],
            leds,
            na=o["na"],
            wavelength=o["wavelength"],
            pixel_size=o["pixel_size"],
            downsample=o["downsample"],
            learnable=False,
        )
        return op.to(self.real_dtype)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self.check_index(index)
        n = len(self)
        gen = seeded_generator(self.options["seed"], index, 0)
        partner = (index + 1 + int(torch.randint(n - 1, (1,), generator=gen))) % n if n > 1 else 0
        target = physops.ptychography_object(
            self.images[index],
            self.images[partner],
            max_phase=self.options["max_phase"],
            min_amplitude=self.options["min_amplitude"],
        )
        with torch.no_grad():
            y = self.acquisition(target[None])[0]
        return {"y": y, "target": target, "index": torch.tensor(index, dtype=torch.int64)}

    def collate(self, samples: Sequence[dict[str, Any]]) -> Batch:
        y = torch.stack([s["y"] for s in samples]).to(self.real_dtype)
        target = torch.stack([s["target"] for s in samples]).to(self.complex_dtype)
        return Batch(y=y, physics=self.make_physics(), target=target, x0=None)

    @property
    def model_kwargs(self) -> dict[str, Any]:
        """The geometry arguments of :class:`FPMNet` (``FPMNet(**data.model_kwargs)``)."""
        op = self.acquisition
        return {
            "image_size": op.image_size,
            "illumination_na": cast(Tensor, op.illumination_na).detach().clone(),
            "na": op.na,
            "wavelength": op.wavelength,
            "pixel_size": op.pixel_size,
            "downsample": op.downsample,
        }


def ptychography(
    split: str = "train",
    *,
    image_size: int = 32,
    downsample: int = 4,
    leds_per_side: int = 5,
    led_spacing: float = 6e-3,
    led_distance: float = 30e-3,
    na: float = 0.25,
    wavelength: float = 0.53e-6,
    pixel_size: float = 0.25e-6,
    max_phase: float = math.pi / 2,
    min_amplitude: float = 0.2,
    seed: int = 0,
    dtype: str = "float32",
) -> TaskDataset:
    r"""Fourier ptychography from real images (MEL Sec. 5.1 in miniature).

    A square LED array of ``leds_per_side**2`` LEDs (:func:`physops.led_grid`; defaults: 25
    LEDs, 5 bright-field, illumination NA up to 0.49 with an objective NA of 0.25, a synthetic
    aperture of NA 0.74), objects of ``image_size`` px and camera images of
    ``image_size / downsample`` px (defaults 32 and 8). Items: see :class:`PtychographyDataset`.
    The splits are the real-anatomy splits (28 / 8 / 8 samples).
    """
    options = builder_options(locals())
    int_at_least("image_size", image_size, 4)
    int_at_least("downsample", downsample, 1)
    int_at_least("leds_per_side", leds_per_side, 1)
    finite_number("max_phase", max_phase, low=0.0)
    finite_number("min_amplitude", min_amplitude, low=0.0)
    resolve_dtypes(dtype)
    return PtychographyDataset(split, options)
