"""Centred orthonormal FFT: numpy reference, inverse, adjoint, norm, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from physops import fftc, ifftc

SHAPES_NDIM = [((4, 6), 2), ((2, 5, 7), 2), ((2, 5, 7), 3), ((3, 4, 5, 6), 3)]


@pytest.mark.parametrize(("shape", "ndim"), SHAPES_NDIM)
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_fftc_matches_numpy_reference(shape, ndim, dtype, device):
    x = torch.randn(shape, dtype=dtype, device=device)
    axes = tuple(range(-ndim, 0))
    ref = np.fft.fftshift(
        np.fft.fftn(np.fft.ifftshift(x.cpu().numpy(), axes=axes), axes=axes, norm="ortho"),
        axes=axes,
    )
    k = fftc(x, ndim)
    assert k.dtype == dtype
    assert k.device == x.device
    tol = 1e-5 if dtype == torch.complex64 else 1e-12
    np.testing.assert_allclose(k.cpu().numpy(), ref, rtol=tol, atol=tol)


@pytest.mark.parametrize(("shape", "ndim"), [*SHAPES_NDIM, ((5, 7), 2), ((3, 5, 9), 3)])
def test_ifftc_is_inverse_adjoint_and_isometry(shape, ndim):
    x = torch.randn(shape, dtype=torch.complex128)
    y = torch.randn(shape, dtype=torch.complex128)
    torch.testing.assert_close(ifftc(fftc(x, ndim), ndim), x)
    torch.testing.assert_close(fftc(ifftc(x, ndim), ndim), x)
    torch.testing.assert_close(torch.linalg.vector_norm(fftc(x, ndim)), torch.linalg.vector_norm(x))
    lhs = torch.vdot(fftc(x, ndim).flatten(), y.flatten())
    rhs = torch.vdot(x.flatten(), ifftc(y, ndim).flatten())
    torch.testing.assert_close(lhs, rhs)


def test_zero_frequency_is_centred():
    x = torch.ones(5, 6, dtype=torch.complex64)
    k = fftc(x)
    peak = divmod(int(k.abs().argmax()), 6)
    assert peak == (5 // 2, 6 // 2)


def test_real_input_gives_complex_of_same_precision():
    assert fftc(torch.randn(4, 4, dtype=torch.float64)).dtype == torch.complex128


def test_fftc_rejects_bad_ndim():
    with pytest.raises(ValueError, match="ndim must be 2 or 3, got 4"):
        fftc(torch.zeros(2, 2, 2, 2, dtype=torch.complex64), ndim=4)


def test_fftc_rejects_too_few_dims():
    with pytest.raises(ValueError, match=r"at least 3 dimensions, got shape \(4, 4\)"):
        ifftc(torch.zeros(4, 4, dtype=torch.complex64), ndim=3)


def test_fftc_rejects_integer_tensor():
    with pytest.raises(TypeError, match=r"got dtype torch\.int64"):
        fftc(torch.zeros(4, 4, dtype=torch.int64))


def test_fftc_rejects_non_tensor():
    with pytest.raises(TypeError, match=r"expects a torch\.Tensor, got ndarray"):
        fftc(np.zeros((4, 4)))  # type: ignore[arg-type]


def test_checkerboards_built_in_inference_mode_still_serve_autograd():
    with torch.inference_mode():
        fftc(torch.randn(2, 10, 12, dtype=torch.complex64))  # fills the checkerboard cache
    x = torch.randn(2, 10, 12, dtype=torch.complex64, requires_grad=True)
    fftc(x).abs().sum().backward()
    assert x.grad is not None
