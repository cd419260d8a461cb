"""Fourier ptychography: gradients, the weak-object low-pass property, learnable design, errors."""

from __future__ import annotations

import pytest
import torch

import physops


def small(
    design: torch.Tensor | None = None, learnable: bool = True
) -> physops.FourierPtychography:
    return physops.FourierPtychography(
        32, physops.led_grid(5), downsample=4, design=design, learnable=learnable
    ).double()


def test_forward_shapes_and_clear_object() -> None:
    op = physops.FourierPtychography(64, physops.led_grid())
    assert op.num_leds == 81
    assert op.camera_size == 16
    clear = torch.ones(2, 64, 64, dtype=torch.complex64)
    images = op.intensities(clear)
    assert images.shape == (2, 81, 16, 16)
    bright = op.brightfield()
    # a clear object images to intensity 1 under bright-field LEDs and to 0 under dark-field ones
    torch.testing.assert_close(images[:, bright], torch.ones_like(images[:, bright]))
    assert images[:, ~bright].abs().max() < 1e-6
    assert op(clear).shape == (2, 81, 16, 16)


def tiny() -> physops.FourierPtychography:
    """8 x 8 object, 4 x 4 camera, five LEDs shifting the spectrum by 0, 1 and 2 pixels."""
    leds = torch.tensor([[0.0, 0.0], [0.27, 0.0], [0.0, 0.27], [0.27, 0.27], [-0.5, 0.0]])
    return physops.FourierPtychography(8, leds, downsample=2, design=torch.rand(3, 5)).double()


def test_float64_gradcheck_of_forward() -> None:
    op = tiny()
    x = torch.randn(1, 8, 8, dtype=torch.complex128, requires_grad=True)
    assert torch.autograd.gradcheck(op, (x,))


def test_gradient_equals_autograd_and_finite_differences() -> None:
    op = small(torch.rand(3, 25))
    x = torch.randn(2, 32, 32, dtype=torch.complex128, requires_grad=True)
    y = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    closed = op.gradient(x, y)
    (auto,) = torch.autograd.grad(op.data_loss(x, y).sum(), x)
    torch.testing.assert_close(closed, auto)
    # directional finite difference: D(x + h d) - D(x - h d) ~ 2 h Re<grad, d>
    d = torch.randn_like(x)
    h = 1e-6
    with torch.no_grad():
        fd = (op.data_loss(x + h * d, y) - op.data_loss(x - h * d, y)).sum() / (2 * h)
    predicted = (closed.conj() * d).real.sum()
    torch.testing.assert_close(fd, predicted, rtol=1e-6, atol=1e-8)


@pytest.mark.slow  # about 10 s on a loaded 2-core machine: complex gradcheck of a gradient
def test_gradient_is_differentiable_float64() -> None:
    op = tiny()
    y = torch.rand(1, 3, 4, 4, dtype=torch.float64)
    x = torch.randn(1, 8, 8, dtype=torch.complex128, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: op.gradient(v, y), (x,))


