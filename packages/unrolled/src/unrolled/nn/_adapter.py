"""Complex images as real network channels, and the convolutions of either dimension."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._validate import one_of, positive_int

__all__ = ["ImageAdapter", "check_dims", "conv_nd"]


def conv_nd(dims: int, *args: object, **kwargs: object) -> nn.Module:
    """``nn.Conv2d`` for ``dims == 2``, ``nn.Conv3d`` for ``dims == 3``."""
    if check_dims(dims) == 3:
        return nn.Conv3d(*args, **kwargs)  # type: ignore[arg-type]
    return nn.Conv2d(*args, **kwargs)  # type: ignore[arg-type]


def check_dims(dims: int) -> int:
    """``dims`` if it is 2 or 3 (2D images, or 3D / 2D+time volumes)."""
    return one_of("dims", dims, (2, 3), " (2D images, or 3D / 2D+time volumes)")


class ImageAdapter:
    """Converts images of the physics to the real channels networks see, and back.

    ==========================  =========================  ==============================
    image (physics side)        network side               when
    ==========================  =========================  ==============================
    complex ``(B, *spatial)``   real ``(B, 2, *spatial)``  MRI, ptychography
    real ``(B, *spatial)``      real ``(B, 1, *spatial)``  CT, grey-scale deblurring
    real ``(B, C, *spatial)``   real ``(B, C, *spatial)``  colour deblurring (``C`` given)
    ==========================  =========================  ==============================

    Parameters
    ----------
    complex:
        Whether the physics' images are complex.
    dims:
        Number of spatial dimensions (2, or 3 for volumes and 2D+time).
    color_channels:
        For real images with a channel axis after the batch (RGB deblurring), their number;
        ``None`` for images without one.
    """

    def __init__(self, complex: bool = True, dims: int = 2, color_channels: int | None = None):
        self.complex = bool(complex)
        self.dims = check_dims(dims)
        if complex and color_channels is not None:
            raise ValueError(
                "color_channels is for real multi-channel images (colour deblurring); complex "
                f"images become 2 channels (real, imaginary) by themselves, got color_channels="
                f"{color_channels!r} with complex=True"
            )
        self.color_channels = positive_int("color_channels", color_channels, optional=True)

    @property
    def channels(self) -> int:
        """Number of real channels the networks see."""
        if self.complex:
            return 2
        return 1 if self.color_channels is None else self.color_channels

    @property
    def image_ndim(self) -> int:
        """Number of non-batch dimensions of a physics-side image."""
        return self.dims + (1 if self.color_channels is not None else 0)

    def check(self, x: Tensor, name: str = "x") -> None:
        """Raise a clear error when ``x`` is not an image this adapter converts."""
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if self.complex and not x.is_complex():
            raise TypeError(
                f"{name} must be a complex tensor (this model reconstructs complex images), got "
                f"dtype {x.dtype}: pass complex64 images, e.g. physics.adjoint(y)"
            )
        if not self.complex and x.is_complex():
            raise TypeError(
                f"{name} must be a real tensor (this model reconstructs real images), got dtype "
                f"{x.dtype}"
            )
        expected = 1 + self.image_ndim
        if x.ndim != expected:
            layout = "(batch, " + ("C, " if self.color_channels is not None else "")
            layout += ", ".join(("D", "H", "W")[-self.dims :]) + ")"
            raise ValueError(
                f"{name} must have shape {layout} ({expected} dimensions), got shape "
                f"{tuple(x.shape)}"
            )

    def to_net(self, x: Tensor) -> Tensor:
        """Physics-side image -> real channels ``(B, channels, *spatial)``."""
        if self.complex:
            return torch.view_as_real(x).movedim(-1, 1)
        if self.color_channels is None:
            return x.unsqueeze(1)
        return x

    def from_net(self, h: Tensor) -> Tensor:
        """Real channels ``(B, channels, *spatial)`` -> physics-side image.

        Half-precision channels (a network's output under ``torch.autocast``) come back as
        float32 / complex64: the physics runs in full precision.
        """
        if h.dtype in (torch.float16, torch.bfloat16):
            h = h.float()
        if self.complex:
            # a new tensor, not view_as_complex of a copy (the same one copy): torch.compile
            # (2.13) fails on a complex view of a real tensor that enters a graph as an input
            return torch.complex(h[:, 0], h[:, 1])
        if self.color_channels is None:
            return h.squeeze(1)
        return h
