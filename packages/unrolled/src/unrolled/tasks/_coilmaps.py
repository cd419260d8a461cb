r"""The coil-map cache of fastMRI volumes: maps estimated once per volume, read per slice.

ESPIRiT costs seconds per 16-coil slice on a CPU; a multi-coil fastMRI task therefore estimates
a volume's maps once, all its slices batched (:func:`physops.espirit_maps` on any device, or
sigpy's ESPIRiT / JSENSE), and stores them in a *cache entry* beside the data (``.coil_maps/``
next to each file) or in a folder of the user's choice. An entry is one HDF5 file per volume
with, per slice (one chunk each, so a slice is read without the rest of the volume):

==========  ==================================  ================================================
dataset     shape, dtype                        content
==========  ==================================  ================================================
``kspace``  ``(slices, C, h, w)`` complex64     the k-space of the cropped coil images (what the
                                                task undersamples; a file's own mask kept)
``maps``    ``(slices, C, h, w)`` complex64     the coil maps
``target``  ``(slices, h, w)`` complex64        the SENSE-1 image (zero-filled for files with
                                                their own mask)
==========  ==================================  ================================================

So reading a slice costs no FFT and no ESPIRiT. The entry's name says the method, the crop and
the calibration; its attributes hold the source file's name, size and modification time
(``st_mtime_ns``), and an entry whose source changed is recomputed. Entries are written
atomically (a temporary file, then ``os.replace``) under a lock file, so worker processes that
need the same volume compute it once, and an interrupted write leaves no half entry.

The calibration region is the largest centred square inside the k-space columns that every
slice samples fully: a file's own ``mask`` (fastMRI's test files), else the centre block of the
task's 1D masks, ``round(w * center_fraction)`` columns placed as fastMRI places them (at least
a 4 x 4 box on tiny images; ``calibration=N`` sets it).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

import physops

from .._validate import one_of, positive_int
from ..training._run import atomic_path

__all__ = [
    "CACHE_FOLDER",
    "MAP_METHODS",
    "MapSettings",
    "PreparedVolume",
    "Volume",
    "center_crop",
    "ensure_entry",
    "fastmri_files",
    "model_kspace",
    "prepare_coil_maps",
    "read_entry_slice",
    "read_volume",
]

#: The cache folder beside each data folder when no cache folder is given.
CACHE_FOLDER = ".coil_maps"
#: Coil-map estimators: physops' batched torch ESPIRiT, sigpy's ESPIRiT, sigpy's JSENSE.
MAP_METHODS = ("espirit", "espirit-sigpy", "jsense-sigpy")
_FORMAT = 1
_MIN_CALIBRATION = 4
_NS = {"m": "http://www.ismrm.org/ISMRMRD"}
_CPU_BUDGET = 2 * 1024**3  # bytes of ESPIRiT work space per batch of slices on a CPU


@dataclass(frozen=True)
class MapSettings:
    """The task options that decide a volume's cache entry.

    ``image_size`` (``None``: the header's recon matrix), ``calibration`` (``None``: from the
    sampled centre), ``center_fraction`` of the task's 1D masks, and the map ``method``.
    """

    method: str = "espirit"
    image_size: int | None = None
    calibration: int | None = None
    center_fraction: float = 0.08

    def __post_init__(self) -> None:
        one_of("maps_method", self.method, MAP_METHODS)
        positive_int("image_size", self.image_size, optional=True)
        positive_int("calibration", self.calibration, optional=True)


@dataclass(frozen=True)
class Volume:
    """One fastMRI file as a task reads it.

    ``crop`` is the image the model sees (rows, cols), ``output`` the reconstruction matrix of
    the header (fastMRI's submission size, at most the k-space size); files with their own
    ``mask`` (sampled columns) keep every column, so their ``crop`` is ``(output rows, W)``.
    ``calibration`` and ``kernel_size`` are ESPIRiT's (multi-coil only).
    """

    path: Path
    slices: int
    coils: int
    kspace_shape: tuple[int, int]
    crop: tuple[int, int]
    output: tuple[int, int]
    mask: np.ndarray | None
    calibration: int
    kernel_size: int
    method: str

    def entry_name(self) -> str:
        """Return the cache entry's file name: source, method, crop and calibration."""
        h, w = self.crop
        return f"{self.path.stem}.{self.method}.{h}x{w}.cal{self.calibration}.h5"

    def stamp(self) -> dict[str, Any]:
        """Return what identifies the source file and the estimate (the entry's attributes)."""
        info = self.path.stat()
        return {
            "format": _FORMAT,
            "source_name": self.path.name,
            "source_size": int(info.st_size),
            "source_mtime_ns": int(info.st_mtime_ns),
            "method": self.method,
            "crop": list(self.crop),
            "calibration": self.calibration,
            "kernel_size": self.kernel_size,
        }


@dataclass(frozen=True)
class PreparedVolume:
    """One volume of :func:`prepare_coil_maps`: its entry, and whether it was computed now."""

    source: Path
    entry: Path
    slices: int
    computed: bool
    seconds: float


# ------------------------------------------------------------------------------------------------
# geometry
# ------------------------------------------------------------------------------------------------
def _recon_size(raw: Any, path: Path) -> tuple[int, int]:
    # physops.FastMRISliceDataset has validated the header; this reads the two numbers it needs
    if isinstance(raw, np.ndarray):
        raw = raw.item() if raw.shape == () else raw.tobytes()
    root = ET.fromstring(raw.encode() if isinstance(raw, str) else raw)
    size = []
    for axis in "xy":
        node = root.find(f"./m:encoding/m:reconSpace/m:matrixSize/m:{axis}", _NS)
        if node is None or node.text is None:
            raise ValueError(f"{path}: key 'ismrmrd_header' has no reconSpace/matrixSize/{axis}")
        size.append(int(float(node.text)))
    return size[0], size[1]


def _centred_box(sampled: np.ndarray) -> int:
    """Return the largest ``s`` with columns ``[W//2 - s//2, W//2 - s//2 + s)`` all sampled.

    The convention of :func:`physops.espirit_maps`' calibration crop.
    """
    width = len(sampled)
    for s in range(width, 0, -1):
        start = width // 2 - s // 2
        if start >= 0 and start + s <= width and bool(sampled[start : start + s].all()):
            return s
    return 0


def _centre_block(width: int, center_fraction: float) -> np.ndarray:
    # physops.random_mask_1d / equispaced_mask_1d sample round(W f) centre columns fully, placed
    # from (W - n + 1) // 2 as fastMRI places them (test_unrolled_fastmri checks the two agree)
    n = round(width * center_fraction)
    cols = np.zeros(width, dtype=bool)
    start = (width - n + 1) // 2
    cols[start : start + n] = True
    return cols


def read_volume(path: Path, settings: MapSettings, challenge: str = "multicoil") -> Volume:
    """Return the geometry of the fastMRI file ``path`` for ``settings`` (no slice is read)."""
    import h5py

    with h5py.File(path, "r") as f:
        shape = tuple(int(n) for n in f["kspace"].shape)
        recon = _recon_size(f["ismrmrd_header"][()], path)
        mask = np.asarray(f["mask"][()]).astype(bool) if "mask" in f else None
    multicoil = challenge == "multicoil"
    rows, cols = shape[-2:]
    size = (settings.image_size,) * 2 if settings.image_size is not None else recon
    output = (min(size[0], rows), min(size[1], cols))
    crop = output if mask is None else (output[0], cols)
    sampled = mask if mask is not None else _centre_block(crop[1], settings.center_fraction)
    calibration = settings.calibration or max(_centred_box(sampled), _MIN_CALIBRATION)
    calibration = min(calibration, *crop)
    return Volume(
        path=path,
        slices=shape[0],
        coils=shape[1] if multicoil else 1,
        kspace_shape=(rows, cols),
        crop=crop,
        output=output,
        mask=mask,
        calibration=calibration if multicoil else 0,
        kernel_size=max(2, min(6, calibration // 2)) if multicoil else 0,
        method=settings.method,
    )


def center_crop(x: Tensor, shape: tuple[int, int]) -> Tensor:
    """Return the centre ``shape`` of the last two axes (fastMRI's: from ``(n - s) // 2``)."""
    rows, cols = x.shape[-2:]
    h, w = min(shape[0], rows), min(shape[1], cols)
    top, left = (rows - h) // 2, (cols - w) // 2
    return x[..., top : top + h, left : left + w]


def model_kspace(kspace: Tensor, crop: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Return the k-space of the coil images cropped to ``crop``, and those images."""
    images = center_crop(physops.ifftc(kspace), crop)
    return physops.fftc(images), images


# ------------------------------------------------------------------------------------------------
# estimation
# ------------------------------------------------------------------------------------------------
def _estimate(full: Tensor, volume: Volume, device: torch.device) -> Tensor:
    cal, kernel = volume.calibration, volume.kernel_size
    if volume.method == "espirit":
        return physops.espirit_maps(full.to(device), calibration=cal, kernel_size=kernel)
    if volume.method == "espirit-sigpy":
        return physops.espirit_maps_sigpy(full, calibration=cal, kernel_size=kernel).to(device)
    return physops.jsense_maps_sigpy(full, calibration=cal).to(device)


def _batch_slices(volume: Volume, device: torch.device, slices_per_batch: int | None) -> int:
    """Slices estimated together: ``slices_per_batch``, or what fits the work-space budget."""
    if slices_per_batch is not None:
        return positive_int("slices_per_batch", slices_per_batch)
    h, w = volume.crop
    c = volume.coils
    # ESPIRiT's per-pixel C x C matrices and eigenvectors, and a chunk of 32 kernel images
    per_slice = h * w * (3 * c * c + 2 * 32 * c) * 8
    budget = _CPU_BUDGET
    if device.type == "cuda":
        budget = torch.cuda.mem_get_info(device)[0] // 2
    return max(1, min(volume.slices, budget // max(per_slice, 1)))


def _volume_chunks(
    volume: Volume, device: torch.device, batch: int
) -> Iterator[tuple[int, Tensor, Tensor, Tensor]]:
    """Yield ``(first slice, kspace, maps, target)`` of ``batch`` slices at a time (CPU)."""
    import h5py

    with h5py.File(volume.path, "r") as f:
        for start in range(0, volume.slices, batch):
            raw = torch.from_numpy(np.asarray(f["kspace"][start : start + batch]))
            full, images = model_kspace(raw.to(torch.complex64), volume.crop)
            if volume.mask is not None:  # already undersampled: keep exactly what was measured
                full = full * torch.from_numpy(volume.mask.astype(np.float32))
                images = physops.ifftc(full)
            with torch.no_grad():
                maps = _estimate(full, volume, device)
                target = physops.sense1(images.to(device), maps)
            yield start, full, maps.cpu(), target.cpu()


# ------------------------------------------------------------------------------------------------
# the cache
# ------------------------------------------------------------------------------------------------
def _cache_folder(volume: Volume, cache: str | os.PathLike[str] | None) -> Path:
    return Path(cache) if cache is not None else volume.path.parent / CACHE_FOLDER


def _is_valid(entry: Path, volume: Volume) -> bool:
    import h5py

    if not entry.is_file():
        return False
    try:
        with h5py.File(entry, "r") as f:
            attrs = {k: f.attrs[k] for k in f.attrs}
            shape = f["maps"].shape if "maps" in f else None
    except (OSError, KeyError):
        return False
    stamp = volume.stamp()
    stored = {k: attrs.get(k) for k in stamp}
    stored = {k: (list(v) if isinstance(v, np.ndarray) else v) for k, v in stored.items()}
    expected = (volume.slices, volume.coils, *volume.crop)
    return bool(stored == stamp and shape == expected)


@contextlib.contextmanager
def _locked(handle: Any) -> Iterator[None]:
    """Hold an exclusive lock on the open lock file ``handle`` (POSIX; elsewhere no lock)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: workers may compute a volume twice
        yield
        return
    fcntl.flock(handle, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)


def _write_entry(
    entry: Path, volume: Volume, device: torch.device, batch: int, progress: Any
) -> None:
    import h5py

    s, c, (h, w) = volume.slices, volume.coils, volume.crop
    with atomic_path(entry) as tmp, h5py.File(tmp, "w") as f:
        kspace = f.create_dataset("kspace", (s, c, h, w), np.complex64, chunks=(1, c, h, w))
        maps = f.create_dataset("maps", (s, c, h, w), np.complex64, chunks=(1, c, h, w))
        target = f.create_dataset("target", (s, h, w), np.complex64, chunks=(1, h, w))
        for start, k, m, t in _volume_chunks(volume, device, batch):
            stop = start + k.shape[0]
            kspace[start:stop] = k.to(torch.complex64).numpy()
            maps[start:stop] = m.to(torch.complex64).numpy()
            target[start:stop] = t.to(torch.complex64).numpy()
            if progress is not None:
                progress(stop - start)
        f.attrs.update({k: v for k, v in volume.stamp().items()})
        f.attrs["settings"] = json.dumps({**asdict(volume), "path": str(volume.path), "mask": None})


def ensure_entry(
    volume: Volume,
    cache: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device = "cpu",
    slices_per_batch: int | None = None,
    progress: Any = None,
) -> tuple[Path, bool]:
    """Return ``volume``'s cache entry, computing it first when it is missing or stale.

    Returns ``(entry, computed)``. ``progress`` (optional) is called with the number of slices
    done after each batch. Raises ``ValueError`` when the cache folder cannot be written.
    """
    folder = _cache_folder(volume, cache)
    entry = folder / volume.entry_name()
    if _is_valid(entry, volume):
        return entry, False
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(entry.with_name(entry.name + ".lock"), "a")  # noqa: SIM115 - closed below
    except OSError as err:
        raise ValueError(
            f"cannot write the coil-map cache {folder} ({err.strerror}): pass a writable folder, "
            'maps_cache=DIR (memroll: --set task.maps_cache="DIR", memroll prepare --cache DIR)'
        ) from err
    with lock, _locked(lock):
        if _is_valid(entry, volume):  # another process computed it while we waited
            return entry, False
        dev = torch.device(device)
        _write_entry(entry, volume, dev, _batch_slices(volume, dev, slices_per_batch), progress)
    return entry, True


def read_entry_slice(entry: Path, index: int) -> tuple[Tensor, Tensor, Tensor]:
    """Return slice ``index``'s ``(kspace, maps, target)`` from a cache entry (that slice only)."""
    import h5py

    with h5py.File(entry, "r") as f:
        kspace = torch.from_numpy(f["kspace"][index])
        maps = torch.from_numpy(f["maps"][index])
        target = torch.from_numpy(f["target"][index])
    return kspace, maps, target


# ------------------------------------------------------------------------------------------------
# memroll prepare
# ------------------------------------------------------------------------------------------------
def fastmri_files(
    root: str | os.PathLike[str], cache: str | os.PathLike[str] | None = None
) -> list[Path]:
    """Return every ``.h5`` file under ``root`` (or ``root`` itself).

    Hidden files and folders (``.coil_maps/``) and the folder ``cache`` are left out.
    """
    base = Path(root)
    if base.is_file():
        return [base]
    if not base.is_dir():
        raise ValueError(f"{str(root)!r} does not exist: pass a fastMRI .h5 file or folder")
    skip = Path(cache).resolve() if cache is not None else None
    files = sorted(
        p
        for p in base.rglob("*.h5")
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(base).parts)
        and (skip is None or skip not in p.resolve().parents)
    )
    if not files:
        raise ValueError(f"{str(root)!r} holds no .h5 files")
    return files


def prepare_coil_maps(
    root: str | os.PathLike[str],
    cache: str | os.PathLike[str] | None = None,
    *,
    method: str = "espirit",
    device: str | torch.device = "cpu",
    image_size: int | None = None,
    calibration: int | None = None,
    acceleration: float = 4.0,
    center_fraction: float | None = None,
    slices_per_batch: int | None = None,
    progress: bool = True,
) -> list[PreparedVolume]:
    """Estimate the coil maps of every multi-coil fastMRI volume under ``root`` once.

    Parameters
    ----------
    root : path
        A fastMRI ``.h5`` file or a folder (searched recursively: ``train/``, ``val/``, ...).
    cache : path, optional
        The cache folder; default ``.coil_maps/`` beside each file, where the task looks.
    method : {"espirit", "espirit-sigpy", "jsense-sigpy"}
        physops' batched torch ESPIRiT (on ``device``), or sigpy's ESPIRiT or JSENSE (CPU).
    device : str
        Where torch ESPIRiT runs (``"cuda"``: every slice of a batch at once on the GPU).
    image_size, calibration, acceleration, center_fraction
        The task options (``unrolled.tasks.multicoil_mri``) that decide the crop and the
        calibration region: give the values the training uses, so that it finds the entries.
    slices_per_batch : int, optional
        Slices estimated together (default: what fits in 2 GiB on a CPU, in half the free
        memory on a GPU).
    progress : bool
        A tqdm progress bar over the slices.

    Returns
    -------
    list of PreparedVolume
        One per file: its entry, and whether it was computed now (``False``: already up to date).
    """
    from tqdm.auto import tqdm

    fraction = (
        center_fraction if center_fraction is not None else (0.08 if acceleration <= 4 else 0.04)
    )
    settings = MapSettings(method, image_size, calibration, fraction)
    files = fastmri_files(root, cache)
    physops.FastMRISliceDataset(files, "multicoil")  # checks every file's layout first
    volumes = [read_volume(p, settings) for p in files]
    done: list[PreparedVolume] = []
    total = sum(v.slices for v in volumes)
    with tqdm(total=total, desc="coil maps", unit="slice", disable=not progress) as bar:
        for volume in volumes:
            start = time.perf_counter()
            entry, computed = ensure_entry(
                volume, cache, device=device, slices_per_batch=slices_per_batch, progress=bar.update
            )
            if not computed:
                bar.update(volume.slices)
            seconds = time.perf_counter() - start
            done.append(PreparedVolume(volume.path, entry, volume.slices, computed, seconds))
    return done
