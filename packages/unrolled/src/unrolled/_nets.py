"""Convolutional building blocks of the papers' models.

Every network here maps real channels to real channels, ``(batch, C, *spatial)`` with
``spatial`` 2D ``(H, W)`` or 3D ``(D, H, W)`` (3D also serves 2D+time, with time as depth). The
complex images of the physics are converted at the model's edges (:class:`ImageAdapter`).

==================  ==============================================================  =========
network             architecture                                                     paper
==================  ==============================================================  =========
``ResidualCNN``     ``x + conv(ReLU(conv(... ReLU(conv(x)))))``, 5 convs, no norm   GLEAM/MoDL
``ResBlockProx``    conv in, 2 residual blocks of (ReLU, conv, ReLU, conv), conv out  GLEAM/PGD
``DnCNN``           17 convs of 64 features, BatchNorm + ReLU, residual output      LUSER base
``LUSERProx``       injection / data / mix layers, SN + GroupNorm + LeakyReLU       LUSER T.1
``ConvGRUCell``     convolutional GRU cell                                          RIM
==================  ==============================================================  =========
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrizations

__all__ = [
    "ConvGRUCell",
    "DnCNN",
    "ImageAdapter",
    "LUSERProx",
    "ResBlockProx",
    "ResidualCNN",
    "conv_nd",
]


def conv_nd(dims: int, *args: object, **kwargs: object) -> nn.Module:
    """``nn.Conv2d`` for ``dims == 2``, ``nn.Conv3d`` for ``dims == 3``."""
    if dims == 2:
        return nn.Conv2d(*args, **kwargs)  # type: ignore[arg-type]
    if dims == 3:
        return nn.Conv3d(*args, **kwargs)  # type: ignore[arg-type]
    raise ValueError(f"dims must be 2 or 3 (2D images, or 3D / 2D+time volumes), got {dims!r}")


def _check_dims(dims: int) -> int:
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3 (2D images, or 3D / 2D+time volumes), got {dims!r}")
    return dims


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
        self.dims = _check_dims(dims)
        if complex and color_channels is not None:
            raise ValueError(
                "color_channels is for real multi-channel images (colour deblurring); complex "
                f"images become 2 channels (real, imaginary) by themselves, got color_channels="
                f"{color_channels!r} with complex=True"
            )
        if color_channels is not None and color_channels < 1:
            raise ValueError(f"color_channels must be a positive integer, got {color_channels!r}")
        self.color_channels = color_channels

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
        """Real channels ``(B, channels, *spatial)`` -> physics-side image."""
        if self.complex:
            return torch.view_as_complex(h.movedim(1, -1).contiguous())
        if self.color_channels is None:
            return h.squeeze(1)
        return h


class ResidualCNN(nn.Module):
    """MoDL's regulariser as GLEAM trains it: ``x + f(x)``, ``f`` = ``layers`` convolutions with
    ReLU between them, no normalisation (GLEAM Sec. V-C2, after Aggarwal et al.).

    Parameters
    ----------
    channels:
        Input and output channels (2 for complex images).
    features:
        Hidden channels (GLEAM 2D MoDL: 70).
    layers:
        Number of convolutions (5).
    dims:
        2 or 3.
    """

    def __init__(self, channels: int, features: int = 64, layers: int = 5, dims: int = 2):
        super().__init__()
        _check_dims(dims)
        if layers < 2:
            raise ValueError(f"layers must be at least 2 (input and output convolution), got {layers}")
        mods: list[nn.Module] = [conv_nd(dims, channels, features, 3, padding=1)]
        for _ in range(layers - 2):
            mods += [nn.ReLU(), conv_nd(dims, features, features, 3, padding=1)]
        mods += [nn.ReLU(), conv_nd(dims, features, channels, 3, padding=1)]
        self.body = nn.Sequential(*mods)

    def residual(self, x: Tensor) -> Tensor:
        """``f(x)`` alone (the part an invertible residual layer needs)."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class _ResBlock(nn.Module):
    def __init__(self, features: int, dims: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(),
            conv_nd(dims, features, features, 3, padding=1),
            nn.ReLU(),
            conv_nd(dims, features, features, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResBlockProx(nn.Module):
    """The learned proximal operator of GLEAM's unrolled PGD (after Sandino et al.): an input
    convolution, ``blocks`` residual blocks of (ReLU, conv, ReLU, conv) without normalisation, an
    output convolution, and a skip from input to output.

    Parameters
    ----------
    channels, features, blocks, dims:
        Image channels, hidden features (GLEAM: 100), residual blocks (2), 2 or 3.
    """

    def __init__(self, channels: int, features: int = 64, blocks: int = 2, dims: int = 2):
        super().__init__()
        _check_dims(dims)
        self.inp = conv_nd(dims, channels, features, 3, padding=1)
        self.blocks = nn.Sequential(*(_ResBlock(features, dims) for _ in range(blocks)))
        self.out = conv_nd(dims, features, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.out(self.blocks(self.inp(x)))


class DnCNN(nn.Module):
    """DnCNN (Zhang et al. 2017) as the LUSER paper's LU-DnCNN and DEQ4IP baselines use it:
    ``depth`` convolutions of ``features`` channels, BatchNorm and ReLU between them, predicting
    the noise (output ``x - f(x)``).

    Parameters
    ----------
    channels, features, depth, dims:
        Image channels, hidden features (64), convolutions (17), 2 or 3.
    batchnorm:
        BatchNorm after every hidden convolution (as in the paper). DEQ models are usually
        trained without it, since a fixed point under batch statistics depends on the batch.
    spectral_norm:
        Wrap every convolution in spectral normalisation (DEQ4IP's stabilisation).
    """

    def __init__(
        self,
        channels: int,
        features: int = 64,
        depth: int = 17,
        dims: int = 2,
        batchnorm: bool = True,
        spectral_norm: bool = False,
    ):
        super().__init__()
        _check_dims(dims)
        if depth < 2:
            raise ValueError(f"depth must be at least 2, got {depth}")

        def conv(cin: int, cout: int, bias: bool) -> nn.Module:
            layer = conv_nd(dims, cin, cout, 3, padding=1, bias=bias)
            return parametrizations.spectral_norm(layer) if spectral_norm else layer

        norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d
        mods: list[nn.Module] = [conv(channels, features, True), nn.ReLU()]
        for _ in range(depth - 2):
            mods.append(conv(features, features, not batchnorm))
            if batchnorm:
                mods.append(norm(features))
            mods.append(nn.ReLU())
        mods.append(conv(features, channels, False))
        self.body = nn.Sequential(*mods)

    def forward(self, x: Tensor) -> Tensor:
        return x - self.body(x)


class LUSERProx(nn.Module):
    """The shallow equilibrium proximal block of LUSER (Table 1), as three parts.

    ``inject(d)``: 2 spectrally normalised 3x3 convolutions with LeakyReLU, computed once per
    stage; ``mix(r, u)``: the data layer (2 SN convolutions with GroupNorm and LeakyReLU) on the
    residual ``r``, concatenated with the injection ``u``, then the mix layer (2 SN convolutions
    with GroupNorm and LeakyReLU and a final SN convolution back to the image channels). The
    stage solves ``r* = mix(r*, inject(d))`` from ``r = 0`` and returns ``d + r*`` (Eq. 7).

    Parameters
    ----------
    channels:
        Image channels (2 for complex images, 1 for CT, 3 for RGB).
    features:
        Channels of the injection and data layers (32; the mix layer has twice as many).
    groups:
        GroupNorm groups.
    dims:
        2 or 3.
    """

    def __init__(self, channels: int, features: int = 32, groups: int = 8, dims: int = 2):
        super().__init__()
        _check_dims(dims)
        if features % groups or (2 * features) % groups:
            raise ValueError(f"features ({features}) must be divisible by groups ({groups})")

        def sn(cin: int, cout: int) -> nn.Module:
            return parametrizations.spectral_norm(conv_nd(dims, cin, cout, 3, padding=1))

        act = nn.LeakyReLU(0.1)
        self.injection = nn.Sequential(sn(channels, features), act, sn(features, features), act)
        self.data = nn.Sequential(
            sn(channels, features),
            nn.GroupNorm(groups, features),
            act,
            sn(features, features),
            nn.GroupNorm(groups, features),
            act,
        )
        self.mixing = nn.Sequential(
            sn(2 * features, 2 * features),
            nn.GroupNorm(groups, 2 * features),
            act,
            sn(2 * features, 2 * features),
            nn.GroupNorm(groups, 2 * features),
            act,
            sn(2 * features, channels),
        )

    def inject(self, d: Tensor) -> Tensor:
        """The input injection, computed once per stage."""
        return self.injection(d)

    def mix(self, r: Tensor, u: Tensor) -> Tensor:
        """One application of the equilibrium map ``r -> Mix(Data(r) ++ u)``."""
        return self.mixing(torch.cat([self.data(r), u], dim=1))


class ConvGRUCell(nn.Module):
    """A convolutional GRU cell: ``h' = (1 - z) * h + z * tanh(W x + U (r * h))``.

    Parameters
    ----------
    in_channels, hidden, dims:
        Input channels, hidden channels (RIM: 64), 2 or 3.
    """

    def __init__(self, in_channels: int, hidden: int, dims: int = 2):
        super().__init__()
        _check_dims(dims)
        self.hidden = hidden
        self.gates = conv_nd(dims, in_channels + hidden, 2 * hidden, 3, padding=1)
        self.candidate = conv_nd(dims, in_channels + hidden, hidden, 3, padding=1)

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        r, z = torch.sigmoid(self.gates(torch.cat([x, h], dim=1))).chunk(2, dim=1)
        c = torch.tanh(self.candidate(torch.cat([x, r * h], dim=1)))
        return (1 - z) * h + z * c
