"""Unrolled physics-based networks (MoDL, PGD, RIM, i-RIM, LUSER, DEQ) trainable with memory-saving strategies.

Every model is called as ``x_hat = model(y, physics, x0=None)`` with a physops operator, and
``model.set_strategy(...)`` (or ``unrolled.train(..., strategy=...)``) chooses how it is
differentiated: ``"backprop"``, ``"checkpoint"``, ``"reversible"`` (MEL), ``"greedy"`` (GLEAM)
or ``"implicit"`` (LUSER, DEQ).
"""

from importlib.metadata import PackageNotFoundError, version

from ._base import InvertibleStage, Stage, StageContext, UnrolledModel
from ._batch import Batch
from ._layers import CGStep, GradientStep
from ._metrics import get_loss, nrmse, psnr, ssim, ssim_torch
from ._modl import MoDL, UnrolledPGD, lu_dncnn
from ._nets import ConvGRUCell, DnCNN, ImageAdapter, LUSERProx, ResBlockProx, ResidualCNN
from ._priors import INVERTIBLE_PRIORS, PRIORS, build_prior
from ._strategy import STRATEGIES, Strategy, as_strategy

try:
    __version__ = version("memroll-unrolled")
except PackageNotFoundError:  # running from a source tree via PYTHONPATH (the GPU lane)
    __version__ = "0+unknown"

__all__ = [
    "INVERTIBLE_PRIORS",
    "Batch",
    "PRIORS",
    "STRATEGIES",
    "CGStep",
    "ConvGRUCell",
    "DnCNN",
    "GradientStep",
    "ImageAdapter",
    "InvertibleStage",
    "LUSERProx",
    "MoDL",
    "ResBlockProx",
    "ResidualCNN",
    "Stage",
    "StageContext",
    "Strategy",
    "UnrolledModel",
    "UnrolledPGD",
    "__version__",
    "as_strategy",
    "build_prior",
    "get_loss",
    "lu_dncnn",
    "nrmse",
    "psnr",
    "ssim",
    "ssim_torch",
]

# --- issue 7: the recurrent inference machine and its invertible version (i-RIM) ---------------
from ._irim import IRIM, fanned_downsampling
from ._rim import RIM

__all__ += ["IRIM", "RIM", "fanned_downsampling"]

# --- issue 7: data tasks, the training loop and evaluation --------------------------------------
# (noqa: E402 because an `__all__ +=` above counts as code; `__all__ = [*__all__, ...]` does not)
from ._evaluate import (  # noqa: E402
    METRICS,
    MetricsTable,
    evaluate,
    load_model,
    psnr_per_stage,
    save_model,
)
from ._options import SCHEDULERS, TrainOptions, batch_indices  # noqa: E402
from ._run import TrainResult  # noqa: E402
from ._tasks import TASKS, TaskDataset, TaskSpec, get_task, make_dataset, register_task  # noqa: E402
from ._train import train  # noqa: E402

__all__ = [
    *__all__,
    "METRICS",
    "SCHEDULERS",
    "TASKS",
    "MetricsTable",
    "TaskDataset",
    "TaskSpec",
    "TrainOptions",
    "TrainResult",
    "batch_indices",
    "evaluate",
    "get_task",
    "load_model",
    "make_dataset",
    "psnr_per_stage",
    "register_task",
    "save_model",
    "train",
]

# --- issue 7: LUSER and DEQ4IP (equilibrium models) -----------------------------------------------
from ._deq import DEQ, DEQStage  # noqa: E402
from ._equilibrium import EQUILIBRIUM_MODES, EquilibriumSolver  # noqa: E402
from ._luser import LUSER, LUSERStage  # noqa: E402
from ._nets import SpectralNorm, spectral_norm  # noqa: E402

__all__ = [
    *__all__,
    "DEQ",
    "EQUILIBRIUM_MODES",
    "LUSER",
    "DEQStage",
    "EquilibriumSolver",
    "LUSERStage",
    "SpectralNorm",
    "spectral_norm",
]

# --- issue 7: Fourier ptychography with a learned LED design (MEL) and the CS baselines (GLEAM) ---
from ._cs import CS_EXTRA, CompressedSensing, cs_reconstruct, cs_reconstruct_cine  # noqa: E402
from ._fpm import (  # noqa: E402
    DARKFIELD_FLOOR,
    FPMGradientStep,
    FPMNet,
    PtychographyDataset,
    design_scale,
    gradient_lipschitz,
    ptychography,
)

__all__ = [
    *__all__,
    "CS_EXTRA",
    "DARKFIELD_FLOOR",
    "CompressedSensing",
    "FPMGradientStep",
    "FPMNet",
    "PtychographyDataset",
    "cs_reconstruct",
    "cs_reconstruct_cine",
    "design_scale",
    "gradient_lipschitz",
    "ptychography",
]
