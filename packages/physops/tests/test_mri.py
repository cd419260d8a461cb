"""FFT, FourierSampling and Sense: adjointness, sigpy agreement, broadcasting, gradients, errors."""

from __future__ import annotations

import numpy as np
import pytest
import sigpy.mri.linop
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from physops import (
    FFT,
    FourierSampling,
    Sense,
    check_adjoint,
    check_gradients,
    fftc,
    ifftc,
)

COMPLEX = [torch.complex64, torch.complex128]


def rand_maps(batch, coils, *image, dtype=torch.complex64, device="cpu"):
    return torch.randn(batch, coils, *image, dtype=dtype, device=device)


def rand_mask(*shape, device="cpu"):
    return (torch.rand(shape, device=device) < 0.5).float()


# -- adjointness over dtypes, devices and shapes ---------------------------------------------------
@pytest.mark.parametrize("dtype", COMPLEX)
@pytest.mark.parametrize("ndim", [2, 3])
def test_fft_adjoint_and_unitary(dtype, ndim, device):
    op = FFT(ndim)
    x = torch.randn(2, 3, 4, 5, dtype=dtype, device=device)
    assert check_adjoint(op, x) <= (1e-4 if dtype == torch.complex64 else 1e-10)
    torch.testing.assert_close(op.adjoint(op(x)), x)
    assert op.normal(x) is x


@pytest.mark.parametrize("dtype", COMPLEX)
@pytest.mark.parametrize(
    ("mask_shape", "x_shape", "ndim"),
    [
        ((8, 6), (3, 8, 6), 2),  # one mask for the batch
        ((6,), (3, 8, 6), 2),  # 1D Cartesian columns
        ((3, 1, 6), (3, 8, 6), 2),  # per-sample 1D masks
        ((3, 8, 6), (3, 8, 6), 2),  # per-sample 2D masks
        ((4, 1, 6), (2, 4, 8, 6), 2),  # 2D+time: a pattern per frame
        ((4, 8, 6), (2, 4, 8, 6), 3),  # 3D
    ],
)
def test_fourier_sampling_adjoint(dtype, mask_shape, x_shape, ndim, device):
    op = FourierSampling(rand_mask(*mask_shape, device=device), ndim=ndim)
    x = torch.zeros(x_shape, dtype=dtype, device=device)
    check_adjoint(op, x)
    y = op(torch.randn_like(x))
    assert y.dtype == dtype
    assert y.shape == x.shape


@pytest.mark.parametrize("dtype", COMPLEX)
@pytest.mark.parametrize(
    ("maps_shape", "mask_shape", "x_shape", "ndim"),
    [
        ((1, 4, 8, 6), (8, 6), (3, 8, 6), None),  # shared maps and mask
        ((3, 4, 8, 6), (3, 1, 6), (3, 8, 6), None),  # per-sample maps and masks (DataLoader)
        ((1, 4, 8, 6), (3, 8, 6), (3, 8, 6), None),  # shared maps, per-sample masks
        ((3, 4, 8, 6), None, (3, 8, 6), None),  # fully sampled
        ((1, 3, 4, 6, 8), (4, 6, 8), (2, 4, 6, 8), None),  # 3D
        ((2, 3, 1, 6, 8), (2, 5, 1, 8), (2, 5, 6, 8), 2),  # 2D+time, maps shared over frames
        ((1, 3, 5, 6, 8), (5, 6, 8), (2, 5, 6, 8), 2),  # 2D+time, maps per frame
    ],
)
def test_sense_adjoint(dtype, maps_shape, mask_shape, x_shape, ndim, device):
    maps = rand_maps(*maps_shape, device=device)
    mask = None if mask_shape is None else rand_mask(*mask_shape, device=device)
    op = Sense(maps, mask, ndim=ndim)
    x = torch.zeros(x_shape, dtype=dtype, device=device)
    check_adjoint(op, x)
    y = op(torch.randn_like(x))
    assert y.dtype == dtype
    assert y.shape == (x_shape[0], maps_shape[1], *x_shape[1:])
    assert op.adjoint(y).shape == x_shape


