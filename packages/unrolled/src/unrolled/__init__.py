"""Unrolled physics-based networks with memory-saving training strategies.

MoDL, unrolled PGD, RIM, i-RIM, LUSER, DEQ and an FPM network, their data tasks and their
training loop.

Every model is called as ``x_hat = model(y, physics, x0=None)`` with a physops operator, and
``model.set_strategy(...)`` (or ``unrolled.train(..., strategy=...)``) chooses how it is
differentiated: ``"backprop"``, ``"checkpoint"``, ``"reversible"`` (MEL), ``"greedy"`` (GLEAM)
or ``"implicit"`` (LUSER, DEQ).

The library is four public subpackages of private modules, each name below re-exported here:
:mod:`unrolled.nn` (building blocks), :mod:`unrolled.models` (the papers' models),
:mod:`unrolled.tasks` (datasets by name) and :mod:`unrolled.training` (the training loop,
evaluation, model files, memory probes). The application (the ``memroll`` command, configs,
demo, benchmark, figures) is the separate distribution ``memroll``.
"""

from . import models as models
from . import nn as nn
from . import tasks as tasks
from . import training as training
from ._base import InvertibleStage, PlainStage, Stage, StageContext, UnrolledModel
from ._batch import Batch
from ._compile import compile_networks, network_names
from ._strategy import STRATEGIES, Strategy, StrategyName, as_strategy
from .models import (
    CS_EXTRA,
    DARKFIELD_FLOOR,
    DEQ,
    EQUILIBRIUM_MODES,
    IRIM,
    LUSER,
    RIM,
    CompressedSensing,
    DEQStage,
    EquilibriumSolver,
    FPMGradientStep,
    FPMNet,
    LUSERStage,
    MoDL,
    UnrolledPGD,
    cs_reconstruct,
    cs_reconstruct_cine,
    design_scale,
    fanned_downsampling,
    gradient_lipschitz,
    lu_dncnn,
    pretrain_denoiser,
)
from .nn import (
    INVERTIBLE_PRIORS,
    PRIORS,
    CGStep,
    ConvGRUCell,
    ConvSpectralNorm,
    DnCNN,
    GradientStep,
    ImageAdapter,
    LUSERProx,
    ResBlockProx,
    ResidualCNN,
    SpectralNorm,
    build_prior,
    count_parameters,
    spectral_norm,
)
from .tasks import (
    TASKS,
    PtychographyDataset,
    TaskDataset,
    TaskSpec,
    get_task,
    make_dataset,
    prepare_coil_maps,
    ptychography,
    register_task,
)
from .training import (
    METRICS,
    SCHEDULERS,
    MaskedNMSE,
    MetricsTable,
    RunFileError,
    TrainOptions,
    TrainResult,
    batch_indices,
    evaluate,
    fastmri_center_crop,
    fastmri_metrics,
    get_loss,
    load_model,
    load_run_weights,
    nrmse,
    psnr,
    psnr_per_stage,
    save_model,
    ssim,
    ssim_torch,
    train,
)

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
    "ConvSpectralNorm",
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
    "MaskedNMSE",
    "MetricsTable",
    "MoDL",
    "PlainStage",
    "PtychographyDataset",
    "ResBlockProx",
    "ResidualCNN",
    "RunFileError",
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
    "compile_networks",
    "count_parameters",
    "cs_reconstruct",
    "cs_reconstruct_cine",
    "design_scale",
    "evaluate",
    "fanned_downsampling",
    "fastmri_center_crop",
    "fastmri_metrics",
    "get_loss",
    "get_task",
    "gradient_lipschitz",
    "load_model",
    "load_run_weights",
    "lu_dncnn",
    "make_dataset",
    "network_names",
    "nrmse",
    "prepare_coil_maps",
    "pretrain_denoiser",
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
