"""Building blocks of the unrolled models: networks see real channels, the physics complex images.

==============================  ================================================================
name                            what it is
==============================  ================================================================
:class:`ImageAdapter`           complex (or real) images <-> real channels ``(B, C, *spatial)``
:class:`ResidualCNN`,           the papers' CNN blocks (MoDL's regulariser, GLEAM's PGD prox,
:class:`ResBlockProx`,          LU-DnCNN and DEQ4IP's DnCNN, LUSER's equilibrium block, the RIM's
:class:`DnCNN`,                 convolutional GRU)
:class:`LUSERProx`,
:class:`ConvGRUCell`
:class:`SpectralNorm`,          spectral normalisation, power iteration once per weight change
:func:`spectral_norm`
:func:`build_prior`,            the learned priors by name (:data:`INVERTIBLE_PRIORS` train with
:data:`PRIORS`                  ``"reversible"``)
:class:`GradientStep`,          the physics steps as invertible layers ``layer(state, y,
:class:`CGStep`,                physics)``, a non-invertible prior as a layer, and the step-size
:class:`PriorLayer`,            calibration by power iteration
:func:`calibrate_steps`
:func:`positive`,               the positive parametrisation of learned step sizes and weights
:func:`inverse_softplus`
:func:`count_parameters`        trainable parameters of a model (shared tensors once)
==============================  ================================================================
"""

from ._adapter import ImageAdapter, check_dims, conv_nd
from ._conv import (
    ConvGRUCell,
    DnCNN,
    EquilibriumBatchNorm,
    LUSERProx,
    ResBlockProx,
    ResidualCNN,
)
from ._layers import CGStep, GradientStep, PriorLayer, calibrate_steps
from ._params import count_parameters, inverse_softplus, positive
from ._priors import INVERTIBLE_PRIORS, PRIORS, build_prior
from ._spectral import ConvSpectralNorm, SpectralNorm, spectral_norm

__all__ = [
    "INVERTIBLE_PRIORS",
    "PRIORS",
    "CGStep",
    "ConvGRUCell",
    "ConvSpectralNorm",
    "DnCNN",
    "EquilibriumBatchNorm",
    "GradientStep",
    "ImageAdapter",
    "LUSERProx",
    "PriorLayer",
    "ResBlockProx",
    "ResidualCNN",
    "SpectralNorm",
    "build_prior",
    "calibrate_steps",
    "check_dims",
    "conv_nd",
    "count_parameters",
    "inverse_softplus",
    "positive",
    "spectral_norm",
]
