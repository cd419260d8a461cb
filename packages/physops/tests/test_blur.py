"""Blur and gaussian_kernel: scipy agreement, adjointness, dtypes, gradients, errors."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import torch

from physops import Blur, check_adjoint, check_gradients, gaussian_kernel

DTYPES = [torch.float32, torch.float64, torch.complex64, torch.complex128]


@pytest.mark.parametrize(("boundary", "mode"), [("circular", "wrap"), ("zero", "constant")])
@pytest.mark.parametrize("kernel_shape", [(5, 3), (9, 9), (1, 7)])
def test_blur_matches_scipy_convolve(boundary, mode, kernel_shape):
    kernel = torch.rand(kernel_shape, dtype=torch.float64)
    x = torch.randn(2, 3, 12, 10, dtype=torch.float64)
    y = Blur(kernel, boundary=boundary)(x)
    for b in range(2):
        for c in range(3):
            ref = scipy.ndimage.convolve(x[b, c].numpy(), kernel.numpy(), mode=mode, cval=0.0)
            np.testing.assert_allclose(y[b, c].numpy(), ref, atol=1e-12)


def test_gaussian_kernel_matches_scipy_gaussian_filter():
    # A unit impulse blurred by scipy's sampled Gaussian (sigma = sqrt(variance), truncated to the
    # 9x9 support and renormalised) is the kernel itself.
    impulse = np.zeros((9, 9))
    impulse[4, 4] = 1.0
    ref = scipy.ndimage.gaussian_filter(
        impulse, sigma=np.sqrt(5.0), mode="constant", truncate=4 / np.sqrt(5.0)
    )
    ref /= ref.sum()
    kernel = gaussian_kernel(9, 5, dtype=torch.float64)
    assert kernel.shape == (9, 9)
    np.testing.assert_allclose(kernel.numpy(), ref, rtol=1e-10)
    torch.testing.assert_close(kernel.sum(), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(kernel, kernel.T)


def test_gaussian_kernel_defaults_are_luser():
    torch.testing.assert_close(gaussian_kernel(), gaussian_kernel(9, 5.0))
    assert gaussian_kernel().dtype == torch.float32


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("boundary", ["circular", "zero"])
@pytest.mark.parametrize("kernel_shape", [(9, 9), (4, 3)])
def test_blur_adjoint(dtype, boundary, kernel_shape, device):
    kernel = torch.randn(kernel_shape, dtype=torch.complex64 if dtype.is_complex else torch.float32)
    op = Blur(kernel, boundary=boundary).to(device)
    x = torch.zeros(2, 3, 11, 9, dtype=dtype, device=device)
    check_adjoint(op, x)
    y = op(torch.randn_like(x))
    assert y.dtype == dtype
    assert y.shape == x.shape


def test_real_image_complex_kernel_gives_complex_of_same_precision():
    op = Blur(torch.randn(3, 3, dtype=torch.complex128))
    assert op(torch.randn(1, 8, 8)).dtype == torch.complex64


def test_complex_image_blurs_real_and_imaginary_parts_alike():
    op = Blur(gaussian_kernel())
    x = torch.randn(2, 16, 16, dtype=torch.complex64)
    torch.testing.assert_close(op(x), torch.complex(op(x.real), op(x.imag)))


def test_channels_are_blurred_independently():
    op = Blur(gaussian_kernel(5, 1.0))
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(op(x)[1, 2], op(x[1, 2]))


def test_circular_blur_is_diagonalised_by_the_fft():
    kernel = gaussian_kernel(5, 2.0, dtype=torch.float64)
    x = torch.randn(12, 10, dtype=torch.float64)
    padded = torch.zeros(12, 10, dtype=torch.float64)
    padded[:5, :5] = kernel
    padded = torch.roll(padded, shifts=(-2, -2), dims=(0, 1))  # centre at index (0, 0)
    ref = torch.fft.ifft2(torch.fft.fft2(x) * torch.fft.fft2(padded)).real
    torch.testing.assert_close(Blur(kernel)(x), ref)


@pytest.mark.parametrize("boundary", ["circular", "zero"])
def test_gradcheck_with_learnable_kernel(boundary):
    op = Blur(torch.nn.Parameter(torch.randn(3, 2)), boundary=boundary)
    check_gradients(op, torch.zeros(1, 4, 3))
    check_gradients(op, torch.zeros(1, 3, 3, dtype=torch.complex64))


def test_state_dict_holds_the_kernel():
    op = Blur(gaussian_kernel())
    assert set(op.state_dict()) == {"kernel"}


def test_non_positive_variance():
    with pytest.raises(ValueError, match=r"variance must be positive and finite, got -1\.0"):
        gaussian_kernel(9, -1.0)


def test_zero_variance():
    with pytest.raises(ValueError, match=r"variance must be positive and finite, got 0"):
        gaussian_kernel(9, 0)


def test_bad_size():
    with pytest.raises(ValueError, match=r"size must be a positive integer, got 0"):
        gaussian_kernel(0, 5.0)


def test_variance_of_wrong_type():
    with pytest.raises(TypeError, match=r"variance must be a real number, got str"):
        gaussian_kernel(9, "5")  # type: ignore[arg-type]


def test_kernel_must_be_2d():
    with pytest.raises(ValueError, match=r"2D kernel of shape \(K_h, K_w\), got shape \(1, 9, 9\)"):
        Blur(torch.ones(1, 9, 9))


def test_kernel_must_be_floating():
    with pytest.raises(TypeError, match=r"floating or complex kernel, got dtype torch\.int64"):
        Blur(torch.ones(3, 3, dtype=torch.int64))


def test_kernel_must_be_a_tensor():
    with pytest.raises(TypeError, match=r"expects kernel as a torch.Tensor, got list"):
        Blur([[1.0]])  # type: ignore[arg-type]


def test_unknown_boundary():
    with pytest.raises(
        ValueError, match=r"unknown boundary 'reflect'; valid names are circular, zero"
    ):
        Blur(gaussian_kernel(), boundary="reflect")


def test_image_smaller_than_kernel_with_circular_boundary():
    with pytest.raises(
        ValueError, match=r"at least as large as the kernel \(9, 9\), got \(H, W\) = \(8, 8\)"
    ):
        Blur(gaussian_kernel())(torch.zeros(1, 8, 8))


def test_image_must_be_floating():
    with pytest.raises(TypeError, match=r"real floating or complex image, got dtype torch\.int64"):
        Blur(gaussian_kernel(3, 1.0))(torch.zeros(1, 8, 8, dtype=torch.int64))


def test_image_needs_two_dims():
    with pytest.raises(ValueError, match=r"image of shape \(\*batch, H, W\), got shape \(8,\)"):
        Blur(gaussian_kernel(3, 1.0)).adjoint(torch.zeros(8))