@settings(max_examples=15, deadline=None)
@given(
    batch=st.integers(1, 3),
    coils=st.integers(1, 4),
    height=st.integers(1, 9),
    width=st.integers(1, 9),
    shared=st.booleans(),
    double=st.booleans(),
)
def test_sense_adjoint_property(batch, coils, height, width, shared, double):
    dtype = torch.complex128 if double else torch.complex64
    maps = rand_maps(1 if shared else batch, coils, height, width, dtype=dtype)
    op = Sense(maps, rand_mask(batch, height, width))
    check_adjoint(op, torch.zeros(batch, height, width, dtype=dtype))


def test_sense_keeps_caller_precision():
    op = Sense(rand_maps(1, 2, 4, 4, dtype=torch.complex64), rand_mask(4, 4))
    x = torch.randn(1, 4, 4, dtype=torch.complex128)
    assert op(x).dtype == torch.complex128
    assert op.normal(x).dtype == torch.complex128
    assert op(x.to(torch.complex64)).dtype == torch.complex64
    op64 = Sense(rand_maps(1, 2, 4, 4, dtype=torch.complex128))
    assert op64(x.to(torch.complex64)).dtype == torch.complex64


# -- independent implementation: sigpy ------------------------------------------------------------
def sigpy_sense(maps: np.ndarray, weights: np.ndarray | None, ishape=None):
    return sigpy.mri.linop.Sense(maps, weights=weights, ishape=ishape)


@pytest.mark.parametrize("shape", [(12, 10), (9, 7), (4, 6, 5)])
def test_sense_matches_sigpy(shape):
    batch, coils = 3, 4
    maps = rand_maps(batch, coils, *shape, dtype=torch.complex128)
    mask = rand_mask(batch, *shape).to(torch.float64)
    x = torch.randn(batch, *shape, dtype=torch.complex128)
    y = torch.randn(batch, coils, *shape, dtype=torch.complex128)
    op = Sense(maps, mask)
    for i in range(batch):
        ref = sigpy_sense(maps[i].numpy(), mask[i].numpy())
        np.testing.assert_allclose(op(x)[i].numpy(), ref * x[i].numpy(), atol=1e-12)
        np.testing.assert_allclose(op.adjoint(y)[i].numpy(), ref.H * y[i].numpy(), atol=1e-12)
        np.testing.assert_allclose(op.normal(x)[i].numpy(), ref.N * x[i].numpy(), atol=1e-12)


def test_sense_non_binary_mask_is_sigpy_weights_squared():
    maps = rand_maps(1, 3, 8, 6, dtype=torch.complex128)
    mask = torch.rand(8, 6, dtype=torch.float64)
    x = torch.randn(1, 8, 6, dtype=torch.complex128)
    ref = sigpy_sense(maps[0].numpy(), (mask**2).numpy())
    np.testing.assert_allclose(Sense(maps, mask)(x)[0].numpy(), ref * x[0].numpy(), atol=1e-12)


def test_sense_2d_time_matches_sigpy_frame_by_frame():
    maps = rand_maps(1, 3, 1, 8, 6, dtype=torch.complex128)  # shared across frames
    mask = rand_mask(4, 8, 6).to(torch.float64)  # one pattern per frame
    op = Sense(maps, mask, ndim=2)
    x = torch.randn(2, 4, 8, 6, dtype=torch.complex128)
    k = op(x)
    for t in range(4):
        ref = sigpy_sense(maps[0, :, 0].numpy(), mask[t].numpy())
        for b in range(2):
            np.testing.assert_allclose(k[b, :, t].numpy(), ref * x[b, t].numpy(), atol=1e-12)


