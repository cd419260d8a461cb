"""Learned priors (regularisers, proximal networks) by name.

==============  ===============================================================  ===========
name            network                                                          invertible
==============  ===============================================================  ===========
``resnet``      :class:`~unrolled.nn.ResidualCNN`: 5 convs + ReLU, skip         no
                (MoDL's regulariser)
``resblocks``   :class:`~unrolled.nn.ResBlockProx`: 2 residual blocks          no
                (GLEAM's unrolled PGD prox)
``dncnn``       :class:`~unrolled.nn.DnCNN`: 17 layers, BatchNorm (LU-DnCNN)   no
``coupling``    RevNet-style stack of ``revlayers.AdditiveCoupling`` layers,      yes (exact)
                each coupling function a small CNN, halves alternating (the
                "invertible residual CNN" GLEAM trains all its MoDL baselines with)
``iresnet``     ``revlayers.InvertibleResidual``: ``x + g(x)`` with                yes (fixed
                spectrally normalised ``g`` (5 convs), ``Lip(g) <= 0.9`` (MEL)    point)
==============  ===============================================================  ===========
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from revlayers import AdditiveCoupling, InvertibleModule, InvertibleResidual

from .._validate import positive_int, unknown_name
from ._adapter import conv_nd
from ._conv import DnCNN, ResBlockProx, ResidualCNN

__all__ = ["INVERTIBLE_PRIORS", "PRIORS", "build_prior"]

PRIORS = ("resnet", "resblocks", "dncnn", "coupling", "iresnet")
INVERTIBLE_PRIORS = ("coupling", "iresnet")


def _cnn(cin: int, cout: int, features: int, layers: int, dims: int) -> nn.Sequential:
    mods: list[nn.Module] = [conv_nd(dims, cin, features, 3, padding=1)]
    for _ in range(layers - 2):
        mods += [nn.ReLU(), conv_nd(dims, features, features, 3, padding=1)]
    mods += [nn.ReLU(), conv_nd(dims, features, cout, 3, padding=1)]
    return nn.Sequential(*mods)


def build_prior(
    name: str, channels: int, features: int = 64, layers: int = 5, dims: int = 2, couplings: int = 2
) -> nn.Module | list[InvertibleModule]:
    """Return a prior network, or for invertible priors the list of its invertible layers.

    Parameters
    ----------
    name:
        One of :data:`PRIORS`.
    channels:
        State channels (2 for complex images).
    features, layers:
        Hidden features and convolutions of the network (of each coupling function for
        ``coupling``).
    dims:
        2 or 3.
    couplings:
        ``coupling``: number of coupling layers (2 updates both halves once).
    """
    if name not in PRIORS:
        raise unknown_name("prior", name, PRIORS)
    positive_int("features", features)
    positive_int("layers", layers)
    if name == "resnet":
        return ResidualCNN(channels, features, layers, dims)
    if name == "resblocks":
        return ResBlockProx(channels, features, blocks=2, dims=dims)
    if name == "dncnn":
        return DnCNN(channels, features, depth=layers if layers > 5 else 17, dims=dims)
    if name == "coupling":
        if channels < 2:
            raise ValueError(
                f"prior 'coupling' splits the image channels in two, but the images have "
                f"{channels} channel: use prior='iresnet' for real single-channel images"
            )
        positive_int("couplings", couplings)
        first = channels // 2
        out: list[InvertibleModule] = []
        for k in range(couplings):
            update: Literal["second", "first"] = "second" if k % 2 == 0 else "first"
            cin, cout = (
                (first, channels - first) if update == "second" else (channels - first, first)
            )
            out.append(
                AdditiveCoupling(
                    _cnn(cin, cout, features, layers, dims),
                    split=first,
                    update=update,
                    pass_context=False,
                )
            )
        return out
    # iresnet
    return [
        InvertibleResidual(
            _cnn(channels, channels, features, layers, dims), lipschitz=0.9, pass_context=False
        )
    ]
