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

The spectrally normalised layers use :func:`~unrolled.nn.spectral_norm` (:mod:`._spectral`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validate import finite_number, int_at_least, positive_int
from ._adapter import check_dims, conv_nd
from ._spectral import spectral_norm

__all__ = [
    "ConvGRUCell",
    "DnCNN",
    "EquilibriumBatchNorm",
    "LUSERProx",
    "ResBlockProx",
    "ResidualCNN",
]

_spectral_norm = spectral_norm  # DnCNN's argument of the same name shadows it


class ResidualCNN(nn.Module):
    """MoDL's regulariser as GLEAM trains it.

    ``x + f(x)``, ``f`` = ``layers`` convolutions with ReLU between them, no normalisation (GLEAM
    Sec. V-C2, after Aggarwal et al.).

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
        check_dims(dims)
        positive_int("features", features)
        int_at_least("layers", layers, 2, " (input and output convolution)")
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
    """The learned proximal operator of GLEAM's unrolled PGD (after Sandino et al.).

    An input convolution, ``blocks`` residual blocks of (ReLU, conv, ReLU, conv) without
    normalisation, an output convolution, and a skip from input to output.

    Parameters
    ----------
    channels, features, blocks, dims:
        Image channels, hidden features (GLEAM: 100), residual blocks (2), 2 or 3.
    """

    def __init__(self, channels: int, features: int = 64, blocks: int = 2, dims: int = 2):
        super().__init__()
        check_dims(dims)
        self.inp = conv_nd(dims, channels, features, 3, padding=1)
        self.blocks = nn.Sequential(*(_ResBlock(features, dims) for _ in range(blocks)))
        self.out = conv_nd(dims, features, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.out(self.blocks(self.inp(x)))


class EquilibriumBatchNorm(nn.Module):
    """BatchNorm that normalises by its running statistics in training mode too.

    The policy of BatchNorm inside a fixed-point map (DEQ4IP's DnCNN): with batch statistics the
    map of one sample would depend on the other samples of the batch and change at every solver
    iteration (and every evaluation would move the running statistics), so the equilibrium would
    not be a fixed function of the input, and an implicit backward pass would differentiate a map
    other than the one solved. Here the map always uses the running statistics (a fixed
    per-channel affine map between optimizer steps, learned through ``weight`` and ``bias``), and
    the statistics are collected only inside :meth:`collecting`, where the layer is a plain
    training-mode BatchNorm (batch statistics, running statistics updated): the DEQ runs the prox
    so once at its fixed point per training forward, without gradients, and
    :func:`~unrolled.pretrain_denoiser` trains the prox so, as a feed-forward denoiser. In the
    map its Lipschitz constant is ``max |weight| / sqrt(running_var + eps)`` (1 at
    initialisation, up to ``eps``).

    Parameters
    ----------
    features, dims:
        Channels and 2 or 3 (``nn.BatchNorm2d`` / ``nn.BatchNorm3d`` hold the parameters and
        statistics).
    """

    def __init__(self, features: int, dims: int = 2):
        super().__init__()
        check_dims(dims)
        self.norm = nn.BatchNorm2d(features) if dims == 2 else nn.BatchNorm3d(features)
        self.collect = False

    def forward(self, x: Tensor) -> Tensor:
        norm = self.norm
        if self.collect and self.training:
            # plain training-mode BatchNorm: batch statistics, running statistics updated
            out: Tensor = norm(x)
            return out
        return F.batch_norm(
            x, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps
        )

    @staticmethod
    @contextlib.contextmanager
    def collecting(module: nn.Module) -> Iterator[None]:
        """Within the block, every ``EquilibriumBatchNorm`` of ``module`` updates its statistics."""
        layers = [m for m in module.modules() if isinstance(m, EquilibriumBatchNorm)]
        for m in layers:
            m.collect = True
        try:
            yield
        finally:
            for m in layers:
                m.collect = False


class DnCNN(nn.Module):
    """DnCNN (Zhang et al. 2017) as the LUSER paper's LU-DnCNN and DEQ4IP baselines use it.

    ``depth`` convolutions of ``features`` channels, BatchNorm and ReLU between them, predicting the
    noise (output ``x - f(x)``).

    With BatchNorm no convolution has a bias (the DnCNN of Ryu et al. 2019 that LUSER adopts):
    1 + 15 + 1 convolutions and 15 BatchNorms give 556,032 parameters for one channel, LUSER
    Table 3's LU-DnCNN count less its one step size. Without BatchNorm every convolution but the
    last has a bias.

    Parameters
    ----------
    channels, features, depth, dims:
        Image channels, hidden features (64), convolutions (17), 2 or 3.
    batchnorm:
        BatchNorm after every hidden convolution (as in the paper). Inside a fixed-point map
        (DEQ) use ``running_stats``: batch statistics would couple the samples of a batch.
    spectral_norm:
        Wrap every convolution in spectral normalisation by its operator norm
        (:func:`spectral_norm`; DEQ4IP's and LUSER's stabilisation).
    running_stats:
        With ``batchnorm``: ``EquilibriumBatchNorm`` (running statistics in training mode
        too) in place of ``nn.BatchNorm``, for a DnCNN inside a fixed-point map.
    """

    def __init__(
        self,
        channels: int,
        features: int = 64,
        depth: int = 17,
        dims: int = 2,
        batchnorm: bool = True,
        spectral_norm: bool = False,
        running_stats: bool = False,
    ):
        super().__init__()
        check_dims(dims)
        positive_int("features", features)
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 2:
            raise ValueError(f"depth must be at least 2, got {depth}")

        def conv(cin: int, cout: int, bias: bool) -> nn.Module:
            layer = conv_nd(dims, cin, cout, 3, padding=1, bias=bias)
            return _spectral_norm(layer) if spectral_norm else layer

        def norm(features: int) -> nn.Module:
            if running_stats:
                return EquilibriumBatchNorm(features, dims)
            return nn.BatchNorm2d(features) if dims == 2 else nn.BatchNorm3d(features)

        mods: list[nn.Module] = [conv(channels, features, not batchnorm), nn.ReLU()]
        for _ in range(depth - 2):
            mods.append(conv(features, features, not batchnorm))
            if batchnorm:
                mods.append(norm(features))
            mods.append(nn.ReLU())
        last = conv_nd(dims, features, channels, 3, padding=1, bias=False)
        if not spectral_norm:
            # The output layer starts at zero, so the network starts as the identity (it predicts
            # no noise): an unrolled PGD of 8 shared 17-layer DnCNNs from torch's default
            # initialisation starts far from its input and diverged under Adam at lr 1e-3
            # (measured: LU-DnCNN on single-coil MRI, test PSNR -1 dB after 40 steps). A
            # spectrally normalised layer cannot start at zero (its norm would be 0).
            nn.init.zeros_(last.get_parameter("weight"))
        mods.append(_spectral_norm(last) if spectral_norm else last)
        self.body = nn.Sequential(*mods)
        if spectral_norm and batchnorm:
            # In place of the zero output layer: BatchNorm weights of 0.1, so that under batch
            # statistics (unit variance into a last layer of norm 1) the body starts near 0 too.
            # Measured, pretraining a DEQ's prox (8 features, depth 4, 150 Adam steps, noise
            # 0.05): denoising error 2.5e-3 -> 4.3e-3 from weights of 1 (the first steps' loss
            # 0.55), 2.5e-3 -> 7.6e-4 from 0.1.
            with torch.no_grad():
                for m in self.body.modules():
                    if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
                        m.weight.fill_(0.1)

    def forward(self, x: Tensor) -> Tensor:
        return x - self.body(x)


class LUSERProx(nn.Module):
    r"""The shallow equilibrium proximal block of LUSER (Table 1), as three parts.

    ==============  ============================================================================
    part            layers (every convolution 3x3, padding 1, spectrally normalised, with bias)
    ==============  ============================================================================
    ``injection``   conv(C -> F), LeakyReLU, conv(F -> F), LeakyReLU
    ``data``        conv(C -> F), GroupNorm, LeakyReLU, conv(F -> F), GroupNorm, LeakyReLU
    ``mixing``      conv(2F -> 2F), GroupNorm, LeakyReLU, conv(2F -> 2F), GroupNorm, LeakyReLU,
                    conv(2F -> C)
    ==============  ============================================================================

    ``inject(d)`` is computed once per stage; ``mix(r, u) = Mixing(Data(r) ++ u)`` is the
    equilibrium map. The stage solves :math:`r^* = \mathrm{mix}(r^*, \mathrm{inject}(d))` from
    :math:`r = 0` and returns :math:`d + \mathrm{mix}(r^*, u)` (Eq. 7). With C = 1 and F = 32
    the block has 93,953 parameters: LUSER Table 3's 93,954 for LUSER-SW on CT less its one step
    size (Table 1 prints ``C_in: 1`` for the data layer's second convolution, a misprint for
    ``C_in: 32``, as that count confirms).

    The paper gives neither the GroupNorm groups, the LeakyReLU slope nor an initialisation.
    GroupNorm makes ``Data`` invariant to the scale of ``r``, and at torch's default
    initialisation the map is not a contraction: for F = 32 and images of unit scale we measured
    spectral radii of :math:`\partial\,\mathrm{mix} / \partial r` at the solution of 1.2-2.1
    (C = 1, 2, 3), and Anderson did not converge in 60 iterations. ``data_gain`` initialises the
    affine weight of the data layer's last GroupNorm, which scales the data path against the
    injection inside the mix layer; the radius is roughly proportional to it. Random images of
    unit scale: 0.9-1.4 at 0.1, 0.5-1.0 at 0.05, 0.3-0.45 at 0.02. The injection grows with the
    image while the data path does not, so smaller images contract more slowly: on the package's
    real-anatomy tasks at 32 x 32 (image std about 0.15) the largest radius over the 8 blocks of
    a LUSER-DW was 1.02 / 1.03 / 1.16 (deblurring / single-coil MRI / CT) at 0.02 and
    0.77 / 0.51 / 0.73 at the default 0.01 (at most 16 Anderson iterations to a relative residual
    of 1e-4, 4-8 for most blocks). These radii were measured with 0.1's normalisation of the
    reshaped kernels; the convolutions are now divided by their operator norms (larger), and the
    LUSER tests' solves converge as before. Training changes the gain with the rest; the models'
    solver diagnostics report what the solves reached.

    Parameters
    ----------
    channels:
        Image channels C (2 for complex images, 1 for CT and grey images, 3 for RGB).
    features:
        Channels F of the injection and data layers (32; the mix layer has 2F).
    groups:
        GroupNorm groups (must divide F).
    dims:
        2 or 3.
    data_gain:
        Initial affine weight of the data layer's last GroupNorm (> 0; torch's default is 1).
    negative_slope:
        Of the LeakyReLUs.
    """

    def __init__(
        self,
        channels: int,
        features: int = 32,
        groups: int = 8,
        dims: int = 2,
        data_gain: float = 0.01,
        negative_slope: float = 0.1,
    ):
        super().__init__()
        check_dims(dims)
        positive_int("features", features)
        positive_int("groups", groups)
        if features % groups:
            raise ValueError(
                f"features ({features}) must be divisible by groups ({groups}): GroupNorm splits "
                "the channels into equal groups"
            )
        finite_number(
            "data_gain", data_gain, low=0, low_open=True, expected="a positive finite number"
        )

        def sn(cin: int, cout: int) -> nn.Module:
            return _spectral_norm(conv_nd(dims, cin, cout, 3, padding=1))

        act = nn.LeakyReLU(negative_slope)
        self.injection = nn.Sequential(sn(channels, features), act, sn(features, features), act)
        data_out = nn.GroupNorm(groups, features)
        with torch.no_grad():
            data_out.weight.fill_(float(data_gain))
        self.data = nn.Sequential(
            sn(channels, features),
            nn.GroupNorm(groups, features),
            act,
            sn(features, features),
            data_out,
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
        """Return the input injection, computed once per stage."""
        return self.injection(d)

    def mix(self, r: Tensor, u: Tensor) -> Tensor:
        """One application of the equilibrium map ``r -> Mixing(Data(r) ++ u)``."""
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
        check_dims(dims)
        self.hidden = hidden
        self.gates = conv_nd(dims, in_channels + hidden, 2 * hidden, 3, padding=1)
        self.candidate = conv_nd(dims, in_channels + hidden, hidden, 3, padding=1)

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        r, z = torch.sigmoid(self.gates(torch.cat([x, h], dim=1))).chunk(2, dim=1)
        c = torch.tanh(self.candidate(torch.cat([x, r * h], dim=1)))
        return (1 - z) * h + z * c