@pytest.mark.parametrize("shape", [(8, 6), (7, 5), (4, 6, 3)])
def test_fourier_sampling_matches_single_coil_sigpy(shape):
    mask = rand_mask(*shape).to(torch.float64)
    x = torch.randn(2, *shape, dtype=torch.complex128)
    y = torch.randn(2, *shape, dtype=torch.complex128)
    ref = sigpy_sense(np.ones((1, *shape), dtype=np.complex128), mask.numpy())
    op = FourierSampling(mask, ndim=len(shape))
    for b in range(2):
        np.testing.assert_allclose(op(x)[b].numpy(), (ref * x[b].numpy())[0], atol=1e-12)
        np.testing.assert_allclose(
            op.adjoint(y)[b].numpy(), ref.H * y[b : b + 1].numpy(), atol=1e-12
        )
        np.testing.assert_allclose(op.normal(x)[b].numpy(), ref.N * x[b].numpy(), atol=1e-12)


def test_fourier_sampling_equals_single_coil_sense_with_unit_map():
    mask = rand_mask(2, 8, 6)
    x = torch.randn(2, 8, 6, dtype=torch.complex64)
    sense = Sense(torch.ones(1, 1, 8, 6, dtype=torch.complex64), mask)
    torch.testing.assert_close(FourierSampling(mask)(x), sense(x)[:, 0])


# -- broadcasting equals the per-sample loop ------------------------------------------------------
def test_batched_maps_and_masks_equal_per_sample_operators():
    maps = rand_maps(3, 4, 8, 6)
    mask = rand_mask(3, 1, 6)
    x = torch.randn(3, 8, 6, dtype=torch.complex64)
    op = Sense(maps, mask)
    for i in range(3):
        single = Sense(maps[i : i + 1], mask[i : i + 1])
        torch.testing.assert_close(op(x)[i : i + 1], single(x[i : i + 1]))
        torch.testing.assert_close(op.normal(x)[i : i + 1], single.normal(x[i : i + 1]))


def test_sense_normal_is_cheap_and_right_without_mask():
    op = Sense(rand_maps(2, 4, 8, 6, dtype=torch.complex128))
    x = torch.randn(2, 8, 6, dtype=torch.complex128)
    torch.testing.assert_close(op.normal(x), op.adjoint(op(x)))


def test_fft_is_fftc():
    x = torch.randn(2, 8, 6, dtype=torch.complex64)
    torch.testing.assert_close(FFT()(x), fftc(x))
    torch.testing.assert_close(FFT().H(x), ifftc(x))


# -- modules: buffers, state_dict, device moves, learnable maps -----------------------------------
def test_sense_buffers_state_dict_and_precision_moves():
    maps = rand_maps(1, 2, 4, 4)
    op = Sense(maps, rand_mask(4, 4))
    assert set(op.state_dict()) == {"maps", "mask"}
    clone = Sense(torch.zeros_like(maps), torch.zeros(4, 4))
    clone.load_state_dict(op.state_dict())
    x = torch.randn(1, 4, 4, dtype=torch.complex64)
    torch.testing.assert_close(clone(x), op(x))
    op.double()  # changes the stored precision, keeps the imaginary parts
    torch.testing.assert_close(op(x.to(torch.complex128)), clone(x).to(torch.complex128))


def test_sense_to_device(device):
    op = Sense(rand_maps(1, 2, 4, 4), rand_mask(4, 4)).to(device)
    x = torch.randn(2, 4, 4, dtype=torch.complex64, device=device)
    assert op(x).device == x.device


def test_learnable_maps_receive_gradients():
    maps = torch.nn.Parameter(rand_maps(1, 2, 4, 4))
    op = Sense(maps, rand_mask(4, 4))
    op(torch.randn(1, 4, 4, dtype=torch.complex64)).abs().sum().backward()
    assert maps.grad is not None
    assert maps.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (lambda: Sense(rand_maps(2, 2, 2, 3), rand_mask(2, 1, 3)), (2, 2, 3)),
        (lambda: Sense(rand_maps(1, 2, 1, 2, 2), rand_mask(2, 1, 2), ndim=2), (1, 2, 2, 2)),
        (lambda: FourierSampling(rand_mask(3, 4)), (2, 3, 4)),
        (lambda: FFT(3), (1, 2, 3, 4)),
    ],
)
def test_gradcheck_float64(make, shape):
    check_gradients(make(), torch.zeros(shape, dtype=torch.complex64))


