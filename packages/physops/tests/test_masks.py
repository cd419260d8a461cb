"""Sampling masks: acceleration, calibration, determinism, termination, fastMRI semantics, sigpy."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
import torch

import physops


def _accel(mask: torch.Tensor) -> float:
    return mask.numel() / float(mask.sum())


def _ring_density(mask: np.ndarray, edges: np.ndarray) -> np.ndarray:
    rows, cols = mask.shape
    y = (np.arange(rows) - rows // 2) / (rows / 2)
    x = (np.arange(cols) - cols // 2) / (cols / 2)
    rho = np.sqrt(y[:, None] ** 2 + x[None, :] ** 2)
    return np.array([mask[(rho >= a) & (rho < b)].mean() for a, b in itertools.pairwise(edges)])


# ------------------------------------------------------------------------------------------------
# Poisson disc
# ------------------------------------------------------------------------------------------------

SWEEP = [
    (shape, accel)
    for shape in [(32, 32), (48, 40), (80, 64), (128, 96)]
    for accel in [1.0, 1.5, 2.0, 4.0, 8.0, 12.0, 16.0]
]


@pytest.mark.parametrize(("shape", "accel"), SWEEP)
def test_poisson_acceleration_calibration_and_bounded_time(
    shape: tuple[int, int], accel: float
) -> None:
    calib = max(2, min(shape) // 8)
    crop = accel >= 1.5  # the ellipse holds pi/4 of the grid: R < 1.27 needs crop_corners=False
    start = time.perf_counter()
    mask = physops.poisson_disc_mask(
        shape, accel, calibration=calib, crop_corners=crop, seed=int(accel * 10)
    )
    elapsed = time.perf_counter() - start
    assert mask.shape == shape
    assert mask.dtype == torch.float32
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    # exact up to one sample, far inside the 5% the issue asks for
    assert abs(float(mask.sum()) - round(mask.numel() / accel)) <= 1
    assert abs(_accel(mask) - accel) / accel < 0.05
    r0, c0 = (shape[0] - calib + 1) // 2, (shape[1] - calib + 1) // 2
    assert bool(mask[r0 : r0 + calib, c0 : c0 + calib].all())
    # at most 15 passes over the grid: generous wall-clock bound for a shared 2-core machine
    assert elapsed < 10.0


def test_poisson_is_deterministic_per_seed_and_batched() -> None:
    a = physops.poisson_disc_mask((64, 48), 6, calibration=8, seed=3)
    b = physops.poisson_disc_mask((64, 48), 6, calibration=8, seed=3)
    c = physops.poisson_disc_mask((64, 48), 6, calibration=8, seed=4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    batch3 = physops.poisson_disc_mask((64, 48), 6, calibration=8, seed=3, batch_size=3)
    batch5 = physops.poisson_disc_mask((64, 48), 6, calibration=8, seed=3, batch_size=5)
    assert batch3.shape == (3, 64, 48)
    assert torch.equal(batch3, batch5[:3])  # mask i does not depend on the batch size
    assert all(not torch.equal(batch5[i], batch5[j]) for i in range(5) for j in range(i))
    for mask in batch5:
        assert abs(_accel(mask) - 6) / 6 < 0.05


def test_poisson_follows_torch_seed_when_unseeded() -> None:
    torch.manual_seed(7)
    a = physops.poisson_disc_mask((32, 32), 4, calibration=4)
    torch.manual_seed(7)
    b = physops.poisson_disc_mask((32, 32), 4, calibration=4)
    assert torch.equal(a, b)


def test_poisson_density_falls_off_from_the_centre() -> None:
    mask = physops.poisson_disc_mask((128, 128), 8, calibration=8, seed=0).numpy()
    density = _ring_density(mask, np.linspace(0.1, 1.0, 4))
    assert np.all(np.diff(density) < 0), density


def test_poisson_agrees_with_sigpy_density_and_hits_acceleration_more_tightly() -> None:
    sigpy_mri = pytest.importorskip("sigpy.mri")
    shape, calib = (128, 128), 12
    edges = np.linspace(0.0, 1.0, 6)
    for accel in (4, 8):
        ours = physops.poisson_disc_mask(shape, accel, calibration=calib, seed=1).numpy()
        theirs = np.abs(sigpy_mri.poisson(shape, accel, calib=(calib, calib), seed=1)).real
        # same variable-density design: ring densities close (measured max gap 0.1 at R = 4)
        gap = np.abs(_ring_density(ours, edges) - _ring_density(theirs, edges))
        assert gap.max() < 0.15, gap
        err_ours = abs(ours.size / ours.sum() - accel) / accel
        err_theirs = abs(theirs.size / theirs.sum() - accel) / accel
        assert err_ours <= err_theirs + 1e-3
        assert err_ours < 0.005


# ------------------------------------------------------------------------------------------------
# fastMRI 1D masks
# ------------------------------------------------------------------------------------------------


def test_random_1d_follows_fastmri_semantics() -> None:
    cols = 368
    mask, num_low = physops.random_mask_1d((640, cols), 0.08, 4, seed=0)
    assert num_low == round(cols * 0.08)
    assert mask.shape == (640, cols)
    assert bool((mask == mask[:1]).all())  # columns: every row identical
    pad = (cols - num_low + 1) // 2
    assert bool(mask[0, pad : pad + num_low].all())
    batch = physops.random_mask_1d((8, cols), 0.08, 4, seed=0, batch_size=200).mask[:, 0]
    # the acceleration is R in expectation (p = (W/R - n_low) / (W - n_low))
    assert abs(cols / batch.sum(-1).mean().item() - 4) / 4 < 0.02


def test_random_1d_draws_a_pair_per_mask() -> None:
    result = physops.random_mask_1d((4, 200), [0.08, 0.04], [4, 8], seed=2, batch_size=64)
    lows = result.num_low_frequencies
    assert isinstance(lows, torch.Tensor)
    assert lows.shape == (64,)
    assert set(lows.tolist()) == {16, 8}


@pytest.mark.parametrize(("cols", "accel", "fraction"), [(368, 4, 0.08), (320, 8, 0.04)])
def test_equispaced_1d(cols: int, accel: int, fraction: float) -> None:
    matched, num_low = physops.equispaced_mask_1d((4, cols), fraction, accel, seed=5)
    assert abs(_accel(matched) - accel) / accel < 0.05
    plain, _ = physops.equispaced_mask_1d(
        (4, cols), fraction, accel, match_acceleration=False, seed=5
    )
    row = plain[0].numpy().astype(bool)
    pad = (cols - num_low + 1) // 2
    outside = np.flatnonzero(np.delete(row, np.arange(pad, pad + num_low)))
    picks = np.flatnonzero(row)
    picks = picks[(picks < pad) | (picks >= pad + num_low)]
    assert len(outside) > 0
    assert np.all(np.diff(picks) % accel == 0)


def test_1d_deterministic_per_seed() -> None:
    a = physops.random_mask_1d((4, 100), 0.1, 4, seed=9).mask
    b = physops.random_mask_1d((4, 100), 0.1, 4, seed=9).mask
    assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------
# k-t masks
# ------------------------------------------------------------------------------------------------


def test_kt_mask_differs_per_frame_and_keeps_the_centre() -> None:
    frames, rows, cols = 20, 16, 96
    mask = physops.kt_mask((frames, rows, cols), 10, center_lines=6, seed=0)
    assert mask.shape == (frames, rows, cols)
    assert abs(_accel(mask) - 10) / 10 < 0.05
    assert bool((mask == mask[:, :1]).all())  # readout fully sampled
    lines = mask[:, 0]
    start = (cols - 6 + 1) // 2
    assert bool(lines[:, start : start + 6].all())
    distinct = {tuple(lines[t].tolist()) for t in range(frames)}
    assert len(distinct) == frames
    # interleaving: near the centre almost every phase-encode line is sampled in some frame
    assert lines[:, cols // 2 - 12 : cols // 2 + 12].any(0).float().mean() >= 0.9


def test_kt_mask_batched_and_seeded() -> None:
    a = physops.kt_mask((8, 4, 64), 6, seed=1, batch_size=2)
    b = physops.kt_mask((8, 4, 64), 6, seed=1, batch_size=2)
    assert a.shape == (2, 8, 4, 64)
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1])


# ------------------------------------------------------------------------------------------------
# bad input: one test per message
# ------------------------------------------------------------------------------------------------


def test_unsupported_mask_shape() -> None:
    with pytest.raises(
        ValueError, match=r"supports k-space shapes of 2 dims, got shape \(4, 8, 8\)"
    ):
        physops.poisson_disc_mask((4, 8, 8), 4)


def test_kt_mask_needs_three_dims() -> None:
    with pytest.raises(ValueError, match=r"kt_mask supports k-space shapes of 3 dims"):
        physops.kt_mask((32, 32), 4)


def test_shape_must_be_a_tuple() -> None:
    with pytest.raises(TypeError, match="expects shape as a tuple of ints, got int"):
        physops.random_mask_1d(64, 0.08, 4)  # type: ignore[arg-type]


def test_acceleration_below_one() -> None:
    with pytest.raises(ValueError, match=r"acceleration >= 1 .*got 0.5"):
        physops.poisson_disc_mask((32, 32), 0.5)


def test_acceleration_below_one_1d() -> None:
    with pytest.raises(ValueError, match=r"random_mask_1d expects an acceleration >= 1"):
        physops.random_mask_1d((32, 32), 0.0, 0.9)


def test_calibration_larger_than_image() -> None:
    with pytest.raises(
        ValueError, match=r"calibration region \(40, 40\) is larger than the k-space"
    ):
        physops.poisson_disc_mask((32, 32), 2, calibration=40)


def test_calibration_exceeds_sample_budget() -> None:
    with pytest.raises(ValueError, match=r"holds 576 samples, more than the 512"):
        physops.poisson_disc_mask((64, 64), 8, calibration=24)


def test_kt_center_lines_larger_than_image() -> None:
    with pytest.raises(ValueError, match=r"calibration of 80 center lines is larger than the 64"):
        physops.kt_mask((8, 16, 64), 4, center_lines=80)


def test_center_fraction_above_budget() -> None:
    with pytest.raises(ValueError, match=r"center_fraction 0.5 samples more than the 1/4"):
        physops.random_mask_1d((16, 64), 0.5, 4)


def test_mismatched_fraction_lists() -> None:
    with pytest.raises(ValueError, match="as many center_fractions as accelerations"):
        physops.equispaced_mask_1d((16, 64), [0.08, 0.04], [4])


def test_crop_corners_cannot_reach_low_acceleration() -> None:
    with pytest.raises(ValueError, match="pass crop_corners=False"):
        physops.poisson_disc_mask((32, 32), 1.1, calibration=4)


def test_bad_batch_size() -> None:
    with pytest.raises(ValueError, match="batch_size None or a positive int, got 0"):
        physops.poisson_disc_mask((32, 32), 4, calibration=4, batch_size=0)
