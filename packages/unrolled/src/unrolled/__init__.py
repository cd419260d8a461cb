"""Unrolled physics-based networks (MoDL, PGD, RIM, i-RIM, LUSER, DEQ, FPM) with memory-saving
training strategies.

Every model is called as ``x_hat = model(y, physics, x0=None)`` with a physops operator, and
``model.set_strategy(...)`` (or ``unrolled.train(..., strategy=...)``) chooses how it is
differentiated: ``"backprop"``, ``"checkpoint"``, ``"reversible"`` (MEL), ``"greedy"`` (GLEAM)
or ``"implicit"`` (LUSER, DEQ).
"""

# _tasks first: _fpm subclasses its TaskDataset and _tasks registers _fpm's task at its end
from . import _tasks  # noqa: F401
from . import training as training
from ._base import InvertibleStage, Stage, StageContext, UnrolledModel
from ._batch import Batch
from ._cs import CS_EXTRA, CompressedSensing, cs_reconstruct, cs_reconstruct_cine
from ._deq import DEQ, DEQStage
from ._equilibrium import EQUILIBRIUM_MODES, EquilibriumSolver
from ._evaluate import (
    METRICS,
    MetricsTable,
    evaluate,
    load_model,
    psnr_per_stage,
    save_model,
)
from ._fpm import (
    DARKFIELD_FLOOR,
    FPMGradientStep,
    FPMNet,
    PtychographyDataset,
    design_scale,
    gradient_lipschitz,
    ptychography,
)
from ._irim import IRIM, fanned_downsampling
from ._layers import CGStep, GradientStep
from ._luser import LUSER, LUSERStage
from ._metrics import get_loss, nrmse, psnr, ssim, ssim_torch
from ._modl import MoDL, UnrolledPGD, lu_dncnn
from ._nets import (
    ConvGRUCell,
    DnCNN,
    ImageAdapter,
    LUSERProx,
    ResBlockProx,
    ResidualCNN,
    SpectralNorm,
    count_parameters,
    spectral_norm,
)
from ._options import SCHEDULERS, TrainOptions, batch_indices
from ._priors import INVERTIBLE_PRIORS, PRIORS, build_prior
from ._rim import RIM
from ._run import TrainResult
from ._strategy import STRATEGIES, Strategy, StrategyName, as_strategy
from ._tasks import TASKS, TaskDataset, TaskSpec, get_task, make_dataset, register_task
from ._train import train

# the one place the version is written: hatchling reads it for the wheel (pyproject's
# [tool.hatch.version]), and a source tree on PYTHONPATH (the GPU lane) reports it too
__version__ = "0.2.0"

__all__ = [
    "CS_EXTRA",
    "DARKFIELD_FLOOR",
    "DEQ",
    "EQUILIBRIUM_MODES",
    "INVERTIBLE_PRIORS",
    "IRIM",
    "LUSER",
    "METRICS",
    "PRIORS",
    "RIM",
    "SCHEDULERS",
    "STRATEGIES",
    "TASKS",
    "Batch",
    "CGStep",
    "CompressedSensing",
    "ConvGRUCell",
    "DEQStage",
    "DnCNN",
    "EquilibriumSolver",
    "FPMGradientStep",
    "FPMNet",
    "GradientStep",
    "ImageAdapter",
    "InvertibleStage",
    "LUSERProx",
    "LUSERStage",
    "MetricsTable",
    "MoDL",
    "PtychographyDataset",
    "ResBlockProx",
    "ResidualCNN",
    "SpectralNorm",
    "Stage",
    "StageContext",
    "Strategy",
    "StrategyName",
    "TaskDataset",
    "TaskSpec",
    "TrainOptions",
    "TrainResult",
    "UnrolledModel",
    "UnrolledPGD",
    "__version__",
    "as_strategy",
    "batch_indices",
    "build_prior",
    "count_parameters",
    "cs_reconstruct",
    "cs_reconstruct_cine",
    "design_scale",
    "evaluate",
    "fanned_downsampling",
    "get_loss",
    "get_task",
    "gradient_lipschitz",
    "load_model",
    "lu_dncnn",
    "make_dataset",
    "nrmse",
    "psnr",
    "psnr_per_stage",
    "ptychography",
    "register_task",
    "save_model",
    "spectral_norm",
    "ssim",
    "ssim_torch",
    "train",
]
