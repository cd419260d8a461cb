"""fastMRI data at scale: fastMRI's metrics against scikit-image, the coil-map cache (computed once
per volume, read per slice, recomputed when the file changes), the split rules, and the
geometry of brain-like and knee-like files with and without their own mask, at odd sizes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import physops
import unrolled

h5py = pytest.importorskip("h5py")
skimage_metrics = pytest.importorskip("skimage.metrics")

HEADER = (
    '<?xml version="1.0" encoding="utf-8"?>'
    '<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"><encoding>'
    "<encodedSpace><matrixSize><x>{ex}</x><y>{ey}</y><z>1</z></matrixSize></encodedSpace>"
    "<reconSpace><matrixSize><x>{rx}</x><y>{ry}</y><z>1</z></matrixSize></reconSpace>"
    "<encodingLimits><kspace_encoding_step_1><minimum>0</minimum><maximum>{m}</maximum>"
    "<center>{c}</center></kspace_encoding_step_1></encodingLimits></encoding></ismrmrdHeader>"
)
# (image rows, k-space columns, recon matrix): brain-like files sample the recon width, knee-like
# files more columns than the recon matrix (fastMRI knee: 640 x 368 k-space, 320 x 320 recon)
BRAIN = (21, 21, (21, 21))
KNEE = (20, 27, (20, 20))


def write_volume(
    path: Path,
    geometry: tuple[int, int, tuple[int, int]] = BRAIN,
    *,
    slices: int = 3,
    coils: int = 4,
    mask: np.ndarray | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """A multi-coil fastMRI-format file; returns its fully sampled coil images (no oversampling).

    The anatomy is the embedded brain, with the readout oversampled twice as in fastMRI's raw
    data; ``reconstruction_rss`` is the RSS of the recon-matrix crop, unless ``mask`` (sampled
    columns) makes it a test-style file.
    """
    rows, cols, recon = geometry
    side = max(rows, cols)
    anatomy = physops.real_anatomy_images("train", image_size=side)[seed : seed + slices]
    images = unrolled.fastmri_center_crop(anatomy, (rows, cols)).to(torch.complex64)
    padded = torch.nn.functional.pad(images, (0, 0, rows // 2, rows - rows // 2))
    maps = physops.birdcage_maps((2 * rows, cols), coils)
    kspace = physops.fftc(maps[None] * padded[:, None])
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        header = HEADER.format(
            ex=2 * rows, ey=cols, rx=recon[0], ry=recon[1], m=cols - 1, c=cols // 2
        )
        f.create_dataset("ismrmrd_header", data=np.bytes_(header.encode()))
        if mask is not None:
            f.create_dataset("kspace", data=(kspace * torch.from_numpy(mask)).numpy())
            f.create_dataset("mask", data=mask.astype(np.float32))
        else:
            f.create_dataset("kspace", data=kspace.numpy())
            coil_images = unrolled.fastmri_center_crop(physops.ifftc(kspace), recon)
            f.create_dataset("reconstruction_rss", data=physops.rss(coil_images).numpy())
    return images


def test_mask(cols: int) -> np.ndarray:
    """fastMRI test-file style columns: a centre block of 8 and every third column."""
    cols_kept = np.arange(cols) % 3 == 0
    start = (cols - 8 + 1) // 2
    cols_kept[start : start + 8] = True
    return cols_kept


test_mask.__test__ = False  # a helper, not a test


def _task(root: Path, split: str = "train", **options):
    options.setdefault("center_fraction", 0.2)
    return unrolled.make_dataset("multicoil_mri", split, root=str(root), **options)


# --------------------------------------------------------------------------------------------
# fastMRI's metrics
# --------------------------------------------------------------------------------------------
def _skimage_metrics(target: np.ndarray, recon: np.ndarray) -> dict[str, float]:
    """fastMRI's definitions recomputed with scikit-image and numpy."""
    peak = target.max()
    ssims = [
        skimage_metrics.structural_similarity(t, r, data_range=peak) for t, r in zip(target, recon)
    ]
    return {
        "nmse": float(np.linalg.norm(target - recon) ** 2 / np.linalg.norm(target) ** 2),
        "psnr": float(skimage_metrics.peak_signal_noise_ratio(target, recon, data_range=peak)),
        "ssim": float(np.mean(ssims)),
    }