def test_gradcheck_covers_learnable_maps():
    op = Sense(torch.nn.Parameter(rand_maps(1, 2, 2, 3)), rand_mask(2, 3))
    check_gradients(op, torch.zeros(1, 2, 3, dtype=torch.complex64))


# -- errors: one test per message -----------------------------------------------------------------
def _c64(*shape: int) -> torch.Tensor:
    return torch.zeros(shape, dtype=torch.complex64)


@pytest.mark.parametrize(
    ("make", "call", "error", "match"),
    [
        pytest.param(
            lambda: Sense(rand_maps(4, 8, 32, 24), rand_mask(32, 24)),
            lambda op: op(_c64(4, 8, 32, 24)),
            ValueError,
            r"expects image x of shape \(batch, \*image_shape\) = \(B, 32, 24\), got "
            r"\(4, 8, 32, 24\): pass the coil-combined image, not per-coil images",
            id="per_coil_images",
        ),
        pytest.param(
            lambda: Sense(rand_maps(1, 4, 32, 24)),
            lambda op: op(_c64(2, 32, 20)),
            ValueError,
            r"= \(B, 32, 24\), got \(2, 32, 20\): the image dimensions must match",
            id="image_maps_shape_mismatch",
        ),
        pytest.param(
            lambda: Sense(rand_maps(1, 4, 8, 6)),
            lambda op: op.adjoint(_c64(2, 8, 6)),
            ValueError,
            r"= \(B, 4, 8, 6\), got \(2, 8, 6\): pass k-space",
            id="kspace_without_coil_axis",
        ),
        pytest.param(
            lambda: Sense(rand_maps(4, 2, 8, 6)),
            lambda op: op(_c64(3, 8, 6)),
            ValueError,
            r"holds maps/mask for a batch of 4 but image x has batch 3",
            id="batch_mismatch",
        ),
        pytest.param(
            lambda: Sense(rand_maps(1, 2, 8, 6)),
            lambda op: op(torch.zeros(1, 8, 6)),
            TypeError,
            r"expects a complex image x .* got a torch\.float32 tensor",
            id="real_image",
        ),
    ],
)
def test_sense_rejects(make, call, error, match):
    op = make()
    with pytest.raises(error, match=match):
        call(op)


def test_fourier_sampling_rejects_real_kspace():
    with pytest.raises(TypeError, match=r"expects a complex k-space y .* torch\.float64"):
        FourierSampling(rand_mask(8, 6)).adjoint(torch.zeros(1, 8, 6, dtype=torch.float64))


def test_fft_rejects_real_image():
    with pytest.raises(TypeError, match=r"FFT expects a complex image x"):
        FFT()(torch.zeros(8, 6))


def test_sense_rejects_mask_that_does_not_broadcast():
    with pytest.raises(ValueError, match=r"mask of shape \(8, 5\) does not broadcast against"):
        Sense(rand_maps(1, 2, 8, 6), rand_mask(8, 5))


def test_sense_rejects_mask_with_coil_axis():
    with pytest.raises(ValueError, match=r"mask of shape \(1, 1, 8, 6\) does not broadcast"):
        Sense(rand_maps(1, 2, 8, 6), rand_mask(1, 1, 8, 6))


def test_fourier_sampling_rejects_mask_that_does_not_broadcast():
    op = FourierSampling(rand_mask(8, 6))
    with pytest.raises(
        ValueError,
        match=r"mask of shape \(8, 6\) does not broadcast against the "
        r"input of shape \(2, 8, 5\)",
    ):
        op(torch.zeros(2, 8, 5, dtype=torch.complex64))


def test_mask_must_be_real():
    with pytest.raises(TypeError, match=r"expects a real mask .* got torch\.complex64"):
        FourierSampling(torch.ones(4, 4, dtype=torch.complex64))


