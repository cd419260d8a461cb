r"""Deblurring and sparse-view CT on real-anatomy magnitude images (LUSER Sec. 4.1).

The CT operator is the Radon transform divided by :math:`\sqrt{L}`,
:math:`L = \lambda_{\max}(R^T R)` (power iteration, once per image size), so that
:math:`\|A\| = 1` like the MRI and blur operators: step sizes and the scale of :math:`A^T y`
then match the images' (the raw Radon transform has :math:`L \approx 170 N` with 200 angles).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

import physops

from .._batch import Batch
from .._validate import check_split, finite_number, int_at_least
from ._dataset import (
    Sample,
    TaskDataset,
    builder_options,
    resolve_dtypes,
    seeded_generator,
    stack_samples,
)

__all__ = ["ct", "deblur"]


class _ImageTask(TaskDataset):
    """Real images measured by a fixed operator with seeded Gaussian noise.

    The images are :class:`physops.RealAnatomyDataset`'s (``kind="image"``).
    """

    complex = False

    def __init__(self, task: str, split: str, options: dict[str, Any]):
        super().__init__(task, split, options)
        self.source = physops.RealAnatomyDataset(
            # acceleration=1: no mask to draw (kind="image" returns only the target)
            check_split(split),
            kind="image",
            image_size=options["image_size"],
            acceleration=1.0,
        )
        self.seed = options["seed"]
        self.real_dtype = resolve_dtypes(options["dtype"])[0]
        # the operator that makes the measurements; collate builds a fresh one per batch, so
        # moving a batch's operator to a device never touches this one
        self._op = self.make_physics()

    def make_physics(self) -> physops.LinearOperator:  # pragma: no cover - abstract
        raise NotImplementedError

    def noise_std(self, clean: Tensor) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Sample:
        index = self.check_index(index)
        target = self.source[index]["target"]
        with torch.no_grad():
            clean = self._op(target[None])[0]
        noise = torch.randn(clean.shape, generator=seeded_generator(self.seed, index, 2))
        y = clean + self.noise_std(clean) * noise
        return {"y": y, "target": target, "index": torch.tensor(index, dtype=torch.int64)}

    def initial(self, y: Tensor, physics: physops.LinearOperator) -> Tensor | None:
        return None

    def collate(self, samples: Sequence[Sample]) -> Batch:
        y = stack_samples(samples, "y", self.real_dtype)
        target = stack_samples(samples, "target", self.real_dtype)
        physics = self.make_physics()
        return Batch(y=y, physics=physics, target=target, x0=self.initial(y, physics))


class _Deblur(_ImageTask):
    def make_physics(self) -> physops.LinearOperator:
        kernel = physops.gaussian_kernel(self.options["kernel_size"], self.options["variance"])
        return physops.Blur(kernel, boundary=self.options["boundary"])

    def noise_std(self, clean: Tensor) -> float:
        return float(self.options["noise_std"])

    def initial(self, y: Tensor, physics: physops.LinearOperator) -> Tensor:
        return y  # LUSER: the blurry image itself starts the iteration


def deblur(
    split: str = "train",
    *,
    image_size: int = 96,
    kernel_size: int = 9,
    variance: float = 5.0,
    noise_std: float = 0.01,
    boundary: str = "circular",
    seed: int = 0,
    dtype: str = "float32",
) -> TaskDataset:
    """Gaussian deblurring (LUSER Sec. 4.1).

    ``y = k * x + n``, ``k`` 9 x 9 of variance 5, white Gaussian noise of standard deviation 0.01
    (images in [0, 1]), ``x0 = y``.

    The images are the real-anatomy magnitudes (grey-scale; LUSER used RGB CelebA with the same
    kernel on every channel). The noise of item ``i`` is drawn from a generator seeded by
    ``(seed, i)``: an item is identical every time it is read.
    """
    options = builder_options(locals())
    int_at_least("kernel_size", kernel_size, 1)
    finite_number("variance", variance, low=0.0, low_open=True)
    finite_number("noise_std", noise_std, low=0.0)
    resolve_dtypes(dtype)
    return _Deblur("deblur", split, options)


@lru_cache(maxsize=16)
def _radon_norm(image_size: int, num_angles: int, keep: int, circle: bool) -> float:
    """``sqrt(L)``, ``L = lambda_max(R^T R)`` of the Radon transform (power iteration, float64)."""
    op = physops.Radon(image_size, physops.uniform_angles(num_angles, keep=keep), circle=circle)
    like = torch.zeros(1, image_size, image_size, dtype=torch.float64)
    return math.sqrt(float(physops.power_iteration(op, like, iterations=20, tol=1e-5)))


class _CT(_ImageTask):
    def radon(self) -> physops.Radon:
        o = self.options
        angles = physops.uniform_angles(o["num_angles"], keep=o["keep_angles"])
        return physops.Radon(o["image_size"], angles, circle=o["circle"])

    def scale(self) -> float:
        o = self.options
        return 1.0 / _radon_norm(o["image_size"], o["num_angles"], o["keep_angles"], o["circle"])

    def make_physics(self) -> physops.LinearOperator:
        return self.scale() * self.radon()

    def noise_std(self, clean: Tensor) -> float:
        rms = float(clean.square().mean().sqrt())
        return float(self.options["noise"]) * rms

    def initial(self, y: Tensor, physics: physops.LinearOperator) -> Tensor | None:
        if self.options["init"] == "adjoint":
            return None  # the model's default: A^T y (LUSER)
        return physops.fbp(self.radon(), y / self.scale())


def ct(
    split: str = "train",
    *,
    image_size: int = 64,
    num_angles: int = 1000,
    keep_angles: int = 200,
    noise: float = 0.01,
    init: str = "adjoint",
    circle: bool = True,
    seed: int = 0,
    dtype: str = "float32",
) -> TaskDataset:
    r"""Sparse-view parallel-beam CT (LUSER Sec. 4.1: 200 of 1000 uniformly spaced angles).

    ``physics = physops.Radon(N, uniform_angles(1000, keep=200)) / sqrt(L)`` (see the module
    docstring for the normalisation), ``y = physics(x) + n`` with ``n`` white Gaussian of
    standard deviation ``noise`` times the RMS of the clean sinogram of that item (1%: a 40 dB
    SNR; LUSER's LoDoPaB data come with their own low-dose noise).

    ``init="adjoint"`` (default, LUSER's choice "for consistency") leaves ``x0 = None``, so the
    models start from :math:`A^T y`; ``init="fbp"`` gives ``x0 = physops.fbp(R, y sqrt(L))``,
    filtered back-projection in the images' own scale.
    """
    options = builder_options(locals())
    int_at_least("num_angles", num_angles, 1)
    int_at_least("keep_angles", keep_angles, 1)
    finite_number("noise", noise, low=0.0)
    if init not in ("adjoint", "fbp"):
        raise ValueError(f"init must be 'adjoint' (A^T y, LUSER) or 'fbp', got {init!r}")
    resolve_dtypes(dtype)
    return _CT("ct", split, options)
