r"""Real MR anatomy that installs with the package, and MRI measurements simulated from it.

The anatomy is real; the coils, the phase, the noise and the undersampling are simulated.

Source
------
The brain volume that ships inside the ``nibabel`` wheel (``nibabel/tests/data/example4d.nii.gz``,
MIT licence like the rest of nibabel): a real human brain, two time frames of an EPI run,
``128 x 96 x 24`` voxels of ``2 x 2 x 2.2`` mm, skull-stripped (zero background). It installs from
PyPI with ``nibabel``, so nothing is downloaded at run time.

Why this one: it is the only registry-installable real MR data we found that is a *volume*, so it
gives many slices of one anatomy (a real train/val/test split and a 3D volume for 3D models)
under a permissive licence. The alternatives we checked: pydicom's bundled ``MR_small.dcm``
(one 64 x 64 slice); the ``pydicom-data`` wheel (MIT, 34 MB) whose MR files are single slices of
different anatomies (a 1024 x 1024 shoulder, a 484 x 484 abdomen, a 64 x 64 head crop in ten
frames), too few of any one kind for a split; nibabel's other volumes (``anatomical.nii``,
33 x 41 x 25; AFNI/MINC files of 10 to 54 voxels a side) are too coarse; scikit-image's MR
``brain`` data is fetched at run time, which is not allowed here.

Splits (fixed, by slice, with a one-slice gap so no split sees its neighbour's slices)
-------------------------------------------------------------------------------------
=========  =============  ======================  ==============================
split      axial slices   2D samples (2 frames)   3D slabs (``depth=4``, 2 frames)
=========  =============  ======================  ==============================
train      0 - 13         28                      22
val        15 - 18        8                       2
test       20 - 23        8                       2
=========  =============  ======================  ==============================

This is one subject: the test split measures reconstruction of unseen slices of a seen head, not
generalisation across subjects. Both time frames of a slice go to the same split.
"""

from __future__ import annotations

import importlib.resources
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from physops._coils import birdcage_maps, espirit_maps
from physops._fft import fftc
from physops._masks import equispaced_mask_1d, random_mask_1d
from physops._masks_2d import poisson_disc_mask
from physops._validate import finite_number, integer, one_of, positive_int

__all__ = [
    "RealAnatomyDataset",
    "real_anatomy_images",
    "real_anatomy_volumes",
    "simulate_kspace",
    "smooth_phase",
]

SPLITS: dict[str, range] = {"train": range(0, 14), "val": range(15, 19), "test": range(20, 24)}
_KINDS = ("multicoil", "singlecoil", "image")
_MASKS = ("poisson", "random", "equispaced")


SOURCE = ("tests", "data", "example4d.nii.gz")  # inside the installed nibabel package


def _check_split(split: str, who: str) -> range:
    return SPLITS[one_of(split, "split", who, SPLITS)]


def _check_size(image_size: int, who: str) -> int:
    return integer(
        image_size,
        "image_size",
        who,
        low=16,
        hint=" (the source is 128 px across; 64 to 160 suit CPU demos)",
        template="{who}: {name} must be {expected}{hint}, got {value!r}.",
    )


def _nibabel() -> Any:
    """Import nibabel, or raise an ``ImportError`` that names what is really missing."""
    try:
        import nibabel
    except ImportError as err:
        missing = getattr(err, "name", None)
        if missing == "nibabel" or (missing is None and "nibabel" in str(err)):
            raise ImportError(
                "the real-anatomy data need nibabel, which is not installed: pip install nibabel "
                f"(a dependency of memroll-physops) ({err})"
            ) from err
        raise ImportError(
            f"the real-anatomy data need nibabel, which is installed but failed to import: {err} "
            f"(install or repair {missing or 'the module it names'})"
        ) from err
    return nibabel


