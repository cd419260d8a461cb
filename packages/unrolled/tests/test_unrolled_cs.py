"""The compressed-sensing baselines: the same numbers as sigpy run directly, better than
zero-filling on real anatomy, the operator's own data term (non-binary masks), 2D+time with
spatial and temporal TV, and every error message."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import physops
import unrolled

try:
    import sigpy
    import sigpy.mri.app
except ImportError:  # the errors without sigpy are still tested
    sigpy = None

needs_sigpy = pytest.mark.skipif(
    sigpy is None, reason="the CS baseline needs sigpy (the memroll-unrolled[cs] extra)"
)


def _seed_numpy():
    # sigpy's step-size power iteration starts from NumPy's legacy global generator, which
    # cs_reconstruct seeds with 0 for every solve
    np.random.seed(0)  # noqa: NPY002


def _sense(batch=2, coils=3, size=16, dtype=torch.complex128, per_sample_mask=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    maps = torch.randn(batch, coils, size, size, dtype=dtype, generator=g)
    maps = maps / maps.abs().square().sum(1, keepdim=True).sqrt()
    shape = (batch, size, size) if per_sample_mask else (size, size)
    mask = (torch.rand(shape, generator=g) < 0.4).to(maps.real.dtype)
    x = torch.randn(batch, size, size, dtype=dtype, generator=g)
    op = physops.Sense(maps, mask)
    return op, maps, mask, x, op(x)


def _sigpy_l1(y, maps, mask, lamda, iterations):
    _seed_numpy()
    app = sigpy.mri.app.L1WaveletRecon(
        y, maps, lamda, weights=mask, max_iter=iterations, show_pbar=False
    )
    return np.asarray(app.run())


@needs_sigpy
@pytest.mark.parametrize("per_sample_mask", [False, True])
def test_multicoil_equals_sigpy_run_directly(per_sample_mask):
    op, maps, mask, _, y = _sense(per_sample_mask=per_sample_mask)
    out = unrolled.cs_reconstruct(y, op, 0.01, iterations=30)
    assert out.shape == (2, 16, 16)
    assert out.dtype == torch.complex128
    for b in range(2):
        m = mask[b] if per_sample_mask else mask
        direct = _sigpy_l1(y[b].numpy(), maps[b].numpy(), m.numpy(), 0.01, 30)
        np.testing.assert_allclose(out[b].numpy(), direct, rtol=1e-10, atol=1e-12)


@needs_sigpy
def test_shared_maps_broadcast_over_the_batch():
    op, maps, mask, _, _ = _sense(batch=1)
    x = torch.randn(3, 16, 16, dtype=torch.complex128)
    y = op(x)
    out = unrolled.cs_reconstruct(y, op, 0.01, iterations=10)
    for b in range(3):
        direct = _sigpy_l1(y[b].numpy(), maps[0].numpy(), mask.numpy(), 0.01, 10)
        np.testing.assert_allclose(out[b].numpy(), direct, rtol=1e-10, atol=1e-12)


@needs_sigpy
def test_single_coil_equals_sigpy_run_directly_in_single_precision():
    g = torch.Generator().manual_seed(1)
    mask = (torch.rand(1, 16, generator=g) < 0.5).float()  # 1D Cartesian columns
    op = physops.FourierSampling(mask)
    x = torch.randn(2, 16, 16, dtype=torch.complex64, generator=g)
    y = op(x)
    out = unrolled.cs_reconstruct(y, op, 0.005, iterations=20, wavelet="haar")
    assert out.dtype == torch.complex64
    ones = np.ones((1, 16, 16), dtype=np.complex64)
    full = np.broadcast_to(mask.numpy(), (16, 16))
    for b in range(2):
        _seed_numpy()
        app = sigpy.mri.app.L1WaveletRecon(
            y[b][None].numpy(),
            ones,
            0.005,
            weights=full,
            wave_name="haar",
            max_iter=20,
            show_pbar=False,
        )
        np.testing.assert_allclose(out[b].numpy(), np.asarray(app.run()), rtol=1e-5, atol=1e-6)


def _objective(x, op, y, lamda):
    """The operator's own objective 1/2 ||A x - y||^2 + lamda ||W x||_1 (sigpy's db4 wavelet)."""
    wavelet = sigpy.linop.Wavelet(tuple(x.shape[1:]))
    data = 0.5 * float((op(x) - y).abs().square().sum())
    return data + lamda * sum(float(np.abs(wavelet(xi.numpy())).sum()) for xi in x)


@needs_sigpy
def test_non_binary_masks_give_the_operators_own_data_term():
    """sigpy scales y by sqrt(weights) too; cs_reconstruct compensates, so it minimises
    1/2 ||M F x - y||^2 + lamda ||W x||_1 for the physops mask M itself."""
    g = torch.Generator().manual_seed(2)
    mask = torch.rand(16, 16, generator=g) * (torch.rand(16, 16, generator=g) < 0.6)
    op = physops.FourierSampling(mask.double())
    x = torch.randn(1, 16, 16, dtype=torch.complex128, generator=g)
    y = op(x)
    ours = unrolled.cs_reconstruct(y, op, 0.01, iterations=300)
    # the naive call: the mask as sigpy's weights and y as it is
    naive = _sigpy_l1(
        y[0][None].numpy(), np.ones((1, 16, 16), complex), mask.double().numpy(), 0.01, 300
    )
    naive_t = torch.from_numpy(naive)[None]
    assert _objective(ours, op, y, 0.01) < _objective(naive_t, op, y, 0.01)
    # and nearby points are no better (a minimum up to the solver's accuracy)
    for _ in range(3):
        nudged = ours + 1e-3 * torch.randn(ours.shape, dtype=ours.dtype, generator=g)
        assert _objective(ours, op, y, 0.01) <= _objective(nudged, op, y, 0.01) + 1e-9


@needs_sigpy
def test_cs_beats_zero_filling_on_real_anatomy():
    data = unrolled.make_dataset("multicoil_mri", "val", image_size=32, num_coils=4)
    batch = data.batch([0, 1])
    zero_filled = batch.physics.adjoint(batch.y)
    cs = unrolled.cs_reconstruct(batch.y, batch.physics, 1e-3)
    assert cs.dtype == torch.complex64
    gain = unrolled.psnr(cs, batch.target) - unrolled.psnr(zero_filled, batch.target)
    assert bool((gain > 5.0).all()), gain


@needs_sigpy
def test_result_on_the_input_device(device):
    op, _, _, _, y = _sense()
    out = unrolled.cs_reconstruct(y.to(device), op.to(device), 0.01, iterations=5)
    assert out.device.type == device.type
    assert out.dtype == y.dtype


@needs_sigpy
def test_compressed_sensing_module_evaluates_like_a_model():
    data = unrolled.make_dataset("singlecoil_mri", "val", image_size=32)
    baseline = unrolled.CompressedSensing(1e-3, iterations=50)
    table = unrolled.evaluate(baseline, data, batch_size=2, max_samples=2)
    batch = data.batch([0, 1])
    direct = unrolled.cs_reconstruct(batch.y, batch.physics, 1e-3, 50)
    assert table.column("psnr") == pytest.approx(unrolled.psnr(direct, batch.target).tolist())
    assert "lamda=0.001, iterations=50" in repr(baseline)


# ------------------------------------------------------------------------------------------------
# 2D+time
# ------------------------------------------------------------------------------------------------
def _cine(batch=2, frames=4, size=16, coils=3):
    volumes = physops.real_anatomy_volumes("val", image_size=size, depth=frames)[:batch]
    phase = physops.smooth_phase((size, size), generator=torch.Generator().manual_seed(0))
    x = (volumes * torch.exp(1j * phase)).to(torch.complex128)
    maps = physops.birdcage_maps((size, size), coils, dtype=torch.complex128)[None, :, None]
    mask = physops.kt_mask((frames, size, size), 4.0, center_lines=4, seed=0).double()
    op = physops.Sense(maps, mask, ndim=2)
    return op, maps, mask, x, op(x)


@needs_sigpy
def test_cine_equals_sigpy_run_directly():
    op, maps, mask, _, y = _cine()
    out = unrolled.cs_reconstruct_cine(y, op, 1e-3, 0.003, 0.03, iterations=20)
    assert out.shape == (2, 4, 16, 16)
    assert out.dtype == torch.complex128
    shape = (4, 16, 16)
    coil_maps = np.broadcast_to(maps[0].numpy(), (3, *shape))
    for b in range(2):
        sens = sigpy.linop.Multiply(shape, coil_maps)
        fourier = sigpy.linop.FFT(sens.oshape, axes=(-2, -1))
        forward = sigpy.linop.Multiply(fourier.oshape, mask.numpy()) * fourier * sens
        ops = [
            sigpy.linop.Wavelet(shape, axes=(-2, -1)),
            sigpy.linop.FiniteDifference(shape, axes=(-2, -1)),
            sigpy.linop.FiniteDifference(shape, axes=(-3,)),
        ]
        proxg = sigpy.prox.Stack(
            [sigpy.prox.L1Reg(o.oshape, w) for o, w in zip(ops, (1e-3, 0.003, 0.03))]
        )
        _seed_numpy()
        app = sigpy.app.LinearLeastSquares(
            forward,
            y[b].numpy(),
            proxg=proxg,
            G=sigpy.linop.Vstack(ops),
            max_iter=20,
            show_pbar=False,
        )
        np.testing.assert_allclose(out[b].numpy(), np.asarray(app.run()), rtol=1e-10, atol=1e-12)


@needs_sigpy
def test_cine_temporal_tv_helps_on_real_anatomy():
    """Slabs of adjacent real slices as frames: the temporal TV term beats zero-filling and
    the wavelet alone, and makes neighbouring frames closer (32 px: at 16 px the k-t mask keeps
    little beyond its central lines)."""
    op, _, _, x, y = _cine(batch=1, size=32)
    zero_filled = op.adjoint(y)
    wavelet_only = unrolled.cs_reconstruct_cine(y, op, 1e-3, 0.0, 0.0, iterations=100)
    with_tv = unrolled.cs_reconstruct_cine(y, op, 1e-3, 0.003, 0.03, iterations=100)
    psnr = {
        k: unrolled.psnr(v, x)
        for k, v in [("zf", zero_filled), ("w", wavelet_only), ("tv", with_tv)]
    }
    assert bool((psnr["tv"] > psnr["zf"] + 3).all()), psnr
    assert bool((psnr["tv"] > psnr["w"]).all()), psnr

    def temporal_variation(v):
        return float((v[:, 1:] - v[:, :-1]).abs().sum())

    assert temporal_variation(with_tv) < temporal_variation(wavelet_only)


@needs_sigpy
def test_single_coil_cine():
    _, _, mask, x, _ = _cine(batch=1)
    op = physops.FourierSampling(mask)
    out = unrolled.cs_reconstruct_cine(op(x), op, 1e-3, iterations=10)
    assert out.shape == (1, 4, 16, 16)


@needs_sigpy
def test_compressed_sensing_module_runs_cine_with_tv_weights():
    op, _, _, _, y = _cine(batch=1)
    baseline = unrolled.CompressedSensing(1e-3, 10, tv_spatial=0.003, tv_temporal=0.03)
    direct = unrolled.cs_reconstruct_cine(y, op, 1e-3, 0.003, 0.03, 10)
    assert torch.equal(baseline(y, op), direct)


@needs_sigpy
def test_readme_fpm_and_cs_example_runs(capsys):
    """The python block of the README's FPM and CS section (it needs sigpy, hence here)."""
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Fourier ptychography with a learned LED design")[1]
    code = section.split("```python\n")[1].split("```")[0]
    exec(compile(code, "README.md (FPM and CS)", "exec"), {})
    assert "torch.Size([4, 25])" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------