def _volumes(shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    target = rng.gamma(2.0, 1.0, size=shape)
    target[0] *= 3.0  # slices of different peaks: the volume's maximum is not every slice's
    recon = target + 0.3 * rng.standard_normal(shape)
    return target, recon


@pytest.mark.parametrize("shape", [(3, 19, 23), (1, 7, 7), (4, 30, 11)])
def test_fastmri_metrics_equal_scikit_image_on_odd_volumes(shape):
    target, recon = _volumes(shape, seed=sum(shape))
    got = unrolled.fastmri_metrics(torch.from_numpy(target), torch.from_numpy(recon), crop=False)
    want = _skimage_metrics(target, recon)
    for key in ("nmse", "psnr", "ssim"):
        assert got[key] == pytest.approx(want[key], rel=1e-10, abs=1e-12), key


def test_fastmri_metrics_crop_to_the_target_width_like_fastmri():
    target, recon = _volumes((2, 37, 29), seed=1)
    got = unrolled.fastmri_metrics(target, recon)  # numpy arrays, cropped to 29 x 29
    top = (37 - 29) // 2
    want = _skimage_metrics(target[:, top : top + 29], recon[:, top : top + 29])
    assert got == pytest.approx(want, rel=1e-10)
    # the data range is the volume's maximum: it differs from per-slice peaks
    per_slice = [
        skimage_metrics.peak_signal_noise_ratio(t, r, data_range=t.max())
        for t, r in zip(target, recon)
    ]
    assert abs(got["psnr"] - float(np.mean(per_slice))) > 0.1


def test_fastmri_metrics_of_a_larger_reconstruction_and_of_complex_images():
    target, recon = _volumes((2, 24, 20), seed=2)
    bigger = np.pad(recon, ((0, 0), (3, 4), (5, 6)))
    assert unrolled.fastmri_metrics(target, bigger) == unrolled.fastmri_metrics(target, recon)
    phase = np.exp(1j * np.linspace(0, 3, recon.size)).reshape(recon.shape)
    as_complex = unrolled.fastmri_metrics(target, recon * phase)  # scored as its magnitude
    assert as_complex == pytest.approx(unrolled.fastmri_metrics(target, abs(recon)), rel=1e-12)


def test_fastmri_metrics_of_a_perfect_reconstruction():
    target, _ = _volumes((2, 9, 9), seed=3)
    got = unrolled.fastmri_metrics(target, target.copy())
    assert got["nmse"] == 0.0
    assert got["psnr"] == float("inf")
    assert got["ssim"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("target", "recon", "message"),
    [
        (np.ones((9, 9)), np.ones((9, 9)), r"scores one volume \(slices, H, W\)"),
        (np.ones((2, 9, 9)), np.ones((3, 9, 9)), "must have the same shape"),
        (np.ones((2, 9, 9)), np.ones((2, 9, 8)), "cannot centre-crop images of 9 x 8 to 9 x 9"),
        (np.ones((2, 6, 6)), np.ones((2, 6, 6)), "at least 7 x 7 pixels"),
        (np.zeros((2, 9, 9)), np.zeros((2, 9, 9)), "maximum is 0.0"),
        (np.ones((2, 8, 9)), np.ones((2, 8, 9)), r"needs H >= W; .* pass crop=False"),
        (np.full((1, 9, 9), np.nan), np.ones((1, 9, 9)), "target contains NaN"),
    ],
)
def test_fastmri_metrics_refuse_bad_volumes(target, recon, message):
    with pytest.raises(ValueError, match=message):
        unrolled.fastmri_metrics(target, recon)


def test_fastmri_metrics_refuse_lists():
    with pytest.raises(TypeError, match="torch tensor or numpy array for target, got list"):
        unrolled.fastmri_metrics([[[1.0]]], np.ones((1, 1, 1)))


# --------------------------------------------------------------------------------------------
# splits
# --------------------------------------------------------------------------------------------
def test_a_flat_folder_without_a_rule_is_refused(tmp_path):
    write_volume(tmp_path / "a.h5")
    with pytest.raises(ValueError) as info:
        _task(tmp_path)
    message = str(info.value)
    assert "is a flat folder (1 .h5 files) without a split rule" in message
    assert "train/, val/ and test/ subfolders" in message
    assert "split_by_file=(0.8, 0.1, 0.1)" in message
    assert "\n" not in message


def test_a_single_file_is_a_test_split_only(tmp_path):
    write_volume(tmp_path / "a.h5", slices=1)
    assert len(_task(tmp_path / "a.h5", "test")) == 1
    with pytest.raises(ValueError, match=r"is one file \(one volume\)"):
        _task(tmp_path / "a.h5", "train")


def test_fastmri_layout_and_missing_split_folder(tmp_path):
    write_volume(tmp_path / "multicoil_train" / "a.h5", slices=1)
    assert len(_task(tmp_path)) == 1
    with pytest.raises(ValueError, match=r"has train/ but no val/ \(or multicoil_val/\) folder"):
        _task(tmp_path, "val")
    with pytest.raises(ValueError, match="already holds split folders"):
        _task(tmp_path, split_by_file=(0.5, 0.25, 0.25))


def test_split_by_file_never_lets_a_volume_straddle_splits(tmp_path):
    for i in range(7):
        write_volume(tmp_path / f"v{i}.h5", slices=2, seed=i)
    rule = {"split_by_file": (0.6, 0.2, 0.2), "split_seed": 3}
    splits = {s: _task(tmp_path, s, **rule) for s in ("train", "val", "test")}
    files = {s: {v.path.name for v in d.volumes} for s, d in splits.items()}
    assert [len(files[s]) for s in ("train", "val", "test")] == [4, 2, 1]
    assert set.union(*files.values()) == {f"v{i}.h5" for i in range(7)}
    assert sum(len(f) for f in files.values()) == 7  # disjoint
    for split, data in splits.items():  # every slice of every item is from its split's files
        names = {data.locate(i)[0].path.name for i in range(len(data))}
        assert names == files[split]
        assert len(data) == 2 * len(files[split])
    again = _task(tmp_path, "train", **rule)
    assert [v.path for v in again.volumes] == [v.path for v in splits["train"].volumes]
    other = _task(tmp_path, "train", split_by_file=(0.6, 0.2, 0.2), split_seed=4)
    assert {v.path.name for v in other.volumes} != files["train"]


def test_split_by_file_with_an_empty_split(tmp_path):
    write_volume(tmp_path / "a.h5", slices=1)
    write_volume(tmp_path / "b.h5", slices=1)
    with pytest.raises(ValueError, match="gives the test split no file"):
        _task(tmp_path, "test", split_by_file=(0.8, 0.1, 0.1))


@pytest.mark.parametrize("rule", [(0.5, 0.5), (1.0, -1.0, 1.0), (0.0, 0.0, 0.0)])
def test_bad_split_rules(tmp_path, rule):
    write_volume(tmp_path / "a.h5", slices=1)
    with pytest.raises(ValueError, match="split_by_file"):
        _task(tmp_path, split_by_file=rule)


def test_split_options_need_fastmri_files():
    with pytest.raises(ValueError, match=r"split_by_file=\(0.8, 0.1, 0.1\) applies to fastMRI"):
        unrolled.make_dataset("multicoil_mri", split_by_file=(0.8, 0.1, 0.1))


# --------------------------------------------------------------------------------------------
# the coil-map cache
# --------------------------------------------------------------------------------------------
def _entry(root: Path) -> Path:
    entries = sorted((root / ".coil_maps").glob("*.h5"))
    assert len(entries) == 1, entries
    return entries[0]


def test_maps_are_computed_once_per_volume_and_read_per_slice(tmp_path, monkeypatch):
    write_volume(tmp_path / "train" / "a.h5", slices=3)
    calls = []
    espirit = physops.espirit_maps

    def counted(kspace, **options):
        calls.append(tuple(kspace.shape))
        return espirit(kspace, **options)

    monkeypatch.setattr(physops, "espirit_maps", counted)
    data = _task(tmp_path)
    samples = [data[i] for i in (2, 0, 1, 2)]
    assert calls == [(3, 4, 21, 21)]  # all three slices in one batch, once
    entry = _entry(tmp_path / "train")
    with h5py.File(entry, "r") as f:
        assert f["maps"].chunks == (1, 4, 21, 21)  # one chunk per slice: read lazily
        assert f["kspace"].chunks == (1, 4, 21, 21)
    # another dataset (another epoch, another process) reads the entry: no new estimate
    again = _task(tmp_path)
    assert torch.equal(again[2]["maps"], samples[0]["maps"])
    assert len(calls) == 1


def test_prepare_maps_fills_the_split_before_training(tmp_path):
    write_volume(tmp_path / "train" / "a.h5", slices=1)
    write_volume(tmp_path / "train" / "b.h5", slices=2, seed=3)
    assert _task(tmp_path).prepare_maps() == 2
    assert _task(tmp_path).prepare_maps() == 0
    assert len(list((tmp_path / "train" / ".coil_maps").glob("*.h5"))) == 2


def test_cached_samples_equal_a_direct_computation(tmp_path):
    images = write_volume(tmp_path / "train" / "a.h5", KNEE, slices=2)
    data = _task(tmp_path, calibration=8)
    volume = data.volumes[0]
    assert (volume.crop, volume.output, volume.calibration) == ((20, 20), (20, 20), 8)
    with h5py.File(tmp_path / "train" / "a.h5", "r") as f:
        kspace = torch.from_numpy(f["kspace"][1])
    coil_images = unrolled.fastmri_center_crop(physops.ifftc(kspace), (20, 20))
    maps = physops.espirit_maps(physops.fftc(coil_images), calibration=8, kernel_size=4)
    sample = data[1]
    scale = float(sample["scale"])
    torch.testing.assert_close(sample["maps"], maps, atol=2e-5, rtol=0)
    target = physops.sense1(coil_images, maps)
    torch.testing.assert_close(sample["target"] / scale, target, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(
        sample["kspace"] / scale, physops.fftc(coil_images) * sample["mask"], atol=1e-5, rtol=0
    )
    # the reference explains the anatomy the file was made from
    truth = unrolled.fastmri_center_crop(images[1].abs(), (20, 20))
    assert float((sample["target"].abs() / scale - truth).norm() / truth.norm()) < 0.05


def test_a_changed_file_is_recomputed(tmp_path):
    source = tmp_path / "train" / "a.h5"
    write_volume(source, slices=2, seed=0)
    first = _task(tmp_path)[0]
    entry = _entry(tmp_path / "train")
    written = entry.stat().st_mtime_ns
    assert _task(tmp_path)[0]["target"].equal(first["target"])
    assert entry.stat().st_mtime_ns == written  # up to date: left alone
    write_volume(source, slices=2, seed=5)  # other anatomy, same name and size
    stamp = source.stat()
    os.utime(source, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10**9))
    changed = _task(tmp_path)[0]
    assert entry.stat().st_mtime_ns != written
    assert not torch.allclose(changed["target"], first["target"], atol=1e-3)
    truth = unrolled.fastmri_center_crop(
        physops.real_anatomy_images("train", image_size=21)[5], (21, 21)
    )
    assert float((changed["target"].abs() - truth / truth.max()).norm() / truth.norm()) < 0.1


def test_a_truncated_entry_is_recomputed(tmp_path):
    write_volume(tmp_path / "train" / "a.h5", slices=1)
    first = _task(tmp_path)[0]
    entry = _entry(tmp_path / "train")
    entry.write_bytes(entry.read_bytes()[:100])
    assert torch.equal(_task(tmp_path)[0]["maps"], first["maps"])


def test_other_settings_have_their_own_entry(tmp_path):
    write_volume(tmp_path / "train" / "a.h5", slices=1)
    _task(tmp_path, calibration=6)[0]
    _task(tmp_path, calibration=8)[0]
    names = sorted(p.name for p in (tmp_path / "train" / ".coil_maps").glob("*.h5"))
    assert names == ["a.espirit.21x21.cal6.h5", "a.espirit.21x21.cal8.h5"]


def test_prepare_fills_the_cache_the_task_reads(tmp_path, monkeypatch):
    for split in ("train", "val", "test"):
        write_volume(tmp_path / split / f"{split}.h5", slices=2)
    cache = tmp_path / "maps"
    done = unrolled.prepare_coil_maps(tmp_path, cache, center_fraction=0.2, progress=False)
    assert [(p.source.name, p.computed, p.slices) for p in done] == [
        ("test.h5", True, 2),
        ("train.h5", True, 2),
        ("val.h5", True, 2),
    ]
    again = unrolled.prepare_coil_maps(tmp_path, cache, center_fraction=0.2, progress=False)
    assert not any(p.computed for p in again)

    def refuse(*args, **kwargs):
        raise AssertionError("the task estimated maps although the cache holds them")

    monkeypatch.setattr(physops, "espirit_maps", refuse)
    data = _task(tmp_path, "val", maps_cache=str(cache))
    assert data[1]["maps"].shape == (4, 21, 21)


def test_prepare_refuses_single_coil_files(tmp_path):
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f.create_dataset("kspace", data=np.ones((1, 8, 8), np.complex64))
        header = HEADER.format(ex=8, ey=8, rx=8, ry=8, m=7, c=4)
        f.create_dataset("ismrmrd_header", data=np.bytes_(header.encode()))
    with pytest.raises(ValueError, match="expects 4 dims"):
        unrolled.prepare_coil_maps(tmp_path / "s.h5", progress=False)


def test_an_unwritable_cache_says_how_to_fix_it(tmp_path):
    write_volume(tmp_path / "train" / "a.h5", slices=1)
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    with pytest.raises(ValueError, match=r"cannot write the coil-map cache .*maps_cache=DIR"):
        _task(tmp_path, maps_cache=str(tmp_path / "notes.txt" / "maps"))[0]


def test_workers_read_the_same_samples(tmp_path):
    write_volume(tmp_path / "train" / "a.h5", slices=2)
    write_volume(tmp_path / "train" / "b.h5", slices=2, seed=2)
    data = _task(tmp_path)
    loader = DataLoader(data, batch_size=2, num_workers=2, collate_fn=data.collate)
    batches = list(loader)  # both workers start without a cache
    assert len(sorted((tmp_path / "train" / ".coil_maps").glob("*.h5"))) == 2
    direct = data.batch([0, 1])
    torch.testing.assert_close(batches[0].y, direct.y)
    torch.testing.assert_close(batches[0].target, direct.target)


# --------------------------------------------------------------------------------------------
# geometry: masks, calibration, the recon matrix
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mask", ["random", "equispaced"])
def test_the_calibration_box_is_sampled_by_every_mask(tmp_path, mask):
    """The box ESPIRiT reads lies in the columns every slice's mask samples (physops' masks)."""
    fraction = 0.2
    write_volume(tmp_path / "train" / "a.h5", KNEE, slices=4)
    data = _task(tmp_path, center_fraction=fraction, mask=mask)
    volume = data.volumes[0]
    width = volume.crop[1]
    box = volume.calibration
    start = width // 2 - box // 2
    assert box == round(width * fraction)  # 4 of 20 columns
    for i in range(len(data)):
        columns = data[i]["mask"][0]
        assert bool(columns[start : start + box].all()), (i, columns)


def test_a_test_style_file_keeps_its_mask_and_calibrates_inside_it(tmp_path):
    mask = test_mask(27)
    write_volume(tmp_path / "t.h5", KNEE, slices=2, mask=mask)
    data = _task(tmp_path / "t.h5", "test")
    assert not data.has_target
    assert data.reference_key is None
    volume = data.volumes[0]
    assert volume.crop == (20, 27)  # every measured column kept
    assert volume.output == (20, 20)  # the header's recon matrix
    # columns 9 to 18 are sampled (the block of 8 and two of every third); the centred box
    # [13 - 9 // 2, 13 - 9 // 2 + 9) is the largest inside them
    assert volume.calibration == 9
    assert mask[9:18].all()
    sample = data[0]
    assert torch.equal(sample["mask"][0], torch.from_numpy(mask.astype(np.float32)))
    assert float(sample["kspace"][..., ~torch.from_numpy(mask)].abs().max()) == 0.0
    image = torch.ones(20, 27)
    assert tuple(data.output_image(0, image).shape) == (20, 20)


def test_files_with_their_reference_name_it(tmp_path):
    write_volume(tmp_path / "a.h5", BRAIN, slices=1)
    data = _task(tmp_path / "a.h5", "test")
    assert data.reference_key == "reconstruction_rss"
    assert data.has_target
    assert data.describe(0) == "a.h5, slice 0"
    assert list(data.volume_items(0)) == [0]


@pytest.mark.gpu
def test_prepare_on_the_gpu_equals_the_cpu(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    write_volume(tmp_path / "a.h5", KNEE, slices=3)
    cpu = unrolled.prepare_coil_maps(tmp_path / "a.h5", tmp_path / "cpu", progress=False)
    gpu = unrolled.prepare_coil_maps(
        tmp_path / "a.h5", tmp_path / "gpu", device="cuda", progress=False
    )
    with h5py.File(cpu[0].entry, "r") as a, h5py.File(gpu[0].entry, "r") as b:
        np.testing.assert_allclose(a["kspace"][()], b["kspace"][()], rtol=0, atol=1e-6)
        # eigen-solvers differ in rounding: pixels at ESPIRiT's 0.95 threshold may flip
        for key, tol in (("maps", 1e-2), ("target", 1e-3)):
            x, y = a[key][()], b[key][()]
            assert np.linalg.norm(x - y) <= tol * np.linalg.norm(x), key