def test_single_led_brightfield_of_weak_object_is_its_low_pass() -> None:
    n, m = 64, 16
    op = physops.FourierPtychography(n, physops.led_grid(3), downsample=4).double()
    image = physops.real_anatomy_images("train", image_size=n)[3].double()
    eps = 1e-3
    x = (1 + eps * image).to(torch.complex128)  # weak amplitude object
    centre = op.intensities(x)[0]  # LED 0 is on axis
    # independent low-pass: the pupil as a disc on the full grid, then decimation (exact, since
    # the pupil's band fits the camera grid)
    f = torch.fft.fftshift(torch.fft.fft2(x))
    k = torch.arange(n, dtype=torch.float64) - n // 2
    radius = op.na * n * op.pixel_size / op.wavelength
    disc = (k[:, None] ** 2 + k[None, :] ** 2) <= radius**2
    low = torch.fft.ifft2(torch.fft.ifftshift(f * disc))[:: n // m, :: n // m]
    torch.testing.assert_close(centre.sqrt(), low.abs(), rtol=1e-10, atol=1e-12)
    # and, to first order in eps, I - 1 = 2 eps lowpass(image)
    lowpass_image = (low.real - 1) / eps
    torch.testing.assert_close((centre - 1) / eps, 2 * lowpass_image, rtol=0, atol=5 * eps)


def test_design_weights_receive_gradients_through_an_unrolled_step() -> None:
    op = physops.FourierPtychography(
        32, physops.led_grid(5), downsample=4, design=torch.rand(4, 25)
    )
    images = physops.real_anatomy_images("train", image_size=32)
    target = physops.ptychography_object(images[0], images[7])
    y = op(target).detach()
    x = torch.ones(1, 32, 32, dtype=torch.complex64)
    for _ in range(3):
        x = x - 1e-2 * op.gradient(x, y[None])
    loss = (x - target).abs().square().mean()
    loss.backward()
    grad = op.design_raw.grad
    assert grad is not None
    assert grad.abs().sum() > 0
    assert torch.isfinite(grad).all()


def test_design_stays_non_negative_under_optimisation() -> None:
    op = small(torch.full((2, 25), 0.01))
    with torch.no_grad():
        op.design_raw -= 1.0  # an optimiser step that overshoots below zero
    assert (op.design >= 0).all()
    fixed = small(torch.eye(25), learnable=False)
    assert not any(p is fixed.design_raw for p in fixed.parameters())


def test_simulate_from_real_images_with_noise() -> None:
    op = physops.FourierPtychography(
        32, physops.led_grid(5), downsample=4, design=torch.rand(6, 25)
    )
    images = physops.real_anatomy_images("val", image_size=32)
    x = physops.ptychography_object(images[0], images[1])
    assert x.dtype == torch.complex64
    assert float(x.abs().min()) >= 0.2 - 1e-6
    assert float(x.abs().max()) <= 1 + 1e-6
    clean = op.simulate(x)
    noisy = op.simulate(x, noise_std=0.01, generator=torch.Generator().manual_seed(0))
    assert noisy.shape == (6, 8, 8)
    assert not noisy.requires_grad
    assert 0.005 < float((noisy - clean).std()) < 0.02


@pytest.mark.gpu
def test_ptychography_on_gpu() -> None:
    op = physops.FourierPtychography(32, physops.led_grid(5), downsample=4)
    x = torch.randn(2, 32, 32, dtype=torch.complex64)
    torch.testing.assert_close(op.cuda()(x.cuda()).cpu(), op.cpu()(x), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------


def test_led_outside_the_spectrum() -> None:
    with pytest.raises(ValueError, match=r"shifts the 8-pixel camera window .* beyond the object"):
        physops.FourierPtychography(32, torch.tensor([[0.0, 0.0], [0.9, 0.0]]), downsample=4)


def test_pupil_larger_than_camera_grid() -> None:
    with pytest.raises(ValueError, match=r"the pupil spans .* lower downsample"):
        physops.FourierPtychography(32, physops.led_grid(3), downsample=8)


def test_negative_design() -> None:
    with pytest.raises(ValueError, match="non-negative design"):
        physops.FourierPtychography(32, physops.led_grid(3), design=-torch.ones(2, 9))


def test_design_shape() -> None:
    with pytest.raises(ValueError, match=r"design of shape \(num_measurements, 9\)"):
        physops.FourierPtychography(32, physops.led_grid(3), design=torch.ones(2, 8))


def test_illumination_shape() -> None:
    with pytest.raises(ValueError, match=r"illumination_na as an \(L, 2\) tensor"):
        physops.FourierPtychography(32, torch.zeros(9))


def test_real_object_rejected() -> None:
    op = physops.FourierPtychography(32, physops.led_grid(3))
    with pytest.raises(TypeError, match="expects a complex object"):
        op(torch.ones(32, 32))


def test_measurement_shape_in_gradient() -> None:
    op = physops.FourierPtychography(32, physops.led_grid(3))
    x = torch.ones(32, 32, dtype=torch.complex64)
    with pytest.raises(ValueError, match=r"measurements y of shape \(9, 8, 8\)"):
        op.gradient(x, torch.zeros(9, 4, 4))


def test_non_finite_images_for_the_object() -> None:
    bad = torch.ones(8, 8)
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="amplitude contains NaN or infinite values"):
        physops.ptychography_object(bad, torch.ones(8, 8))
