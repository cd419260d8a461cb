"""Radon: exact adjoint, gradients, scikit-image cross-check on real images, FBP, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import physops

DTYPES = [torch.float32, torch.float64, torch.complex64, torch.complex128]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("size", "circle"), [(16, True), (17, False), (24, True)])
def test_adjoint_is_the_exact_transpose(
    dtype: torch.dtype, size: int, circle: bool, device: torch.device
) -> None:
    op = physops.Radon(size, physops.uniform_angles(23), circle=circle).to(device)
    x_like = torch.zeros(3, size, size, dtype=dtype, device=device)
    tol = 1e-5 if dtype in (torch.float32, torch.complex64) else 1e-12
    error = physops.check_adjoint(op, x_like, tol=tol)
    assert error < tol


def test_batching_over_any_leading_dims() -> None:
    op = physops.Radon(12, physops.uniform_angles(7))
    x = torch.randn(2, 3, 12, 12)
    y = op(x)
    assert y.shape == (2, 3, 7, 12)
    torch.testing.assert_close(y[1, 2], op(x[1, 2]))
    assert op.adjoint(y).shape == x.shape


def test_float64_gradcheck_forward_adjoint_and_second_order() -> None:
    op = physops.Radon(8, physops.uniform_angles(5, dtype=torch.float64))
    x = torch.randn(2, 8, 8, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(op, (x,))
    assert torch.autograd.gradcheck(op.adjoint, (y,))
    assert torch.autograd.gradgradcheck(lambda v: op(v).square().sum(), (x,))


def test_gradient_flows_through_data_consistency_step() -> None:
    op = physops.Radon(16, physops.uniform_angles(10))
    x = torch.randn(16, 16, requires_grad=True)
    y = op(torch.randn(16, 16))
    step = x - 0.01 * op.adjoint(op(x) - y)
    step.square().sum().backward()
    assert x.grad is not None
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("size", [64, 96])
def test_matches_skimage_radon_on_real_images(size: int) -> None:
    transform = pytest.importorskip("skimage.transform")
    angles = physops.uniform_angles(1000, keep=200, dtype=torch.float64)  # LUSER's setting
    images = physops.real_anatomy_images("test", image_size=size)[:2].double()
    ours = physops.Radon(size, angles)(images)
    for image, sino in zip(images, ours):
        reference = transform.radon(image.numpy(), np.rad2deg(angles.numpy()), circle=True)
        reference = torch.from_numpy(reference).T  # skimage: (detectors, angles)
        # the same discretisation (bilinear samples at unit spacing, centre at N // 2):
        # measured relative error ~5e-16 in float64
        assert (sino - reference).norm() / reference.norm() < 1e-12


def test_matches_skimage_without_circle() -> None:
    transform = pytest.importorskip("skimage.transform")
    angles = physops.uniform_angles(30, dtype=torch.float64)
    image = physops.real_anatomy_images("val", image_size=32)[0].double()
    ours = physops.Radon(32, angles, circle=False)(image)
    reference = transform.radon(image.numpy(), np.rad2deg(angles.numpy()), circle=False)
    reference = torch.from_numpy(reference).T
    assert ours.shape == reference.shape
    assert (ours - reference).norm() / reference.norm() < 1e-12


def test_fbp_reconstructs_real_images() -> None:
    size = 64
    op = physops.Radon(size, physops.uniform_angles(1000, keep=200))
    images = physops.real_anatomy_images("test", image_size=size)[:2]
    recon = physops.fbp(op, op(images))
    assert recon.shape == images.shape
    circle = physops.Radon(size, [0.0]).adjoint(torch.ones(1, size)) > 0  # pixels the rays see
    error = (recon - images)[:, circle].norm() / images[:, circle].norm()
    assert error < 0.1, error  # measured 0.055 (ramp filter, 200 angles, 64 px)
    smooth = physops.fbp(op, op(images), filter="hann")
    assert (smooth - images)[:, circle].norm() / images[:, circle].norm() < 0.15


def test_luser_angles() -> None:
    angles = physops.uniform_angles(1000, keep=200)
    assert angles.shape == (200,)
    torch.testing.assert_close(angles[1] - angles[0], torch.tensor(5 * math.pi / 1000))
    assert float(angles.max()) < math.pi


@pytest.mark.gpu
def test_radon_on_gpu_matches_cpu() -> None:
    op = physops.Radon(32, physops.uniform_angles(40))
    x = torch.randn(2, 32, 32)
    torch.testing.assert_close(op.cuda()(x.cuda()).cpu(), op.cpu()(x), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------


def test_angles_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"angles in radians within \[0, pi\], got values in"):
        physops.Radon(16, [0.0, 90.0])


def test_non_finite_angles() -> None:
    with pytest.raises(ValueError, match="angles contain NaN or infinite values"):
        physops.Radon(16, torch.tensor([0.0, float("nan")]))


def test_empty_angles() -> None:
    with pytest.raises(ValueError, match="non-empty 1D set of angles"):
        physops.Radon(16, torch.zeros(0))


def test_integer_angles_tensor() -> None:
    with pytest.raises(TypeError, match="real floating angles"):
        physops.Radon(16, torch.tensor([0, 1]))


def test_wrong_image_shape() -> None:
    op = physops.Radon(16, physops.uniform_angles(4))
    with pytest.raises(
        ValueError, match=r"expects x of shape \(\*batch, 16, 16\), got \(2, 16, 15\)"
    ):
        op(torch.zeros(2, 16, 15))


def test_wrong_sinogram_shape() -> None:
    op = physops.Radon(16, physops.uniform_angles(4))
    with pytest.raises(ValueError, match=r"expects y of shape \(\*batch, 4, 16\)"):
        op.adjoint(torch.zeros(5, 16))


def test_integer_image() -> None:
    op = physops.Radon(8, physops.uniform_angles(4))
    with pytest.raises(TypeError, match="floating or complex x"):
        op(torch.zeros(8, 8, dtype=torch.int64))


def test_uniform_angles_keep_must_divide() -> None:
    with pytest.raises(ValueError, match="keep=300 must divide num_angles=1000"):
        physops.uniform_angles(1000, keep=300)
