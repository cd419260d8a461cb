"""FastMRISliceDataset on small fastMRI-format files written by the tests themselves."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import physops

h5py = pytest.importorskip("h5py")

HEADER = """<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">
  <encoding>
    <encodedSpace>
      <matrixSize><x>{ex}</x><y>{ey}</y><z>1</z></matrixSize>
    </encodedSpace>
    <reconSpace>
      <matrixSize><x>{rx}</x><y>{ry}</y><z>1</z></matrixSize>
    </reconSpace>
    <encodingLimits>
      <kspace_encoding_step_1>
        <minimum>0</minimum><maximum>{maximum}</maximum><center>{center}</center>
      </kspace_encoding_step_1>
    </encodingLimits>
  </encoding>
</ismrmrdHeader>
"""


def write_fastmri(
    path: Path,
    *,
    challenge: str = "multicoil",
    slices: int = 3,
    coils: int = 4,
    shape: tuple[int, int] = (24, 20),
    target: bool = True,
    mask: bool = False,
    seed: int = 0,
) -> np.ndarray:
    """A fastMRI-layout file: kspace, target, ISMRMRD header and the usual attrs."""
    rng = np.random.default_rng(seed)
    kshape = (slices, coils, *shape) if challenge == "multicoil" else (slices, *shape)
    kspace = (rng.standard_normal(kshape) + 1j * rng.standard_normal(kshape)).astype(np.complex64)
    with h5py.File(path, "w") as hf:
        hf.create_dataset("kspace", data=kspace)
        header = HEADER.format(
            ex=2 * shape[0],
            ey=shape[1],
            rx=16,
            ry=16,
            maximum=shape[1] - 3,
            center=shape[1] // 2 - 1,
        )
        hf.create_dataset("ismrmrd_header", data=np.bytes_(header.encode()))
        if target:
            key = "reconstruction_rss" if challenge == "multicoil" else "reconstruction_esc"
            hf.create_dataset(key, data=rng.random((slices, 16, 16)).astype(np.float32))
            hf.attrs["max"] = 1.5
            hf.attrs["norm"] = 7.0
        if mask:
            hf.create_dataset("mask", data=(rng.random(shape[1]) < 0.3).astype(np.float32))
            hf.attrs["acceleration"] = 4
        hf.attrs["acquisition"] = "CORPD_FBK"
        hf.attrs["patient_id"] = f"patient{seed}"
    return kspace


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for i in range(2):
        write_fastmri(tmp_path / f"file{i}.h5", slices=2 + i, seed=i)
    return tmp_path


def test_multicoil_slices_are_read_lazily_and_exactly(folder: Path) -> None:
    ds = physops.FastMRISliceDataset(folder, "multicoil")
    assert len(ds) == 5
    assert ds.has_target
    sample = ds[3]  # file1, slice 1
    with h5py.File(folder / "file1.h5", "r") as hf:
        np.testing.assert_array_equal(sample["kspace"].numpy(), hf["kspace"][1])
        np.testing.assert_array_equal(sample["target"].numpy(), hf["reconstruction_rss"][1])
    assert sample["kspace"].dtype == torch.complex64
    assert sample["kspace"].shape == (4, 24, 20)
    assert sample["fname"] == "file1.h5"
    assert sample["slice_num"] == 1
    assert sample["max"] == 1.5
    meta = sample["metadata"]
    assert meta["encoding_size"] == (48, 20, 1)
    assert meta["recon_size"] == (16, 16, 1)
    # fastMRI's padding: enc_y // 2 - center, plus maximum + 1
    assert meta["padding_left"] == 20 // 2 - (20 // 2 - 1)
    assert meta["padding_right"] == meta["padding_left"] + 20 - 3 + 1
    assert meta["acquisition"] == "CORPD_FBK"
    assert ds.file_attrs(3)["norm"] == 7.0


def test_singlecoil_with_transform(tmp_path: Path) -> None:
    kspace = write_fastmri(tmp_path / "single.h5", challenge="singlecoil", slices=2)
    ds = physops.FastMRISliceDataset(
        tmp_path, "singlecoil", transform=lambda s: (s["kspace"].abs().sum(), s["target"].shape)
    )
    total, shape = ds[1]
    assert shape == (16, 16)
    assert torch.isclose(total, torch.tensor(np.abs(kspace[1]).sum()), rtol=1e-5)


def test_test_set_files_without_target_but_with_mask(tmp_path: Path) -> None:
    write_fastmri(tmp_path / "t0.h5", target=False, mask=True)
    ds = physops.FastMRISliceDataset(tmp_path / "t0.h5", "multicoil")
    sample = ds[0]
    assert "target" not in sample
    assert "max" not in sample
    assert sample["mask"].shape == (24, 20)
    assert bool((sample["mask"] == sample["mask"][:1]).all())


def test_dataloader_with_workers(folder: Path) -> None:
    ds = physops.FastMRISliceDataset(folder, "multicoil")
    loader = DataLoader(ds, batch_size=2, num_workers=2)
    batches = list(loader)
    assert sum(b["kspace"].shape[0] for b in batches) == len(ds)
    first = batches[0]
    assert first["kspace"].shape == (2, 4, 24, 20)
    assert first["target"].shape == (2, 16, 16)
    assert first["fname"] == ["file0.h5", "file0.h5"]
    torch.testing.assert_close(first["kspace"][1], ds[1]["kspace"])


def test_explicit_file_list(folder: Path) -> None:
    ds = physops.FastMRISliceDataset([folder / "file1.h5"], "multicoil")
    assert len(ds) == 3


# ------------------------------------------------------------------------------------------------
# bad input: the message names the file and the key
# ------------------------------------------------------------------------------------------------


def test_corrupt_file_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.h5"
    bad.write_bytes(b"this is not hdf5" * 10)
    with pytest.raises(ValueError, match=r"broken\.h5: cannot be opened as an HDF5 file"):
        physops.FastMRISliceDataset(bad, "multicoil")


def _no_kspace(tmp_path: Path) -> Path:
    path = tmp_path / "nokspace.h5"
    with h5py.File(path, "w") as hf:
        hf.create_dataset("ismrmrd_header", data=np.bytes_(b"<x/>"))
    return path


def _single_coil_file(tmp_path: Path) -> Path:
    write_fastmri(tmp_path / "single.h5", challenge="singlecoil")
    return tmp_path


def _bad_header(tmp_path: Path) -> Path:
    path = tmp_path / "hdr.h5"
    with h5py.File(path, "w") as hf:
        hf.create_dataset("kspace", data=np.zeros((1, 2, 4, 4), np.complex64))
        hf.create_dataset("ismrmrd_header", data=np.bytes_(b"<not xml"))
    return path


def _target_slice_count_mismatch(tmp_path: Path) -> Path:
    path = tmp_path / "mismatch.h5"
    write_fastmri(path, slices=3)
    with h5py.File(path, "a") as hf:
        del hf["reconstruction_rss"]
        hf.create_dataset("reconstruction_rss", data=np.zeros((2, 16, 16), np.float32))
    return path


def _files_with_and_without_target(tmp_path: Path) -> Path:
    write_fastmri(tmp_path / "a.h5")
    write_fastmri(tmp_path / "b.h5", target=False)
    return tmp_path


@pytest.mark.parametrize(
    ("make", "match"),
    [
        pytest.param(_no_kspace, r"nokspace\.h5: missing key 'kspace'", id="missing_key"),
        pytest.param(
            _single_coil_file,
            r"single\.h5: key 'kspace' has shape .* expects 4 dims",
            id="unexpected_shape",
        ),
        pytest.param(
            _bad_header, r"hdr\.h5: key 'ismrmrd_header' is not valid ISMRMRD", id="bad_header"
        ),
        pytest.param(
            _target_slice_count_mismatch,
            r"key 'reconstruction_rss' has 2 slices but 'kspace' has 3",
            id="target_slice_count_mismatch",
        ),
        pytest.param(
            _files_with_and_without_target,
            r"b\.h5: no key 'reconstruction_rss'",
            id="mixing_files_with_and_without_target",
        ),
    ],
)
def test_a_bad_file_is_refused_naming_file_and_key(
    tmp_path: Path, make: Callable[[Path], Path], match: str
) -> None:
    path = make(tmp_path)
    with pytest.raises(ValueError, match=match):
        physops.FastMRISliceDataset(path, "multicoil")


def test_non_finite_data_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "nan.h5"
    write_fastmri(path, slices=1)
    with h5py.File(path, "a") as hf:
        hf["kspace"][0, 0, 0, 0] = np.nan
    ds = physops.FastMRISliceDataset(path, "multicoil")
    with pytest.raises(ValueError, match=r"nan\.h5: key 'kspace' slice 0 contains NaN"):
        ds[0]


def test_unknown_challenge() -> None:
    with pytest.raises(ValueError, match=r"challenge must be one of \['multicoil', 'singlecoil'\]"):
        physops.FastMRISliceDataset(".", "knee")


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no \.h5 files in"):
        physops.FastMRISliceDataset(tmp_path, "multicoil")
