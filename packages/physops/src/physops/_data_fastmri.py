"""fastMRI h5 files as a lazy, DataLoader-ready slice dataset.

A fastMRI file (https://fastmri.org, Zbontar et al. 2018) is HDF5 with

==========================  ==============================================  =====================
key                         content                                         in
==========================  ==============================================  =====================
``kspace``                  complex64 ``(slices, coils, H, W)``             multicoil
                            complex64 ``(slices, H, W)``                    singlecoil
``reconstruction_rss``      float32 ``(slices, h, w)`` (RSS target)         multicoil train/val
``reconstruction_esc``      float32 ``(slices, h, w)`` (emulated s.-coil)   singlecoil train/val
``ismrmrd_header``          ISMRMRD XML (bytes): matrix sizes, limits       all
``mask``                    ``(W,)`` sampled columns                        test/challenge files
attrs                       ``acquisition``, ``max``, ``norm``,             all (``max``/``norm``
                            ``patient_id``, ``acceleration``, ...          only with targets)
==========================  ==============================================  =====================

Raw multi-coil k-space from fastMRI or mridata (converted to this layout) goes through
:class:`FastMRISliceDataset`; the embedded real-anatomy data with simulated coils is
:class:`physops.RealAnatomyDataset`.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["FastMRISliceDataset"]

_NS = {"m": "http://www.ismrm.org/ISMRMRD"}
_KSPACE_NDIM = {"multicoil": 4, "singlecoil": 3}
_DEFAULT_TARGET = {"multicoil": "reconstruction_rss", "singlecoil": "reconstruction_esc"}


def _h5py() -> Any:
    import h5py

    return h5py


def _open(path: Path) -> Any:
    h5py = _h5py()
    try:
        return h5py.File(path, "r")
    except (OSError, ValueError) as err:
        raise ValueError(
            f"{path}: cannot be opened as an HDF5 file ({err}). fastMRI data are .h5 files; the "
            f"file may be truncated or corrupt: download it again."
        ) from err


def _header_int(root: ET.Element, path: Sequence[str], fname: Path) -> int:
    query = "/".join(f"m:{p}" for p in path)
    node = root.find(f"./{query}", _NS)
    if node is None or node.text is None:
        raise ValueError(
            f"{fname}: key 'ismrmrd_header' has no element {'/'.join(path)}: is it a fastMRI "
            f"ISMRMRD header?"
        )
    try:
        return int(float(node.text))
    except ValueError as err:
        raise ValueError(
            f"{fname}: key 'ismrmrd_header' element {'/'.join(path)} is {node.text!r}, not a "
            f"number."
        ) from err


def _parse_header(raw: Any, fname: Path) -> dict[str, Any]:
    """Matrix sizes and the k-space padding fastMRI's own loader derives from the header."""
    if isinstance(raw, np.ndarray):
        raw = raw.item() if raw.shape == () else raw.tobytes()
    if isinstance(raw, str):
        raw = raw.encode()
    try:
        root = ET.fromstring(raw)
    except (ET.ParseError, TypeError) as err:
        raise ValueError(
            f"{fname}: key 'ismrmrd_header' is not valid ISMRMRD XML ({err})."
        ) from err
    enc = [_header_int(root, ["encoding", "encodedSpace", "matrixSize", a], fname) for a in "xyz"]
    rec = [_header_int(root, ["encoding", "reconSpace", "matrixSize", a], fname) for a in "xyz"]
    limits = ["encoding", "encodingLimits", "kspace_encoding_step_1"]
    center = _header_int(root, [*limits, "center"], fname)
    maximum = _header_int(root, [*limits, "maximum"], fname) + 1
    padding_left = enc[1] // 2 - center
    return {
        "encoding_size": tuple(enc),
        "recon_size": tuple(rec),
        "padding_left": padding_left,
        "padding_right": padding_left + maximum,
    }


def _attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


