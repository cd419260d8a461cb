"""Converters between complex tensors and (B, 2, ...) channels / (..., 2) last-dim layouts."""

from __future__ import annotations

import pytest
import torch

from physops import (
    channels_to_complex,
    complex_to_channels,
    complex_to_last_dim,
    last_dim_to_complex,
)


@pytest.mark.parametrize("shape", [(2, 5, 4), (3, 2, 5, 4), (1, 7)])
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_channels_layout_and_round_trip(shape, dtype, device):
    x = torch.randn(shape, dtype=dtype, device=device)
    c = complex_to_channels(x)
    assert c.shape == (shape[0], 2, *shape[1:])
    assert c.dtype == x.real.dtype
    torch.testing.assert_close(c[:, 0], x.real)
    torch.testing.assert_close(c[:, 1], x.imag)
    torch.testing.assert_close(channels_to_complex(c), x)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_last_dim_layout_and_round_trip(dtype):
    x = torch.randn(2, 5, 4, dtype=dtype)
    r = complex_to_last_dim(x)
    assert r.shape == (2, 5, 4, 2)
    torch.testing.assert_close(r[..., 0], x.real)
    torch.testing.assert_close(r[..., 1], x.imag)
    torch.testing.assert_close(last_dim_to_complex(r), x)


def test_last_dim_accepts_non_contiguous_input():
    r = torch.randn(2, 4, 5, 3).transpose(1, 2)[..., :2]  # strided view
    torch.testing.assert_close(last_dim_to_complex(r), torch.complex(r[..., 0], r[..., 1]))


def test_conjugated_views_are_resolved():
    x = torch.randn(2, 3, dtype=torch.complex64).conj()
    torch.testing.assert_close(complex_to_channels(x)[:, 1], x.imag)
    torch.testing.assert_close(complex_to_last_dim(x)[..., 1], x.imag)


def test_converters_are_differentiable():
    x = torch.randn(2, 3, 4, dtype=torch.complex128, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: channels_to_complex(complex_to_channels(t) * 2), (x,))
    assert torch.autograd.gradcheck(
        lambda t: last_dim_to_complex(complex_to_last_dim(t) ** 2), (x,)
    )


def test_complex_to_channels_rejects_real():
    with pytest.raises(
        TypeError, match=r"complex tensor of shape \(B, \*image_shape\), got torch\.float32"
    ):
        complex_to_channels(torch.zeros(2, 4, 4))


def test_channels_to_complex_rejects_wrong_channel_count():
    with pytest.raises(ValueError, match=r"got shape \(2, 3, 4, 4\): a network predicting complex"):
        channels_to_complex(torch.zeros(2, 3, 4, 4))


def test_channels_to_complex_rejects_complex():
    with pytest.raises(
        TypeError,
        match=r"real floating tensor of shape \(B, 2, \*image_shape\), got torch\.complex64",
    ):
        channels_to_complex(torch.zeros(2, 2, 4, dtype=torch.complex64))


def test_last_dim_to_complex_rejects_wrong_last_dim():
    with pytest.raises(ValueError, match=r"last dimension of size 2, got shape \(4, 3\)"):
        last_dim_to_complex(torch.zeros(4, 3))


def test_complex_to_last_dim_rejects_real():
    with pytest.raises(
        TypeError, match=r"complex_to_last_dim expects a complex tensor, got torch\.float64"
    ):
        complex_to_last_dim(torch.zeros(4, 2, dtype=torch.float64))


def test_converters_reject_non_tensors():
    with pytest.raises(TypeError, match=r"channels_to_complex expects a torch.Tensor, got list"):
        channels_to_complex([[1.0, 2.0]])  # type: ignore[arg-type]
