"""Real-anatomy data: fixed splits, simulated measurements consistent with physops operators."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader

import physops


def test_images_are_real_normalised_and_split_without_overlap() -> None:
    splits = {s: physops.real_anatomy_images(s, image_size=64) for s in ("train", "val", "test")}
    assert {s: t.shape[0] for s, t in splits.items()} == {"train": 28, "val": 8, "test": 8}
    for images in splits.values():
        assert images.dtype == torch.float32
        assert images.shape[1:] == (64, 64)
        assert float(images.min()) >= 0
        assert float(images.max()) <= 1
        assert float(images.amax(dim=(1, 2)).min()) > 0.2  # every slice holds anatomy
    # no slice of one split appears in another
    flat = {s: t.flatten(1) for s, t in splits.items()}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert torch.cdist(flat[a], flat[b]).min() > 1.0


@pytest.mark.parametrize("size", [64, 96, 160])
def test_configurable_image_size(size: int) -> None:
    assert physops.real_anatomy_images("val", image_size=size).shape == (8, size, size)


def test_volumes_for_3d_models() -> None:
    vols = physops.real_anatomy_volumes("train", image_size=32, depth=8)
    assert vols.shape == (2 * (14 - 8 + 1), 8, 32, 32)
    images = physops.real_anatomy_images("train", image_size=32)
    torch.testing.assert_close(vols[0], images[:8])  # slabs are consecutive slices


def test_multicoil_sample_is_consistent_with_sense() -> None:
    ds = physops.RealAnatomyDataset(
        "val", image_size=48, num_coils=8, acceleration=4, calibration=8, snr_db=float("inf")
    )
    sample = ds[2]
    assert sample["kspace"].shape == (8, 48, 48)
    assert sample["kspace"].dtype == torch.complex64
    assert sample["maps"].shape == (8, 48, 48)
    assert sample["maps"].dtype == torch.complex64
    assert sample["mask"].shape == (48, 48)
    assert sample["mask"].dtype == torch.float32
    assert sample["target"].shape == (48, 48)
    assert sample["target"].dtype == torch.complex64
    assert abs(sample["mask"].numel() / sample["mask"].sum() - 4) < 0.05
    # noiseless: the k-space is exactly Sense(maps, mask) applied to the target
    op = physops.Sense(sample["maps"][None], sample["mask"][None])
    torch.testing.assert_close(
        op(sample["target"][None])[0], sample["kspace"], rtol=1e-4, atol=1e-5
    )
    # the anatomy is the real slice, with a smooth phase on top
    magnitude = physops.real_anatomy_images("val", image_size=48)[2]
    torch.testing.assert_close(sample["target"].abs(), magnitude)
    inside = magnitude > 0.05
    assert float(sample["target"].angle()[inside].abs().max()) <= math.pi / 2 + 1e-5


def test_noise_level_matches_snr() -> None:
    ds = physops.RealAnatomyDataset("test", image_size=48, acceleration=1, snr_db=20)
    clean = physops.RealAnatomyDataset("test", image_size=48, acceleration=1, snr_db=float("inf"))
    a, b = ds[0], clean[0]
    noise = a["kspace"] - b["kspace"]
    snr = 20 * torch.log10(b["kspace"].norm() / noise.norm())
    assert abs(float(snr) - 20) < 0.5
    assert abs(float(noise.abs().square().mean().sqrt()) - float(a["noise_std"])) < 0.05 * float(
        a["noise_std"]
    )


def test_samples_are_deterministic_and_collate() -> None:
    ds = physops.RealAnatomyDataset("train", image_size=32, acceleration=4, calibration=6)
    first, again = ds[5], ds[5]
    for key in first:
        torch.testing.assert_close(first[key], again[key])
    other = ds[6]
    assert not torch.equal(first["mask"], other["mask"])  # one mask per sample
    batch = next(iter(DataLoader(ds, batch_size=4, num_workers=0)))
    assert batch["kspace"].shape == (4, 8, 32, 32)
    assert batch["mask"].shape == (4, 32, 32)
    op = physops.Sense(batch["maps"], batch["mask"])
    assert op.adjoint(batch["kspace"]).shape == (4, 32, 32)


def test_singlecoil_with_fastmri_1d_mask() -> None:
    ds = physops.RealAnatomyDataset(
        "val", kind="singlecoil", image_size=64, mask="random", acceleration=4, snr_db=float("inf")
    )
    sample = ds[0]
    assert set(sample) == {"kspace", "mask", "target", "noise_std", "index"}
    op = physops.FourierSampling(sample["mask"])
    torch.testing.assert_close(op(sample["target"]), sample["kspace"], rtol=1e-4, atol=1e-5)
    assert bool((sample["mask"] == sample["mask"][:1]).all())  # column mask


def test_image_kind_for_ct_and_deblurring() -> None:
    ds = physops.RealAnatomyDataset("test", kind="image", image_size=32)
    sample = ds[1]
    assert set(sample) == {"target", "index"}
    assert sample["target"].dtype == torch.float32


def test_3d_multicoil_slabs() -> None:
    ds = physops.RealAnatomyDataset(
        "val",
        ndim=3,
        depth=4,
        image_size=24,
        num_coils=4,
        acceleration=3,
        calibration=6,
        snr_db=float("inf"),
    )
    sample = ds[0]
    assert sample["kspace"].shape == (4, 4, 24, 24)
    assert sample["mask"].shape == (4, 24, 24)
    op = physops.Sense(sample["maps"][None], sample["mask"][None], ndim=3)
    torch.testing.assert_close(
        op(sample["target"][None])[0], sample["kspace"], rtol=1e-4, atol=1e-5
    )


def test_espirit_maps_option() -> None:
    ds = physops.RealAnatomyDataset(
        "val", image_size=32, maps="espirit", calibration=12, acceleration=2
    )
    sample = ds[0]
    support = sample["target"].abs() > 0.3
    truth = ds._maps / physops.rss(ds._maps, dim=0)
    agreement = (sample["maps"].conj() * truth).sum(0).abs()
    assert agreement[support].min() > 0.95


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------


def test_unknown_split() -> None:
    with pytest.raises(ValueError, match=r"split must be one of \['train', 'val', 'test'\]"):
        physops.real_anatomy_images("validation")


def test_image_size_too_small() -> None:
    with pytest.raises(ValueError, match="image_size must be an int >= 16"):
        physops.real_anatomy_images("train", image_size=8)


def test_depth_beyond_split() -> None:
    with pytest.raises(ValueError, match=r"depth must be an int in \[1, 4\] for split 'test'"):
        physops.real_anatomy_volumes("test", depth=8)


def test_dataset_acceleration_below_one() -> None:
    with pytest.raises(ValueError, match="acceleration must be >= 1"):
        physops.RealAnatomyDataset("val", image_size=32, acceleration=0.5)


def test_dataset_calibration_larger_than_image() -> None:
    with pytest.raises(ValueError, match="calibration region 40 is larger than the image 32"):
        physops.RealAnatomyDataset("val", image_size=32, calibration=40)


def test_dataset_unknown_kind() -> None:
    with pytest.raises(
        ValueError, match=r"kind must be one of \['multicoil', 'singlecoil', 'image'\]"
    ):
        physops.RealAnatomyDataset("val", kind="ct")


def test_3d_needs_a_2d_mask() -> None:
    with pytest.raises(ValueError, match="use mask='poisson'"):
        physops.RealAnatomyDataset("val", ndim=3, mask="random")


def test_simulate_kspace_maps_mismatch() -> None:
    with pytest.raises(ValueError, match=r"maps of shape \(4, 8, 8\) do not match the image"):
        physops.simulate_kspace(
            torch.ones(16, 16, dtype=torch.complex64), torch.ones(4, 8, 8, dtype=torch.complex64)
        )
