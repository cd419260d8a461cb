r"""The papers' inverse problems as datasets of :class:`~unrolled.Batch`, by name.

A *task* turns physops data into what the models and :func:`unrolled.train` consume: each item
of a :class:`TaskDataset` is a dict of tensors (a *sample*), and its :meth:`TaskDataset.collate`
(usable as a ``DataLoader`` ``collate_fn``, also in worker processes) stacks samples into a
:class:`~unrolled.Batch` ``(y, physics, target, x0)`` with the batch's forward operator.

Tasks (``make_dataset(name, split, **options)``; ``split`` is ``"train"``, ``"val"`` or
``"test"``, the fixed slice splits of :class:`physops.RealAnatomyDataset`)

=================  ====================================  =============================  =========
name               forward model (physics)               data (default)                 x0
=================  ====================================  =============================  =========
``multicoil_mri``  ``physops.Sense(maps, mask)``:         real anatomy, simulated 8-coil  ``None``
                   :math:`y = M F S x + n`                birdcage maps, 2D Poisson disc  (A^H y)
                                                          R = 4 (GLEAM); or the user's
                                                          fastMRI files (``root=``)
``singlecoil_mri`` ``physops.FourierSampling(mask)``:     real anatomy, 1D random          ``None``
                   :math:`y = M F x + n`                  columns R = 4 (LUSER: 4x, 8x);   (A^H y)
                                                          or fastMRI files
``deblur``         ``physops.Blur(gaussian_kernel(9,5))``  real anatomy magnitudes,        ``y``
                   :math:`y = k * x + n`, std 0.01        (LUSER Sec. 4.1)                 (LUSER)
``ct``             ``Radon(N, uniform_angles(1000,        real anatomy magnitudes,         ``None``
                   keep=200)) / sqrt(L)``                 1% relative noise                (A^T y,
                                                                                           LUSER);
                                                                                           or FBP
``mri3d``          ``physops.Sense(maps, mask)``, 3D      real-anatomy slabs ``(D, H, W)``  ``None``
                   FFT, Poisson mask shared over D        (i-RIM 3D, 3D MoDL)
=================  ====================================  =============================  =========

``ptychography`` (Fourier ptychography, MEL) is registered at the end of this module; its
dataset and model live in :mod:`unrolled._fpm` (:func:`~unrolled.ptychography`: single-LED images
``(B, L, n, n)`` of complex objects ``(B, N, N)`` made from real slices, ``physics`` the
single-LED acquisition). :func:`register_task` adds users' own tasks.

Every random draw (phase, noise, mask) is seeded by ``(seed, index)``: an item is identical every
time it is read, in any worker process, so training order and resume are deterministic.

Batch shapes (``B`` samples, ``N = image_size``, ``C`` coils, ``D`` slab depth; ``dtype="float64"``
doubles every precision)

=================  ======================  ===================  ========================  ========
task               ``y``                   ``target``           physics operands          ``x0``
=================  ======================  ===================  ========================  ========
``multicoil_mri``  c64 ``(B, C, N, N)``    c64 ``(B, N, N)``    maps c64 ``(B, C, N, N)``, ``None``
                                                                mask f32 ``(B, N, N)``
``singlecoil_mri`` c64 ``(B, N, N)``       c64 ``(B, N, N)``    mask f32 ``(B, N, N)``    ``None``
``deblur``         f32 ``(B, N, N)``       f32 ``(B, N, N)``    kernel f32 ``(9, 9)``     ``y``
``ct``             f32 ``(B, 200, N)``     f32 ``(B, N, N)``    200 angles, ``N`` bins    ``None``
                                                                                          or f32
                                                                                          ``(B, N,
                                                                                          N)``
``mri3d``          c64 ``(B, C, D, N, N)`` c64 ``(B, D, N, N)`` maps c64 ``(B, C, D, N,  ``None``
                                                                N)``, mask f32
                                                                ``(B, D, N, N)``
=================  ======================  ===================  ========================  ========

The CT operator is the Radon transform divided by :math:`\sqrt{L}`,
:math:`L = \lambda_{\max}(R^T R)` (power iteration, once per image size), so that
:math:`\|A\| = 1` like the MRI and blur operators: step sizes and the scale of :math:`A^T y`
then match the images' (the raw Radon transform has :math:`L \approx 170 N` with 200 angles).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

import physops

from ._batch import Batch

__all__ = [
    "TASKS",
    "TaskDataset",
    "TaskSpec",
    "get_task",
    "make_dataset",
    "register_task",
]

SPLITS = ("train", "val", "test")
_DTYPES = {
    "float32": (torch.float32, torch.complex64),
    "float64": (torch.float64, torch.complex128),
}

Sample = dict[str, Any]


def _generator(seed: int, index: int, stream: int) -> torch.Generator:
    """A private generator seeded by ``(seed, index, stream)`` (the same item, the same draw)."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + index) * 8 + stream) % (2**63))


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def _check_number(name: str, value: object, low: float, inclusive: bool = True) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and (value >= low if inclusive else value > low):  # type: ignore[operator]
        return float(value)  # type: ignore[arg-type]
    relation = ">=" if inclusive else ">"
    raise ValueError(f"{name} must be a finite number {relation} {low:g}, got {value!r}")


