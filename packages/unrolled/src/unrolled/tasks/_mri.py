"""MRI tasks on the embedded real anatomy (or the user's fastMRI files).

Multi-coil 2D, single-coil 2D and multi-coil 3D.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch.utils.data import Dataset

import physops

from .._batch import Batch
from .._validate import check_split
from ._dataset import Sample, TaskDataset, builder_options, mri_batch, resolve_dtypes
from ._fastmri import FASTMRI_OPTIONS, fastmri_dataset

__all__ = ["mri3d", "multicoil_mri", "singlecoil_mri"]

# options of the tasks that are not physops.RealAnatomyDataset's
_OWN_OPTIONS = ("root", "dtype", *FASTMRI_OPTIONS)


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
        self.dtypes = resolve_dtypes(options["dtype"])

    def __len__(self) -> int:
        return len(self.source)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Sample:
        return self.source[self.check_index(index)]

    def collate(self, samples: Sequence[Sample]) -> Batch:
        """Stack samples into a batch with ``Sense(maps, mask)`` or ``FourierSampling(mask)``."""
        return mri_batch(samples, self.multicoil, self.dtypes, self.dims)


def _anatomy(
    task: str, split: str, options: dict[str, Any], kind: str, dims: int = 2, **fixed: Any
) -> TaskDataset:
    """Return the task on :class:`physops.RealAnatomyDataset`.

    The dataset takes the task's own options but ``root`` and ``dtype`` (and ``fixed``).
    """
    source = physops.RealAnatomyDataset(
        check_split(split),
        kind=kind,
        **{k: v for k, v in options.items() if k not in _OWN_OPTIONS},
        **fixed,
    )
    return _AnatomyMRI(task, split, options, source, multicoil=kind == "multicoil", dims=dims)


def _calibration(image_size: int, calibration: int | None) -> int:
    # GLEAM/fastMRI: a 12 x 12 calibration box at 96+ px; smaller images get a box that still
    # leaves room for the requested acceleration
    return max(4, image_size // 8) if calibration is None else calibration


def _center_fraction(acceleration: float, center_fraction: float | None) -> float:
    if center_fraction is not None:
        return center_fraction
    return 0.08 if acceleration <= 4 else 0.04


def _no_fastmri_options(task: str, options: dict[str, Any]) -> None:
    """Refuse the options of fastMRI files on the embedded data (no ``root``)."""
    for name, default in FASTMRI_OPTIONS.items():
        if name in options and options[name] != default:
            raise ValueError(
                f"{task}: {name}={options[name]!r} applies to fastMRI files only: pass root=DIR "
                "(memroll: --fastmri DIR), or leave it out"
            )


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
    split_by_file: tuple[float, float, float] | None = None,
    split_seed: int = 0,
    maps_method: str = "espirit",
    maps_cache: str | None = None,
    seed: int = 0,
    dtype: str = "float32",
) -> TaskDataset:
    """Multi-coil 2D MRI (GLEAM, MEL): ``physops.Sense(maps, mask)``.

    Real anatomy with simulated birdcage coils (:class:`physops.RealAnatomyDataset`), or the
    user's fastMRI multicoil files when ``root`` is given (see :class:`FastMRITask`).

    Parameters
    ----------
    split:
        ``"train"``, ``"val"`` or ``"test"``.
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
        ``max(4, N // 8)``: 12 at 96 px; fastMRI files: the largest centred square inside the
        columns every slice samples fully, the file's own mask or the 1D masks' centre block).
    snr_db:
        K-space SNR of the simulated noise.
    maps:
        ``"true"`` (the simulated maps) or ``"espirit"`` (estimated, as GLEAM does).
    root:
        fastMRI files instead of the embedded data: a folder with ``train``/``val``/``test`` (or
        ``multicoil_train``, ...) subfolders, a flat folder of ``.h5`` files with
        ``split_by_file``, or one file (the ``test`` split only).
    split_by_file:
        ``(train, val, test)`` fractions that split a flat folder by whole files, shuffled by
        ``split_seed`` (a volume's slices never straddle two splits).
    split_seed:
        The seed of ``split_by_file``'s shuffle.
    maps_method:
        fastMRI files: ``"espirit"`` (physops' batched torch ESPIRiT), ``"espirit-sigpy"`` or
        ``"jsense-sigpy"`` (sigpy's, the ``cs`` extra).
    maps_cache:
        fastMRI files: the coil-map cache folder (default ``.coil_maps/`` beside each file; fill
        it ahead with :func:`unrolled.prepare_coil_maps` or ``memroll prepare``).
    seed:
        Seed of every random draw (per item: ``(seed, index)``).
    dtype:
        ``"float32"`` (complex64 data) or ``"float64"`` (complex128).

    Returns
    -------
    TaskDataset
        The split's samples; its ``collate`` makes the batches.
    """
    options = builder_options(locals())
    options["center_fraction"] = _center_fraction(acceleration, center_fraction)
    resolve_dtypes(dtype)
    if root is not None:
        options["mask"] = "random" if mask is None else mask
        return fastmri_dataset("multicoil_mri", "multicoil", split, options)
    _no_fastmri_options("multicoil_mri", options)
    options["calibration"] = _calibration(image_size or 96, calibration)
    options["mask"] = "poisson" if mask is None else mask
    options["image_size"] = 96 if image_size is None else image_size
    return _anatomy("multicoil_mri", split, options, "multicoil")


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
    split_by_file: tuple[float, float, float] | None = None,
    split_seed: int = 0,
    seed: int = 0,
    dtype: str = "float32",
) -> TaskDataset:
    """Single-coil 2D MRI (LUSER: 1D random columns at 4x and 8x): ``physops.FourierSampling``.

    Options as :func:`multicoil_mri` (default mask ``"random"``, LUSER's setting); ``root`` reads
    fastMRI singlecoil files (splits as there).
    """
    options = builder_options(locals())
    options["center_fraction"] = _center_fraction(acceleration, center_fraction)
    resolve_dtypes(dtype)
    if root is not None:
        return fastmri_dataset("singlecoil_mri", "singlecoil", split, options)
    _no_fastmri_options("singlecoil_mri", options)
    options["calibration"] = _calibration(image_size or 96, calibration)
    options["image_size"] = 96 if image_size is None else image_size
    return _anatomy("singlecoil_mri", split, options, "singlecoil")


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
    options = builder_options(locals())
    options["calibration"] = _calibration(image_size, calibration)
    resolve_dtypes(dtype)
    return _anatomy("mri3d", split, options, "multicoil", dims=3, ndim=3, mask="poisson")
