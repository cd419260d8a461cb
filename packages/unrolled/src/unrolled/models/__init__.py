"""The papers' unrolled models, all called as ``x_hat = model(y, physics, x0=None)``.

=============================  =================================================================
model                          what it unrolls (paper)
=============================  =================================================================
:class:`MoDL`                  a learned regulariser and CG data consistency (MoDL; GLEAM, MEL)
:class:`UnrolledPGD`,          proximal gradient descent with a learned prox (GLEAM, MEL);
:func:`lu_dncnn`               LUSER's LU-DnCNN baseline
:class:`RIM`, :class:`IRIM`    the recurrent inference machine and its invertible form (i-RIM)
:class:`LUSER`, :class:`DEQ`   shallow equilibrium regularisers; the whole iteration as one
                               equilibrium (DEQ4IP); :class:`EquilibriumSolver` sets their solves;
                               :func:`pretrain_denoiser` (DEQ4IP's first stage)
:class:`FPMNet`                gradient descent on Fourier ptychography with a learned LED
                               design (MEL Sec. 5.1); :class:`FPMGradientStep`,
                               :func:`design_scale`, :func:`gradient_lipschitz`
:class:`CompressedSensing`     the l1-wavelet (and cine TV) baselines through sigpy
                               (:func:`cs_reconstruct`, :func:`cs_reconstruct_cine`)
=============================  =================================================================
"""

from ._cs import CS_EXTRA, CompressedSensing, cs_reconstruct, cs_reconstruct_cine
from ._deq import DEQ, DEQStage
from ._equilibrium import EQUILIBRIUM_MODES, EquilibriumSolver, EquilibriumStage
from ._equilibrium_model import INITS, EquilibriumModel
from ._fpm import FPMNet
from ._fpm_step import DARKFIELD_FLOOR, FPMGradientStep, design_scale, gradient_lipschitz
from ._irim import IRIM, fanned_downsampling
from ._luser import LUSER, LUSERStage
from ._modl import MoDL, UnrolledPGD, lu_dncnn
from ._pretrain import pretrain_denoiser
from ._rim import RIM

__all__ = [
    "CS_EXTRA",
    "DARKFIELD_FLOOR",
    "DEQ",
    "EQUILIBRIUM_MODES",
    "INITS",
    "IRIM",
    "LUSER",
    "RIM",
    "CompressedSensing",
    "DEQStage",
    "EquilibriumModel",
    "EquilibriumSolver",
    "EquilibriumStage",
    "FPMGradientStep",
    "FPMNet",
    "LUSERStage",
    "MoDL",
    "UnrolledPGD",
    "cs_reconstruct",
    "cs_reconstruct_cine",
    "design_scale",
    "fanned_downsampling",
    "gradient_lipschitz",
    "lu_dncnn",
    "pretrain_denoiser",
]