def _dtypes(dtype: str) -> tuple[torch.dtype, torch.dtype]:
    if dtype not in _DTYPES:
        raise ValueError(
            f"dtype must be one of {', '.join(map(repr, _DTYPES))} (complex data follows: "
            f"complex64 / complex128), got {dtype!r}"
        )
    return _DTYPES[dtype]


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(map(repr, SPLITS))}, got {split!r}")
    return split


def _stack(samples: Sequence[Sample], key: str, dtype: torch.dtype | None = None) -> Tensor:
    out = torch.stack([s[key] for s in samples])
    return out if dtype is None else out.to(dtype)


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
        """The batch of the items ``indices`` (default: every item)."""
        chosen = range(len(self)) if indices is None else indices
        return self.collate([self[int(i)] for i in chosen])

    @property
    def model_kwargs(self) -> dict[str, Any]:
        """``complex``, ``dims`` (and ``color_channels`` where set) for a model of this task."""
        out: dict[str, Any] = {"complex": self.complex, "dims": self.dims}
        if self.color_channels is not None:
            out["color_channels"] = self.color_channels
        return out

    def _index(self, index: int) -> int:
        n = len(self)
        if isinstance(index, bool) or not isinstance(index, int) or not -n <= index < n:
            raise IndexError(f"index {index!r} out of range for {n} samples of {self!r}")
        return index % n

    def __repr__(self) -> str:
        return f"{type(self).__name__}(task={self.task!r}, split={self.split!r}, n={len(self)})"


# ------------------------------------------------------------------------------------------------
# MRI on the embedded real anatomy
# ------------------------------------------------------------------------------------------------
class _AnatomyMRI(TaskDataset):
    """Multi-coil (2D or 3D) or single-coil MRI from :class:`physops.RealAnatomyDataset`."""

    def __init__(
        self,
        task: str,
        split: str,
        options: dict[str, Any],
        source: Dataset,
        multicoil: bool,
        dims: int,
    ):
        super().__init__(task, split, options)
        self.source = source
        self.multicoil = multicoil
        self.dims = dims
        self.real_dtype, self.complex_dtype = _dtypes(options["dtype"])

    def __len__(self) -> int:
        return len(self.source)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Sample:
        return self.source[self._index(index)]

    def collate(self, samples: Sequence[Sample]) -> Batch:
        y = _stack(samples, "kspace", self.complex_dtype)
        target = _stack(samples, "target", self.complex_dtype)
        mask = _stack(samples, "mask", self.real_dtype)
        physics: physops.LinearOperator
        if self.multicoil:
            physics = physops.Sense(_stack(samples, "maps", self.complex_dtype), mask)
        else:
            physics = physops.FourierSampling(mask, ndim=self.dims)
        return Batch(y=y, physics=physics, target=target, x0=None)


