"""Coil maps: birdcage normalisation, torch ESPIRiT against sigpy and the truth, RSS, SENSE-1."""

from __future__ import annotations

import pytest
import torch

import physops

sigpy = pytest.importorskip("sigpy")


def _support(image: torch.Tensor, level: float = 0.1) -> torch.Tensor:
    """Pixels of the object, eroded by one pixel so that ESPIRiT's edge crop does not count."""
    inside = (image.abs() > level * image.abs().max()).float()[None, None]
    eroded = -torch.nn.functional.max_pool2d(-inside, 3, stride=1, padding=1)
    return eroded[0, 0].bool()


def _agreement(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pixel |<a, b>| over coils for unit-norm maps (1 = same up to a phase)."""
    return (a.conj() * b).sum(-3).abs()


def _simulated(size: int = 48, coils: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    image = physops.real_anatomy_images("val", image_size=size)[0]
    phase = physops.smooth_phase((size, size), generator=torch.Generator().manual_seed(0))
    x = torch.polar(image, phase)
    maps = physops.birdcage_maps((size, size), coils)
    kspace, _ = physops.simulate_kspace(x, maps, snr_db=40, generator=torch.Generator())
    return x, maps, kspace


def test_birdcage_maps_are_rss_normalised_2d_and_3d() -> None:
    maps = physops.birdcage_maps((24, 20), 8)
    assert maps.shape == (8, 24, 20)
    assert maps.dtype == torch.complex64
    torch.testing.assert_close(physops.rss(maps, dim=0), torch.ones(24, 20))
    maps3 = physops.birdcage_maps((6, 16, 16), 8, rings=2, dtype=torch.complex128)
    assert maps3.shape == (8, 6, 16, 16)
    assert maps3.dtype == torch.complex128
    ones = torch.ones(6, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(physops.rss(maps3, dim=0), ones)
    # each coil sees most near itself: its sensitivity varies strongly across the image
    magnitude = maps[0].abs()
    assert magnitude.max() > 2 * magnitude.min()


def test_sense1_inverts_noiseless_coil_images_and_rss_matches_magnitude() -> None:
    x = torch.randn(2, 16, 16, dtype=torch.complex128)
    maps = physops.birdcage_maps((16, 16), 6, dtype=torch.complex128)
    coil_images = maps * x[:, None]
    torch.testing.assert_close(physops.sense1(coil_images, maps), x)
    torch.testing.assert_close(physops.rss(coil_images), x.abs())


def test_sense1_returns_zero_where_maps_vanish() -> None:
    maps = physops.birdcage_maps((8, 8), 4)
    maps[:, 0, 0] = 0
    out = physops.sense1(torch.ones(4, 8, 8, dtype=torch.complex64), maps)
    assert out[0, 0] == 0
    assert torch.isfinite(torch.view_as_real(out)).all()


def test_torch_espirit_agrees_with_sigpy_on_simulated_and_real_anatomy() -> None:
    x, maps, kspace = _simulated()
    ours = physops.espirit_maps(kspace)
    theirs = physops.espirit_maps_sigpy(kspace, max_iter=30)
    assert theirs.is_contiguous()
    assert theirs.dtype == torch.complex64
    support = _support(x)
    agreement = _agreement(ours, theirs)[support]
    assert agreement.min().item() >= 0.98, agreement.min().item()
    # and with the true (simulated) maps, normalised per pixel
    truth = maps / physops.rss(maps, dim=0)
    assert _agreement(ours, truth)[support].min().item() >= 0.98


def test_torch_espirit_agrees_with_sigpy_on_shepp_logan_phantom() -> None:
    skimage_data = pytest.importorskip("skimage.data")
    from skimage.transform import resize

    phantom = resize(skimage_data.shepp_logan_phantom(), (40, 40), anti_aliasing=True)
    x = torch.as_tensor(phantom, dtype=torch.complex64)
    maps = physops.birdcage_maps((40, 40), 6)
    kspace = physops.fftc(maps * x)
    ours = physops.espirit_maps(kspace, calibration=20, kernel_size=5)
    theirs = physops.espirit_maps_sigpy(kspace, calibration=20, kernel_size=5, max_iter=30)
    assert _agreement(ours, theirs)[_support(x)].min().item() >= 0.98


def test_torch_espirit_is_batched() -> None:
    _, _, k1 = _simulated(32, 4)
    _, _, k2 = _simulated(32, 4)
    batch = torch.stack([k1, 3 * k2])
    out = physops.espirit_maps(batch, calibration=16)
    assert out.shape == batch.shape
    torch.testing.assert_close(out[0], physops.espirit_maps(k1, calibration=16))
    torch.testing.assert_close(out[1], physops.espirit_maps(3 * k2, calibration=16))


@pytest.mark.gpu
def test_torch_espirit_on_gpu() -> None:
    _, _, kspace = _simulated(32, 4)
    out = physops.espirit_maps(kspace.cuda(), calibration=16)
    assert out.is_cuda
    cpu = physops.espirit_maps(kspace, calibration=16)
    support = cpu.abs().sum(0) > 0
    assert _agreement(out.cpu(), cpu)[support].min().item() >= 0.999


def test_jsense_maps_from_sigpy() -> None:
    x, maps, kspace = _simulated(32, 4)
    est = physops.jsense_maps_sigpy(kspace, calibration=16, kernel_size=6)
    assert est.shape == kspace.shape
    assert est.is_contiguous()
    # JSENSE maps are smooth polynomials, not unit-norm: compare after per-pixel normalisation
    est = est / physops.rss(est, dim=0).clamp_min(1e-12)
    truth = maps / physops.rss(maps, dim=0)
    assert _agreement(est, truth)[_support(x)].mean().item() > 0.95


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------


def test_maps_coil_count_must_match_kspace() -> None:
    maps = physops.birdcage_maps((8, 8), 4)
    coil_images = torch.ones(6, 8, 8, dtype=torch.complex64)
    with pytest.raises(ValueError, match=r"maps have 4 coils .* but the coil images have 6"):
        physops.sense1(coil_images, maps)


def test_espirit_rejects_non_finite_kspace() -> None:
    kspace = torch.ones(4, 32, 32, dtype=torch.complex64)
    kspace[0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="kspace contains NaN or infinite values"):
        physops.espirit_maps(kspace)


def test_espirit_rejects_real_kspace() -> None:
    with pytest.raises(TypeError, match="expects complex k-space"):
        physops.espirit_maps(torch.ones(4, 32, 32))


def test_espirit_needs_a_coil_axis() -> None:
    with pytest.raises(ValueError, match=r"shape \(\*batch, coils, H, W\), got shape \(32, 32\)"):
        physops.espirit_maps(torch.ones(32, 32, dtype=torch.complex64))


def test_espirit_calibration_larger_than_image() -> None:
    with pytest.raises(ValueError, match=r"calibration region 40 is larger than the k-space"):
        physops.espirit_maps(torch.ones(4, 32, 32, dtype=torch.complex64), calibration=40)


def test_espirit_kernel_larger_than_calibration() -> None:
    with pytest.raises(ValueError, match="kernel_size 12 exceeds the calibration region 8"):
        physops.espirit_maps(
            torch.ones(4, 32, 32, dtype=torch.complex64), calibration=8, kernel_size=12
        )


def test_birdcage_rejects_bad_shape() -> None:
    with pytest.raises(ValueError, match=r"supports image shapes \(H, W\) or \(D, H, W\)"):
        physops.birdcage_maps((8,), 4)


def test_birdcage_rejects_rings_that_do_not_divide() -> None:
    with pytest.raises(ValueError, match="num_coils >= 1 divisible by rings"):
        physops.birdcage_maps((4, 8, 8), 5, rings=2)