def test_unsupported_physics():
    blur = physops.Blur(physops.gaussian_kernel(3, 1.0))
    y = torch.zeros(1, 16, 16, dtype=torch.complex64)
    with pytest.raises(TypeError, match=r"physics must be a physops.Sense .* got Blur"):
        unrolled.cs_reconstruct(y, blur, 0.01)


def test_missing_sigpy(monkeypatch):
    op, _, _, _, y = _sense()
    monkeypatch.setitem(sys.modules, "sigpy", None)
    with pytest.raises(ImportError, match=r"pip install 'memroll-unrolled\[cs\]'"):
        unrolled.cs_reconstruct(y, op, 0.01)


@pytest.mark.parametrize("lamda", [0.0, -0.1, float("nan"), True])
def test_non_positive_lambda(lamda):
    op, _, _, _, y = _sense()
    with pytest.raises(ValueError, match="lamda must be a finite number > 0"):
        unrolled.cs_reconstruct(y, op, lamda)


def test_negative_tv_weight():
    op, _, _, _, y = _cine(batch=1)
    with pytest.raises(ValueError, match="tv_temporal must be a finite number >= 0"):
        unrolled.cs_reconstruct_cine(y, op, 1e-3, 0.05, -0.01)


def test_bad_iterations():
    op, _, _, _, y = _sense()
    with pytest.raises(ValueError, match="iterations must be a positive integer"):
        unrolled.cs_reconstruct(y, op, 0.01, iterations=0)