def test_mask_must_have_dimensions():
    with pytest.raises(ValueError, match=r"at least one dimension, got a 0-dim tensor"):
        FourierSampling(torch.tensor(1.0))


def test_mask_must_be_a_tensor():
    with pytest.raises(TypeError, match=r"expects mask as a torch.Tensor, got list"):
        FourierSampling([1, 0, 1])  # type: ignore[arg-type]


def test_sense_rejects_unbatched_maps():
    with pytest.raises(ValueError, match=r"got \(8, 32, 24\): add the batch dimension"):
        Sense(rand_maps(8, 32, 24))


def test_sense_rejects_integer_maps():
    with pytest.raises(TypeError, match=r"complex coil maps, got dtype torch\.int64"):
        Sense(torch.ones(1, 2, 4, 4, dtype=torch.int64))


def test_sense_rejects_non_tensor_maps():
    with pytest.raises(TypeError, match=r"expects maps as a torch.Tensor, got ndarray"):
        Sense(np.ones((1, 2, 4, 4)))  # type: ignore[arg-type]


def test_sense_rejects_fft_over_more_dims_than_image():
    with pytest.raises(ValueError, match=r"ndim=3 but the maps .* have only 2 image dimensions"):
        Sense(rand_maps(1, 2, 4, 4), ndim=3)


@pytest.mark.parametrize("make", [FFT, lambda n: FourierSampling(torch.ones(4, 4), ndim=n)])
def test_bad_fft_ndim(make):
    with pytest.raises(ValueError, match=r"must be 2 or 3, got 1\. For 2D\+time"):
        make(1)


# -- the cached conjugate maps ---------------------------------------------------------------------
def test_conjugate_cache_follows_in_place_changes_of_the_maps():
    maps = rand_maps(1, 3, 8, 6)
    mask = rand_mask(8, 6)
    expected_op = Sense(maps.clone() * 2j, mask)
    op = Sense(maps, mask)  # its buffer shares memory with ``maps`` (as register_buffer does)
    y = torch.randn(2, 3, 8, 6, dtype=torch.complex64)
    op.adjoint(y)  # fills the cache
    torch.view_as_complex(op.maps).mul_(2j)  # the stored buffer, changed in place
    torch.testing.assert_close(op.adjoint(y), expected_op.adjoint(y))


def test_conjugate_cache_built_in_inference_mode_serves_autograd():
    op = Sense(rand_maps(1, 3, 8, 6), rand_mask(8, 6))
    with torch.inference_mode():
        op.normal(torch.randn(1, 8, 6, dtype=torch.complex64))
    x = torch.randn(1, 8, 6, dtype=torch.complex64, requires_grad=True)
    op.normal(x).abs().sum().backward()
    assert x.grad is not None


def unique_saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd saves while ``fn`` runs."""
    storages: dict[int, int] = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def test_autograd_saves_no_coil_sized_copy_per_call():
    # Each call of normal() under autograd may save image-sized tensors, but no coil-sized copy of
    # the maps (the conjugate is cached once per operator).
    maps = rand_maps(1, 8, 16, 12)
    op = Sense(maps, rand_mask(16, 12))
    x = torch.randn(1, 16, 12, dtype=torch.complex64, requires_grad=True)

    def chain(n):
        def run():
            v = x
            for _ in range(n):
                v = op.normal(v)

        return run

    per_call = unique_saved_bytes(chain(4)) - unique_saved_bytes(chain(3))
    assert per_call < maps.numel() * maps.element_size()


def test_public_accessors_return_maps_and_mask_as_given():
    maps = torch.randn(2, 3, 8, 8, dtype=torch.complex64)
    mask = (torch.rand(8, 8) < 0.5).float()
    A = Sense(maps, mask)
    assert torch.equal(A.coil_maps(), maps)
    assert torch.equal(A.sampling_mask(), mask)
    assert Sense(maps).sampling_mask() is None
    assert torch.equal(FourierSampling(mask).sampling_mask(), mask)
    assert A.double().coil_maps().dtype == torch.complex128