def _anatomy_file() -> Path:
    """Locate the brain volume inside the installed nibabel (without importing nibabel.testing).

    ``nibabel.testing`` imports pytest, so going through it would make the quickstart depend on
    a test framework; the file is package data, found with :mod:`importlib.resources`.
    """
    nibabel = _nibabel()
    resource = importlib.resources.files(nibabel).joinpath(*SOURCE)
    path = Path(str(resource))
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: this nibabel {getattr(nibabel, '__version__', '')} build ships "
            f"without its test data, where the real-anatomy volume lives; reinstall nibabel from "
            f"PyPI (pip install --force-reinstall nibabel)."
        )
    return path


@lru_cache(maxsize=1)
def _source_volume() -> np.ndarray:
    """Load the raw brain volume as float32 ``(frames, z, rows, cols)``, rows front to back."""
    image: Any = _nibabel().load(_anatomy_file())
    data = np.asarray(image.dataobj, dtype=np.float32)  # (x, y, z, t)
    # (t, z, y, x) with y flipped so that rows run anterior (top) to posterior
    return np.ascontiguousarray(data.transpose(3, 2, 1, 0)[:, :, ::-1, :])


def _resize(stack: Tensor, image_size: int) -> Tensor:
    """Zero-pad ``(N, rows, cols)`` to a square, resample to ``image_size``, scale max to 1."""
    rows, cols = stack.shape[-2:]
    side = max(rows, cols)
    pad_r, pad_c = side - rows, side - cols
    square = torch.nn.functional.pad(
        stack, (pad_c // 2, pad_c - pad_c // 2, pad_r // 2, pad_r - pad_r // 2)
    )
    out = torch.nn.functional.interpolate(
        square[:, None],
        size=(image_size, image_size),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )[:, 0]
    return out.clamp_min(0.0)


def real_anatomy_images(split: str = "train", *, image_size: int = 96) -> Tensor:
    """Real axial brain slices of one split as magnitude images.

    Parameters
    ----------
    split : {"train", "val", "test"}
        The fixed split (see the module docstring).
    image_size : int
        Output side in pixels (square; the 128 x 96 source is zero-padded to 128 x 128 first).

    Returns
    -------
    Tensor
        float32 ``(N, image_size, image_size)``, non-negative, scaled so that the volume's maximum
        is 1; ``N`` = 2 frames x the split's slices, ordered frame-major.
    """
    who = "real_anatomy_images"
    z = _check_split(split, who)
    size = _check_size(image_size, who)
    volume = torch.from_numpy(_source_volume())
    volume = volume / volume.max()
    slices = volume[:, z.start : z.stop].reshape(-1, *volume.shape[-2:])
    return _resize(slices, size).contiguous()


def real_anatomy_volumes(split: str = "train", *, image_size: int = 64, depth: int = 4) -> Tensor:
    """Real brain slabs of one split as 3D magnitude volumes.

    Slabs of ``depth`` consecutive axial slices, one per start position (stride 1) inside the
    split's slice range, for both time frames.

    Returns
    -------
    Tensor
        float32 ``(N, depth, image_size, image_size)``.
    """
    who = "real_anatomy_volumes"
    z = _check_split(split, who)
    size = _check_size(image_size, who)
    depth = integer(
        depth,
        "depth",
        who,
        low=1,
        high=len(z),
        expected=f"an int in [1, {len(z)}] for split {split!r} (it holds {len(z)} slices)",
    )
    volume = torch.from_numpy(_source_volume())
    volume = volume / volume.max()
    frames, _, rows, cols = volume.shape
    resized = _resize(volume[:, z.start : z.stop].reshape(-1, rows, cols), size)
    resized = resized.reshape(frames, len(z), size, size)
    slabs = [resized[f, s : s + depth] for f in range(frames) for s in range(len(z) - depth + 1)]
    return torch.stack(slabs).contiguous()


def smooth_phase(
    shape: tuple[int, ...],
    *,
    max_phase: float = math.pi / 2,
    cutoff: int = 3,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw a smooth random phase map of random low frequencies, in ``[-max_phase, max_phase]``.

    The frequencies kept are those with ``|k| <= cutoff`` around the centre of the spectrum.

    Returns
    -------
    Tensor
        float32 of ``shape`` (2D or 3D), in radians.
    """
    coeffs = torch.zeros(shape, dtype=torch.complex64)
    centre = tuple(
        slice(n // 2 - min(cutoff, n // 2), n // 2 + min(cutoff, n // 2) + 1) for n in shape
    )
    sub = coeffs[centre]
    sub.copy_(torch.randn(sub.shape, dtype=torch.complex64, generator=generator))
    field = torch.fft.ifftn(torch.fft.ifftshift(coeffs)).real
    field = field - field.mean()
    return (field / field.abs().max().clamp_min(1e-12) * max_phase).float()


def simulate_kspace(
    image: Tensor,
    maps: Tensor | None = None,
    *,
    snr_db: float = 30.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, float]:
    r"""Fully sampled noisy k-space of a complex image: :math:`k_c = F(S_c x) + n_c`.

    The noise is complex white Gaussian with standard deviation
    :math:`\sigma = \|F S x\| / \sqrt{N} \cdot 10^{-\text{snr\_db}/20}` (per complex sample;
    :math:`N` the number of k-space samples), so the signal-to-noise power ratio over the whole
    k-space is ``snr_db``.

    Parameters
    ----------
    image : Tensor
        Complex ``(*image_shape)``.
    maps : Tensor, optional
        Complex ``(C, *image_shape)``; ``None`` for single-coil k-space of ``image``'s shape.
    snr_db : float
        ``inf`` for no noise.

    Returns
    -------
    (Tensor, float)
        K-space ``(C, *image_shape)`` (or ``image_shape``) and the noise ``sigma``.
    """
    if not isinstance(image, Tensor) or not image.is_complex():
        raise TypeError("simulate_kspace expects a complex image tensor.")
    ndim = image.ndim
    if ndim not in (2, 3):
        raise ValueError(
            f"simulate_kspace expects an image of shape (H, W) or (D, H, W), got "
            f"{tuple(image.shape)}."
        )
    if maps is not None and maps.shape[1:] != image.shape:
        raise ValueError(
            f"simulate_kspace: maps of shape {tuple(maps.shape)} do not match the image "
            f"{tuple(image.shape)}: expected (coils, *image_shape)."
        )
    coil_images = image if maps is None else maps * image
    kspace = fftc(coil_images, ndim)
    if math.isinf(snr_db):
        return kspace, 0.0
    sigma = float(kspace.abs().square().mean().sqrt()) * 10 ** (-snr_db / 20)
    noise = torch.randn(kspace.shape, dtype=kspace.dtype, generator=generator)  # E|n|^2 = 1
    return kspace + sigma * noise, sigma


class RealAnatomyDataset(Dataset):
    r"""MRI training samples from real brain anatomy with simulated coils, phase, noise and masks.

    **The anatomy is real; the coils are simulated.** Each item takes a real axial slice (or 3D
    slab) from :func:`real_anatomy_images` / :func:`real_anatomy_volumes`, gives it a smooth
    random phase (:func:`smooth_phase`), multiplies it with birdcage coil maps
    (:func:`physops.birdcage_maps`, normalised to :math:`\sum_c |S_c|^2 = 1`), Fourier transforms,
    adds complex Gaussian noise at ``snr_db`` and applies a sampling mask:

    .. math::

        y = M \odot (F S x + n), \qquad x = |x_{\text{real}}| \, e^{i \phi}.

    Everything random (phase, noise, mask) is seeded by ``(seed, index)``: an item is the same
    every time it is read, in any worker. Change ``dataset.seed`` (for example to the epoch) for
    fresh masks and noise.

    Parameters
    ----------
    split : {"train", "val", "test"}
        The fixed split (see the module docstring).
    kind : {"multicoil", "singlecoil", "image"}
        What to simulate; ``"image"`` returns only the real magnitude image (for CT or deblurring
        measurements made elsewhere).
    image_size : int
        Side of the square images (64 to 160 suit CPU demos).
    ndim : {2, 3}
        2D slices or 3D slabs of ``depth`` slices (``(D, H, W)``, 3D Fourier transform).
    depth : int
        Slab depth for ``ndim=3`` (at most 4 for val/test, 14 for train).
    num_coils : int
        Coils for ``kind="multicoil"`` (``rings=2`` for 3D when even).
    acceleration : float
        Sampling acceleration ``R`` (``1`` for fully sampled).
    mask : {"poisson", "random", "equispaced"}
        2D variable-density Poisson disc (in ``(H, W)``, broadcast over ``D`` in 3D), or fastMRI's
        1D random / equispaced columns (2D only).
    center_fraction : float
        Fully sampled central columns of the 1D masks.
    calibration : int
        Fully sampled calibration box of the Poisson mask.
    snr_db : float
        K-space SNR (see :func:`simulate_kspace`); ``float("inf")`` for noiseless data.
    maps : {"true", "espirit"}
        Return the simulated maps, or ESPIRiT maps (:func:`physops.espirit_maps`) estimated from
        the central ``calibration`` box of the fully sampled noisy k-space (2D only).
    seed : int
        Seed of everything random.

    Sample (a dict of tensors; the default ``collate_fn`` stacks a batch)
    ---------------------------------------------------------------------
    =================  ====================================  ======================================
    key                dtype, shape (2D; 3D adds ``D``)      content
    =================  ====================================  ======================================
    ``kspace``         complex64 ``(C, H, W)``               :math:`y`, zero where not sampled
                       (``(H, W)`` singlecoil)
    ``maps``           complex64 ``(C, H, W)``               coil maps (multicoil only)
    ``mask``           float32 ``(H, W)``                    :math:`M` in ``{0, 1}``
    ``target``         complex64 ``(H, W)``                  :math:`x`; max magnitude <= 1
                       (float32 for ``kind="image"``)
    ``noise_std``      float32 ``()``                        :math:`\sigma` per complex sample
    ``index``          int64 ``()``                          the item's index
    =================  ====================================  ======================================

    ``physops.Sense(batch["maps"], batch["mask"])`` (``FourierSampling(batch["mask"])`` for
    single-coil) is then the forward operator of the batch, and ``A.adjoint(batch["kspace"])``
    its zero-filled reconstruction.
    """

    def __init__(
        self,
        split: str = "train",
        *,
        kind: str = "multicoil",
        image_size: int = 96,
        ndim: int = 2,
        depth: int = 4,
        num_coils: int = 8,
        acceleration: float = 4.0,
        mask: str = "poisson",
        center_fraction: float = 0.08,
        calibration: int = 12,
        snr_db: float = 30.0,
        maps: str = "true",
        seed: int = 0,
    ) -> None:
        who = "RealAnatomyDataset"
        one_of(kind, "kind", who, _KINDS)
        one_of(mask, "mask", who, _MASKS)
        one_of(maps, "maps", who, ("true", "espirit"))
        integer(ndim, "ndim", who, low=2, high=3, expected="2 (slices) or 3 (slabs)")
        if ndim == 3 and mask != "poisson":
            raise ValueError(
                f"{who}: ndim=3 samples the two phase-encode axes with a 2D mask: use "
                f"mask='poisson', got {mask!r}."
            )
        if maps == "espirit" and ndim == 3:
            raise ValueError(f"{who}: maps='espirit' supports ndim=2 only.")
        num_coils = positive_int(num_coils, "num_coils", who)
        acceleration = finite_number(
            acceleration, "acceleration", who, low=1, expected=">= 1 (1 = fully sampled)"
        )
        center_fraction = finite_number(center_fraction, "center_fraction", who, low=0, high=1)
        snr_db = float(snr_db) if snr_db == math.inf else finite_number(snr_db, "snr_db", who)
        integer(seed, "seed", who)
        self.image_size = _check_size(image_size, who)
        calibration = positive_int(calibration, "calibration", who)
        if calibration > image_size:
            raise ValueError(
                f"{who}: calibration region {calibration} is larger than the image "
                f"{image_size}: pass calibration <= image_size."
            )
        self.split, self.kind, self.ndim = split, kind, ndim
        if ndim == 2:
            self.images = real_anatomy_images(split, image_size=image_size)
        else:
            self.images = real_anatomy_volumes(split, image_size=image_size, depth=depth)
        self.num_coils = num_coils
        self.acceleration = float(acceleration)
        self.mask_kind = mask
        self.center_fraction = center_fraction
        self.calibration = calibration
        self.snr_db = float(snr_db)
        self.maps_kind = maps
        self.seed = seed
        image_shape = tuple(self.images.shape[1:])
        rings = 2 if ndim == 3 and num_coils % 2 == 0 and num_coils > 1 else 1
        self._maps = birdcage_maps(image_shape, num_coils, rings=rings)
        # masks are deterministic per (seed, index): generate each once per process
        self._mask_cache: dict[tuple[int, int], Tensor] = {}
        # validate the mask settings once, up front, rather than in a worker
        self._mask(0)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def _generator(self, index: int, stream: int) -> torch.Generator:
        return torch.Generator().manual_seed(
            ((self.seed * 1_000_003 + index) * 8 + stream) % (2**63)
        )

    def _mask(self, index: int) -> Tensor:
        key = (self.seed, index)
        cached = self._mask_cache.get(key)
        if cached is None:
            cached = self._make_mask(index)
            self._mask_cache[key] = cached
        return cached

    def _make_mask(self, index: int) -> Tensor:
        size = self.image_size
        seed = (self.seed * 1_000_003 + index) % (2**32)
        if self.acceleration == 1.0:
            plane = torch.ones(size, size)
        elif self.mask_kind == "poisson":
            plane = poisson_disc_mask(
                (size, size), self.acceleration, calibration=self.calibration, seed=seed
            )
        elif self.mask_kind == "random":
            plane = random_mask_1d(
                (size, size), self.center_fraction, self.acceleration, seed=seed
            ).mask
        else:
            plane = equispaced_mask_1d(
                (size, size), self.center_fraction, self.acceleration, seed=seed
            ).mask
        if self.ndim == 3:
            plane = plane.expand(self.images.shape[1], size, size).contiguous()
        return plane

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples.")
        index = index % len(self)
        magnitude = self.images[index]
        sample: dict[str, Any] = {"index": torch.tensor(index, dtype=torch.int64)}
        if self.kind == "image":
            sample["target"] = magnitude.clone()
            return sample
        phase = smooth_phase(tuple(magnitude.shape), generator=self._generator(index, 0))
        image = torch.polar(magnitude, phase)
        maps = self._maps if self.kind == "multicoil" else None
        kspace, sigma = simulate_kspace(
            image, maps, snr_db=self.snr_db, generator=self._generator(index, 1)
        )
        mask = self._mask(index)
        if self.kind == "multicoil" and self.maps_kind == "espirit":
            maps = espirit_maps(
                kspace, calibration=self.calibration, kernel_size=min(6, self.calibration)
            )
        sample["kspace"] = (kspace * mask).to(torch.complex64)
        if maps is not None:
            sample["maps"] = maps.to(torch.complex64).contiguous()
        sample["mask"] = mask.float()
        sample["target"] = image.to(torch.complex64)
        sample["noise_std"] = torch.tensor(sigma, dtype=torch.float32)
        return sample