@needs_sigpy
def test_bad_wavelet():
    op, _, _, _, y = _sense()
    with pytest.raises(ValueError, match="wavelet must be a discrete PyWavelets name"):
        unrolled.cs_reconstruct(y, op, 0.01, wavelet="morlet")


def test_real_or_nan_measurements():
    op, _, _, _, y = _sense()
    with pytest.raises(TypeError, match="y must be complex k-space"):
        unrolled.cs_reconstruct(y.real, op, 0.01)
    y = y.clone()
    y[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="contains 1 non-finite value"):
        unrolled.cs_reconstruct(y, op, 0.01)


@needs_sigpy
def test_measurements_without_the_coil_axis():
    op, _, _, _, y = _sense()
    with pytest.raises(ValueError, match=r"y must have shape \(batch, coils=3, \*image\)"):
        unrolled.cs_reconstruct(y[:, 0], op, 0.01)


@needs_sigpy
def test_cine_operator_refused_by_the_2d_reconstruction():
    op, _, _, _, y = _cine(batch=1)
    with pytest.raises(ValueError, match=r"is 2D\+time .* use cs_reconstruct_cine"):
        unrolled.cs_reconstruct(y, op, 0.01)


@needs_sigpy
def test_2d_operator_refused_by_the_cine_reconstruction():
    op, _, _, _, y = _sense()
    with pytest.raises(ValueError, match=r"needs a 2D\+time Sense operator .* use cs_reconstruct"):
        unrolled.cs_reconstruct_cine(y, op, 0.01)