class FastMRISliceDataset(Dataset):
    """Slices of fastMRI h5 files, read lazily (one slice per item) with h5py.

    At construction every file is opened once to check its layout and count its slices (no array
    data is read); each item then opens its file, reads one slice and closes it, so the dataset
    pickles cleanly into ``DataLoader`` worker processes and holds no open handles.

    Parameters
    ----------
    root : path or sequence of paths
        A folder (all ``*.h5`` files in it, sorted) or explicit files.
    challenge : {"multicoil", "singlecoil"}
        The layout to expect.
    transform : callable, optional
        Applied to the sample dict; its return value is the item.
    target_key : str, optional
        The reconstruction to return as ``target``: default ``reconstruction_rss`` (multicoil)
        or ``reconstruction_esc`` (singlecoil). Files without it (fastMRI's test set) give samples
        without ``target``; a mix of files with and without it is an error.

    Sample (a dict, before ``transform``)
    -------------------------------------
    ==================  ==========================  ============================================
    key                 type, shape                 content
    ==================  ==========================  ============================================
    ``kspace``          complex64 ``(C, H, W)``     the slice's k-space (``(H, W)`` singlecoil)
    ``target``          float32 ``(h, w)``          the file's reconstruction (if present)
    ``mask``            float32 ``(H, W)``          the file's ``mask`` columns (if present)
    ``max``             float                       attr ``max`` (if every file has it; the
                                                    PSNR data range fastMRI uses)
    ``fname``           str                         file name
    ``slice_num``       int                         slice index in the file
    ``metadata``        dict                        ``encoding_size``, ``recon_size``,
                                                    ``padding_left``, ``padding_right``,
                                                    ``acquisition``, ``patient_id`` (``""`` if
                                                    absent); every file attr is in
                                                    :meth:`file_attrs`
    ==================  ==========================  ============================================

    All samples of a dataset have the same keys, so the default ``collate_fn`` batches them
    (slices of different sizes need a cropping ``transform`` first, as with fastMRI itself).

    Raises
    ------
    ValueError
        A file that is not HDF5, lacks ``kspace`` or ``ismrmrd_header``, has a ``kspace`` of the
        wrong rank or dtype, or a target whose slice count differs: the message names the file and
        the key.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        challenge: str = "multicoil",
        *,
        transform: Callable[[dict[str, Any]], Any] | None = None,
        target_key: str | None = None,
    ) -> None:
        if challenge not in _KSPACE_NDIM:
            raise ValueError(
                f"FastMRISliceDataset: challenge must be one of {sorted(_KSPACE_NDIM)}, got "
                f"{challenge!r}."
            )
        self.challenge = challenge
        self.transform = transform
        self.target_key = target_key or _DEFAULT_TARGET[challenge]
        self.files = self._list_files(root)
        self._meta: list[dict[str, Any]] = []
        self._index: list[tuple[int, int]] = []
        has_target: list[bool] = []
        has_mask: list[bool] = []
        for file_index, path in enumerate(self.files):
            info = self._scan(path)
            self._meta.append(info)
            has_target.append(info["has_target"])
            has_mask.append(info["has_mask"])
            self._index += [(file_index, s) for s in range(info["num_slices"])]
        for flags, key in ((has_target, self.target_key), (has_mask, "mask")):
            if any(flags) and not all(flags):
                lacking = self.files[flags.index(False)]
                raise ValueError(
                    f"{lacking}: no key {key!r}, which other files of this dataset have: samples "
                    f"would not collate; keep files with and without {key!r} in separate datasets."
                )
        self.has_target = bool(has_target and all(has_target))
        # 'max' only where every file has it, so that all samples share their keys
        self._has_max = all(isinstance(m["attrs"].get("max"), (int, float)) for m in self._meta)

    @staticmethod
    def _list_files(
        root: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    ) -> list[Path]:
        if isinstance(root, (str, os.PathLike)):
            path = Path(root)
            if path.is_dir():
                files = sorted(path.glob("*.h5"))
            elif path.is_file():
                files = [path]
            else:
                raise ValueError(f"FastMRISliceDataset: {path} is neither a folder nor a file.")
        else:
            files = [Path(p) for p in root]
            for path in files:
                if not path.is_file():
                    raise ValueError(f"FastMRISliceDataset: {path} is not a file.")
        if not files:
            raise ValueError(f"FastMRISliceDataset: no .h5 files in {root}.")
        return files

    def _scan(self, path: Path) -> dict[str, Any]:
        with _open(path) as hf:
            for key in ("kspace", "ismrmrd_header"):
                if key not in hf:
                    raise ValueError(
                        f"{path}: missing key {key!r} (found {sorted(hf.keys())}): not a fastMRI "
                        f"file, or an incomplete one."
                    )
            kspace = hf["kspace"]
            want = _KSPACE_NDIM[self.challenge]
            if kspace.ndim != want:
                layout = (
                    "(slices, coils, H, W)" if self.challenge == "multicoil" else "(slices, H, W)"
                )
                raise ValueError(
                    f"{path}: key 'kspace' has shape {kspace.shape} but challenge="
                    f"{self.challenge!r} expects {want} dims {layout}: pass the other challenge."
                )
            if kspace.dtype.kind != "c":
                raise ValueError(
                    f"{path}: key 'kspace' has dtype {kspace.dtype}, expected complex."
                )
            info: dict[str, Any] = _parse_header(hf["ismrmrd_header"][()], path)
            info["num_slices"] = int(kspace.shape[0])
            info["kspace_shape"] = tuple(kspace.shape[1:])
            info["has_target"] = self.target_key in hf
            if info["has_target"] and hf[self.target_key].shape[0] != kspace.shape[0]:
                raise ValueError(
                    f"{path}: key {self.target_key!r} has {hf[self.target_key].shape[0]} slices "
                    f"but 'kspace' has {kspace.shape[0]}."
                )
            info["has_mask"] = "mask" in hf
            if info["has_mask"] and hf["mask"].shape != (kspace.shape[-1],):
                raise ValueError(
                    f"{path}: key 'mask' has shape {hf['mask'].shape}, expected "
                    f"({kspace.shape[-1]},) (one entry per k-space column)."
                )
            info["attrs"] = {
                str(k): _attr(v)
                for k, v in hf.attrs.items()
                if isinstance(_attr(v), (str, int, float))
            }
        return info

    def file_attrs(self, index: int) -> dict[str, Any]:
        """Return the string and number attributes of the file that holds item ``index``."""
        return dict(self._meta[self._index[index][0]]["attrs"])

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, index: int) -> Any:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} slices.")
        file_index, slice_num = self._index[index]
        path = self.files[file_index]
        info = self._meta[file_index]
        with _open(path) as hf:
            key = "kspace"
            try:
                kspace = np.asarray(hf[key][slice_num])
                target = np.asarray(hf[self.target_key][slice_num]) if self.has_target else None
                key = "mask"
                mask = np.asarray(hf[key][()]) if info["has_mask"] else None
            except (OSError, KeyError, ValueError) as err:
                raise ValueError(
                    f"{path}: cannot read key {key!r} slice {slice_num} ({err}): the file may be "
                    f"corrupt."
                ) from err
        sample: dict[str, Any] = {"kspace": torch.from_numpy(kspace.astype(np.complex64))}
        if target is not None:
            sample["target"] = torch.from_numpy(target.astype(np.float32))
        if mask is not None:
            cols = torch.from_numpy(mask.astype(np.float32))
            sample["mask"] = cols.expand(kspace.shape[-2:]).contiguous()
        if self._has_max:
            sample["max"] = float(info["attrs"]["max"])
        sample["fname"] = path.name
        sample["slice_num"] = slice_num
        sample["metadata"] = {
            "encoding_size": info["encoding_size"],
            "recon_size": info["recon_size"],
            "padding_left": info["padding_left"],
            "padding_right": info["padding_right"],
            "acquisition": str(info["attrs"].get("acquisition", "")),
            "patient_id": str(info["attrs"].get("patient_id", "")),
        }
        for name, value in (("kspace", sample["kspace"]), ("target", sample.get("target"))):
            if value is not None and not bool(
                torch.isfinite(torch.view_as_real(value) if value.is_complex() else value).all()
            ):
                raise ValueError(
                    f"{path}: key {name!r} slice {slice_num} contains NaN or infinite values."
                )
        return self.transform(sample) if self.transform is not None else sample