def _calibration(image_size: int, calibration: int | None) -> int:
    # GLEAM/fastMRI: a 12 x 12 calibration box at 96+ px; smaller images get a box that still
    # leaves room for the requested acceleration
    return max(4, image_size // 8) if calibration is None else calibration


def multicoil_mri(
    split: str = "train",
    *,
    image_size: int | None = None,
    num_coils: int = 8,
    acceleration: float = 4.0,
    mask: str | None = None,
    center_fraction: float | None = None,
    calibration: int | None = None,
    snr_db: float = 30.0,
    maps: str = "true",
    root: str | None = None,
    seed: int = 0,
    dtype: str = "float32",
) -> TaskDataset:
    """Multi-coil 2D MRI (GLEAM, MEL): ``physops.Sense(maps, mask)``.

    Real anatomy with simulated birdcage coils (:class:`physops.RealAnatomyDataset`), or the
    user's fastMRI multicoil files when ``root`` is given (see :func:`_fastmri_dataset`).

    Parameters
    ----------
    image_size:
        Side ``N`` of the square images (default 96; fastMRI: the files' reconstruction size,
        e.g. 320 x 320, unless given).
    num_coils:
        Simulated coils ``C``.
    acceleration:
        Sampling acceleration R (GLEAM mridata: 4, 12, 16; fastMRI: 8).
    mask:
        ``"poisson"`` (2D variable-density Poisson disc, GLEAM mridata; the default on the
        embedded data), ``"random"`` (the default on fastMRI files, GLEAM's fastMRI setting) or
        ``"equispaced"`` (fastMRI's 1D columns).
    center_fraction:
        Fully sampled centre of the 1D masks (default 0.08 for R <= 4, else 0.04, fastMRI's).
    calibration:
        Fully sampled centre box of the Poisson mask and ESPIRiT's calibration region (default
        ``max(4, N // 8)``: 12 at 96 px).
    snr_db:
        K-space SNR of the simulated noise.
    maps:
        ``"true"`` (the simulated maps) or ``"espirit"`` (estimated, as GLEAM does).
    root:
        fastMRI files instead of the embedded data: a file, a folder of ``.h5`` files, or a folder
        with ``train``/``val``/``test`` (or ``multicoil_train``, ...) subfolders.
    seed:
        Seed of every random draw (per item: ``(seed, index)``).
    dtype:
        ``"float32"`` (complex64 data) or ``"float64"`` (complex128).
    """
    center = _center_fraction(acceleration, center_fraction)
    cal = _calibration(image_size or 96, calibration)
    options = {
        "image_size": image_size,
        "num_coils": num_coils,
        "acceleration": acceleration,
        "mask": mask,
        "center_fraction": center,
        "calibration": cal,
        "snr_db": snr_db,
        "maps": maps,
        "root": root,
        "seed": seed,
        "dtype": dtype,
    }
    _dtypes(dtype)
    if root is not None:
        from ._fastmri import fastmri_dataset

        options["mask"] = "random" if mask is None else mask
        return fastmri_dataset("multicoil_mri", "multicoil", split, options)
    options["mask"] = mask = "poisson" if mask is None else mask
    options["image_size"] = image_size = 96 if image_size is None else image_size
    source = physops.RealAnatomyDataset(
        _check_split(split),
        kind="multicoil",
        image_size=image_size,
        num_coils=num_coils,
        acceleration=acceleration,
        mask=mask,
        center_fraction=center,
        calibration=cal,
        snr_db=snr_db,
        maps=maps,
        seed=seed,
    )
    return _AnatomyMRI("multicoil_mri", split, options, source, multicoil=True, dims=2)


def singlecoil_mri(
    split: str = "train",
    *,
    image_size: int | None = None,
    acceleration: float = 4.0,
    mask: str = "random",
    center_fraction: float | None = None,
    calibration: int | None = None,
    snr_db: float = 30.0,
    root: str | None = None,
    seed: int = 0,
    dtype: str = "float32",
) -> TaskDataset:
    """Single-coil 2D MRI (LUSER: 1D random columns at 4x and 8x): ``physops.FourierSampling``.

    Options as :func:`multicoil_mri` (default mask ``"random"``, LUSER's setting); ``root`` reads
    fastMRI singlecoil files.
    """
    center = _center_fraction(acceleration, center_fraction)
    cal = _calibration(image_size or 96, calibration)
    options = {
        "image_size": image_size,
        "acceleration": acceleration,
        "mask": mask,
        "center_fraction": center,
        "calibration": cal,
        "snr_db": snr_db,
        "root": root,
        "seed": seed,
        "dtype": dtype,
    }
    _dtypes(dtype)
    if root is not None:
        from ._fastmri import fastmri_dataset

        return fastmri_dataset("singlecoil_mri", "singlecoil", split, options)
    options["image_size"] = image_size = 96 if image_size is None else image_size
    source = physops.RealAnatomyDataset(
        _check_split(split),
        kind="singlecoil",
        image_size=image_size,
        acceleration=acceleration,
        mask=mask,
        center_fraction=center,
        calibration=cal,
        snr_db=snr_db,
        seed=seed,
    )
    return _AnatomyMRI("singlecoil_mri", split, options, source, multicoil=False, dims=2)


def mri3d(
    split: str = "train",
    *,
    image_size: int = 64,
    depth: int = 4,
    num_coils: int = 8,
    acceleration: float = 4.0,
    calibration: int | None = None,
    snr_db: float = 30.0,
    seed: int = 0,
    dtype: str = "float32",
) -> TaskDataset:
    """Multi-coil 3D MRI on real-anatomy slabs ``(D, N, N)`` (i-RIM 3D, GLEAM's 3D MoDL).

    A 3D Fourier transform over ``(D, N, N)`` and a 2D Poisson-disc mask over the two
    phase-encode axes ``(N, N)``, the same for every slice of the slab
    (:class:`physops.RealAnatomyDataset` with ``ndim=3``). ``depth`` is at most 4 (the val and
    test splits hold 4 slices); the splits hold 22 / 2 / 2 slabs at ``depth=4``.
    """
    cal = _calibration(image_size, calibration)
    options = {
        "image_size": image_size,
        "depth": depth,
        "num_coils": num_coils,
        "acceleration": acceleration,
        "calibration": cal,
        "snr_db": snr_db,
        "seed": seed,
        "dtype": dtype,
    }
    _dtypes(dtype)
    source = physops.RealAnatomyDataset(
        _check_split(split),
        kind="multicoil",
        ndim=3,
        depth=depth,
        image_size=image_size,
        num_coils=num_coils,
        acceleration=acceleration,
        mask="poisson",
        calibration=cal,
        snr_db=snr_db,
        seed=seed,
    )
    return _AnatomyMRI("mri3d", split, options, source, multicoil=True, dims=3)


def _center_fraction(acceleration: float, center_fraction: float | None) -> float:
    if center_fraction is not None:
        return center_fraction
    return 0.08 if acceleration <= 4 else 0.04


# ------------------------------------------------------------------------------------------------
# deblurring and CT on real-anatomy magnitude images
# ------------------------------------------------------------------------------------------------
class _ImageTask(TaskDataset):
    """Real images from :class:`physops.RealAnatomyDataset` (``kind="image"``) measured by a
    fixed operator with seeded Gaussian noise."""

    complex = False

    def __init__(self, task: str, split: str, options: dict[str, Any]):
        super().__init__(task, split, options)
        self.source = physops.RealAnatomyDataset(
            # acceleration=1: no mask to draw (kind="image" returns only the target)
            _check_split(split),
            kind="image",
            image_size=options["image_size"],
            acceleration=1.0,
        )
        self.seed = options["seed"]
        self.real_dtype = _dtypes(options["dtype"])[0]
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
        index = self._index(index)
        target = self.source[index]["target"]
        with torch.no_grad():
            clean = self._op(target[None])[0]
        noise = torch.randn(clean.shape, generator=_generator(self.seed, index, 2))
        y = clean + self.noise_std(clean) * noise
        return {"y": y, "target": target, "index": torch.tensor(index, dtype=torch.int64)}

    def initial(self, y: Tensor, physics: physops.LinearOperator) -> Tensor | None:
        return None

    def collate(self, samples: Sequence[Sample]) -> Batch:
        y = _stack(samples, "y", self.real_dtype)
        target = _stack(samples, "target", self.real_dtype)
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
    """Gaussian deblurring (LUSER Sec. 4.1): ``y = k * x + n``, ``k`` 9 x 9 of variance 5,
    white Gaussian noise of standard deviation 0.01 (images in [0, 1]), ``x0 = y``.

    The images are the real-anatomy magnitudes (grey-scale; LUSER used RGB CelebA with the same
    kernel on every channel). The noise of item ``i`` is drawn from a generator seeded by
    ``(seed, i)``: an item is identical every time it is read.
    """
    _check_int("kernel_size", kernel_size, 1)
    _check_number("variance", variance, 0.0, inclusive=False)
    _check_number("noise_std", noise_std, 0.0)
    _dtypes(dtype)
    options = {
        "image_size": image_size,
        "kernel_size": kernel_size,
        "variance": variance,
        "noise_std": noise_std,
        "boundary": boundary,
        "seed": seed,
        "dtype": dtype,
    }
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
    _check_int("num_angles", num_angles, 1)
    _check_int("keep_angles", keep_angles, 1)
    _check_number("noise", noise, 0.0)
    if init not in ("adjoint", "fbp"):
        raise ValueError(f"init must be 'adjoint' (A^T y, LUSER) or 'fbp', got {init!r}")
    _dtypes(dtype)
    options = {
        "image_size": image_size,
        "num_angles": num_angles,
        "keep_angles": keep_angles,
        "noise": noise,
        "init": init,
        "circle": circle,
        "seed": seed,
        "dtype": dtype,
    }
    return _CT("ct", split, options)


# ------------------------------------------------------------------------------------------------
# the registry
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskSpec:
    """A registered task: ``build(split, **options) -> TaskDataset`` and a one-line summary."""

    name: str
    build: Callable[..., TaskDataset]
    summary: str

    def defaults(self) -> dict[str, Any]:
        """The task's options and their default values (from ``build``'s signature)."""
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
    """The task registered under ``name``; an unknown name lists the valid ones."""
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))}"
        ) from None


def make_dataset(task: str, split: str = "train", **options: Any) -> TaskDataset:
    """The ``split`` of ``task`` with ``options`` (see each task's function for its options).

    Examples
    --------
    >>> data = make_dataset("multicoil_mri", "train", image_size=32)      # doctest: +SKIP
    >>> batch = data.collate([data[0], data[1]])                          # doctest: +SKIP
    >>> loader = DataLoader(data, batch_size=4, collate_fn=data.collate)  # doctest: +SKIP
    """
    spec = get_task(task)
    _check_split(split)
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

# --- issue 7: Fourier ptychography (MEL Sec. 5.1); the dataset and FPMNet live in _fpm.py ---------
from ._fpm import ptychography  # noqa: E402  (after TaskDataset: _fpm subclasses it)

register_task(
    "ptychography", ptychography, "Fourier ptychography, single-LED images of real objects (MEL)"
)
