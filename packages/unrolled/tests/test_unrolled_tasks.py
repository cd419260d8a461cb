"""The data tasks: batch shapes and dtypes, operators that pass check_adjoint, seeded noise,
workers, the registry and its errors, and the user's fastMRI files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import physops
import unrolled

SIZE = 16
OPTIONS = {
    "multicoil_mri": {"num_coils": 4},
    "singlecoil_mri": {},
    "deblur": {},
    "ct": {},
    "mri3d": {"num_coils": 4, "depth": 2},
}
# (y shape, target shape, complex, dims) for a batch of 2, from the module docstring's table
SHAPES = {
    "multicoil_mri": ((2, 4, SIZE, SIZE), (2, SIZE, SIZE), True, 2),
    "singlecoil_mri": ((2, SIZE, SIZE), (2, SIZE, SIZE), True, 2),
    "deblur": ((2, SIZE, SIZE), (2, SIZE, SIZE), False, 2),
    "ct": ((2, 200, SIZE), (2, SIZE, SIZE), False, 2),
    "mri3d": ((2, 4, 2, SIZE, SIZE), (2, 2, SIZE, SIZE), True, 3),
}


def _data(task: str, split: str = "val", **extra):
    return unrolled.make_dataset(task, split, image_size=SIZE, **{**OPTIONS[task], **extra})


@pytest.mark.parametrize("task", sorted(OPTIONS))
def test_batch_shapes_dtypes_and_adjoint(task):
    data = _data(task)
    batch = next(iter(DataLoader(data, batch_size=2, collate_fn=data.collate)))
    y_shape, x_shape, is_complex, dims = SHAPES[task]
    assert tuple(batch.y.shape) == y_shape
    assert tuple(batch.target.shape) == x_shape
    assert batch.y.dtype == (torch.complex64 if is_complex else torch.float32)
    assert batch.target.dtype == batch.y.dtype
    assert data.model_kwargs == {"complex": is_complex, "dims": dims}
    assert physops.check_adjoint(batch.physics, batch.target) <= 1e-4
    # the measurements are the operator applied to the target, plus a little noise
    residual = batch.physics(batch.target) - batch.y
    assert float(residual.norm() / batch.y.norm()) < 0.1


@pytest.mark.parametrize("task", sorted(OPTIONS))
def test_double_precision(task):
    batch = _data(task, dtype="float64").batch([0, 1])
    expected = torch.complex128 if SHAPES[task][2] else torch.float64
    assert batch.y.dtype == batch.target.dtype == expected
    assert physops.check_adjoint(batch.physics, batch.target) <= 1e-10


def test_items_are_identical_every_time_they_are_read():
    first, second = _data("deblur"), _data("deblur")
    assert torch.equal(first[3]["y"], second[3]["y"])
    assert torch.equal(first[3]["y"], first[3]["y"])
    assert not torch.equal(first[3]["y"] - first[3]["target"], first[4]["y"] - first[4]["target"])
    assert not torch.equal(first[3]["y"], _data("deblur", seed=1)[3]["y"])


def test_deblur_follows_luser():
    data = _data("deblur")
    batch = data.batch()
    # x0 = y (LUSER), the 9 x 9 Gaussian of variance 5, noise of standard deviation 0.01
    assert batch.x0 is batch.y
    reference = physops.Blur(physops.gaussian_kernel(9, 5.0))
    noise = batch.y - reference(batch.target)
    assert abs(float(noise.std()) - 0.01) < 0.002
    assert abs(float(noise.mean())) < 0.002


def test_ct_operator_is_normalised_and_noise_is_relative():
    data = _data("ct", noise=0.05)
    batch = data.batch()
    assert batch.physics.op.num_angles == 200  # 200 of 1000 uniformly spaced angles
    lipschitz = physops.power_iteration(batch.physics, batch.target[:1], iterations=50, tol=1e-7)
    assert float(lipschitz) == pytest.approx(1.0, rel=1e-3)
    clean = batch.physics(batch.target)
    noise = batch.y - clean
    rms = clean.square().mean(dim=(1, 2)).sqrt()
    ratio = noise.square().mean(dim=(1, 2)).sqrt() / rms
    assert torch.allclose(ratio, torch.full_like(ratio, 0.05), rtol=0.1)
    assert batch.x0 is None  # the models start from A^T y (LUSER)


def test_ct_fbp_initialisation_is_closer_than_the_adjoint():
    batch = _data("ct", init="fbp").batch([0, 1])
    assert batch.x0 is not None
    assert batch.x0.shape == batch.target.shape

    def err(x):
        return float((x - batch.target).norm() / batch.target.norm())

    assert err(batch.x0) < 0.5 * err(batch.physics.adjoint(batch.y))


def test_mri3d_mask_is_shared_across_the_slab():
    sample = _data("mri3d")[0]
    assert sample["mask"].shape == (2, SIZE, SIZE)
    assert torch.equal(sample["mask"][0], sample["mask"][1])


def test_splits_are_the_fixed_real_anatomy_splits():
    sizes = {
        s: len(unrolled.make_dataset("singlecoil_mri", s, image_size=SIZE))
        for s in ("train", "val", "test")
    }
    assert sizes == {"train": 28, "val": 8, "test": 8}


def test_collate_works_in_worker_processes():
    data = _data("deblur")
    loader = DataLoader(data, batch_size=4, collate_fn=data.collate, num_workers=2)
    batches = list(loader)
    assert len(batches) == 2
    direct = data.batch([4, 5, 6, 7])
    assert torch.equal(batches[1].y, direct.y)
    assert torch.equal(batches[1].target, direct.target)


def test_unknown_task_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown task 'mri'; valid tasks: ct, deblur, mri3d"):
        unrolled.make_dataset("mri")


def test_unknown_option_lists_the_valid_options():
    with pytest.raises(ValueError, match="unknown option 'coils' for task 'multicoil_mri'; valid"):
        unrolled.make_dataset("multicoil_mri", coils=4)


def test_bad_split():
    with pytest.raises(ValueError, match="split must be one of 'train', 'val', 'test', got 'dev'"):
        unrolled.make_dataset("deblur", "dev")


def test_bad_dtype():
    with pytest.raises(ValueError, match="dtype must be one of 'float32', 'float64'"):
        unrolled.make_dataset("deblur", dtype="float16")


def test_bad_ct_init():
    with pytest.raises(ValueError, match="init must be 'adjoint'"):
        unrolled.make_dataset("ct", init="zeros")


def test_bad_deblur_noise():
    with pytest.raises(ValueError, match=r"noise_std must be a finite number >= 0, got -0.1"):
        unrolled.make_dataset("deblur", noise_std=-0.1)


def test_defaults_come_from_the_signature():
    defaults = unrolled.get_task("ct").defaults()
    assert defaults["num_angles"] == 1000
    assert defaults["keep_angles"] == 200
    assert unrolled.get_task("deblur").defaults()["variance"] == 5.0


class _Constant(unrolled.TaskDataset):
    complex = False

    def __len__(self):
        return 3

    def __getitem__(self, index):
        return {"target": torch.full((SIZE, SIZE), float(self._index(index)))}

    def collate(self, samples):
        x = torch.stack([s["target"] for s in samples])
        return unrolled.Batch(y=x, physics=physops.Identity(), target=x, x0=x)


def _constant(split="train", *, scale=1.0):
    return _Constant("constant", split, {"scale": scale})


def test_register_a_task(monkeypatch):
    monkeypatch.setitem(unrolled.TASKS, "constant", unrolled.TaskSpec("constant", _constant, ""))
    data = unrolled.make_dataset("constant", "test", scale=2.0)
    assert len(data) == 3
    assert data.options == {"scale": 2.0}
    assert data.batch([1, 2]).y.shape == (2, SIZE, SIZE)
    with pytest.raises(IndexError, match="index 3 out of range for 3 samples"):
        data[3]


def test_register_refuses_a_taken_name():
    with pytest.raises(ValueError, match="task 'ct' is already registered; pass replace=True"):
        unrolled.register_task("ct", _constant)


# --------------------------------------------------------------------------------------------
# the user's fastMRI files
# --------------------------------------------------------------------------------------------
HEADER = """<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"><encoding>
<encodedSpace><matrixSize><x>{ex}</x><y>{ey}</y><z>1</z></matrixSize></encodedSpace>
<reconSpace><matrixSize><x>{r}</x><y>{r}</y><z>1</z></matrixSize></reconSpace>
<encodingLimits><kspace_encoding_step_1><minimum>0</minimum><maximum>{m}</maximum>
<center>{c}</center></kspace_encoding_step_1></encodingLimits>
</encoding></ismrmrdHeader>"""


def _write_fastmri(path: Path, challenge: str, mask: bool = False, seed: int = 0) -> None:
    """A fastMRI-layout file: k-space of a real slice (readout oversampled twice) with
    birdcage coils, the ISMRMRD header and, like fastMRI's test files, optionally a mask."""
    h5py = pytest.importorskip("h5py")
    images = physops.real_anatomy_images("train", image_size=SIZE)[seed : seed + 2]
    padded = torch.nn.functional.pad(images, (0, 0, SIZE // 2, SIZE // 2)).to(torch.complex64)
    if challenge == "multicoil":
        maps = physops.birdcage_maps((2 * SIZE, SIZE), 4)
        kspace = physops.fftc(maps[None] * padded[:, None])
    else:
        kspace = physops.fftc(padded)
    with h5py.File(path, "w") as hf:
        hf.create_dataset("kspace", data=kspace.numpy())
        header = HEADER.format(ex=2 * SIZE, ey=SIZE, r=SIZE, m=SIZE - 1, c=SIZE // 2)
        hf.create_dataset("ismrmrd_header", data=np.bytes_(header.encode()))
        if mask:
            hf.create_dataset("mask", data=(np.arange(SIZE) % 2 == 0).astype(np.float32))
        else:
            key = "reconstruction_rss" if challenge == "multicoil" else "reconstruction_esc"
            hf.create_dataset(key, data=images.numpy())


@pytest.mark.parametrize("task", ["multicoil_mri", "singlecoil_mri"])
def test_fastmri_files(tmp_path, task):
    challenge = task.split("_")[0]
    (tmp_path / "train").mkdir()
    _write_fastmri(tmp_path / "train" / "a.h5", challenge)
    data = unrolled.make_dataset(task, "train", root=str(tmp_path), calibration=6)
    assert len(data) == 2
    assert data.has_target
    batch = data.batch()
    coils = (4,) if challenge == "multicoil" else ()
    assert tuple(batch.y.shape) == (2, *coils, SIZE, SIZE)  # cropped to the recon size
    assert tuple(batch.target.shape) == (2, SIZE, SIZE)
    assert float(batch.target.abs().amax()) == pytest.approx(1.0)  # scaled per sample
    assert physops.check_adjoint(batch.physics, batch.target) <= 1e-4
    # the target reproduces the sampled k-space (ESPIRiT maps explain the coils)
    residual = batch.physics(batch.target) - batch.y
    assert float(residual.norm() / batch.y.norm()) < 0.1
    # the cropped magnitude is the anatomy the file was made from, up to the per-sample scale
    truth = physops.real_anatomy_images("train", image_size=SIZE)[:2]
    magnitude = batch.target.abs()
    truth = truth / truth.amax(dim=(1, 2), keepdim=True)
    assert float((magnitude - truth).norm() / truth.norm()) < 0.05


def test_fastmri_test_files_without_target(tmp_path):
    _write_fastmri(tmp_path / "t.h5", "multicoil", mask=True)
    data = unrolled.make_dataset("multicoil_mri", "test", root=str(tmp_path / "t.h5"))
    assert not data.has_target
    sample = data[0]
    assert torch.equal(sample["mask"][0], (torch.arange(SIZE) % 2 == 0).float())


def test_fastmri_missing_root():
    with pytest.raises(ValueError, match=r"does not exist: pass a fastMRI .h5 file or folder"):
        unrolled.make_dataset("multicoil_mri", root="/no/such/folder")
