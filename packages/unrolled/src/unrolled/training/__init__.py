"""Training of unrolled models.

Options, engines, the loop, run folders, model files, evaluation, metrics and memory probes.

=================================  ==============================================================
name                               what it is
=================================  ==============================================================
:func:`train`                      the training loop with any memory strategy (set up, restore,
                                   fit, validate, save), exact resume from a run folder
:class:`TrainOptions`,             its options and the deterministic data order of a step
:func:`batch_indices`,
:class:`StepSampler`
:class:`TrainResult`,              its result; the run folder's files; RNG states
:class:`RunFolder`
:func:`make_engine`,               one optimizer step: one Adam for the model, or GLEAM's greedy
:class:`PlainEngine`,              modules through :class:`greedytrain.GreedyTrainer`
:class:`GreedyEngine`,
:func:`model_loss`
:func:`evaluate`,                  per-sample PSNR, SSIM, nRMSE and GLEAM's PSNR per stage
:class:`MetricsTable`,
:func:`psnr_per_stage`
:func:`psnr`, :func:`ssim`,        the metrics and the training losses by name
:func:`nrmse`, :func:`get_loss`
:func:`fastmri_metrics`,           fastMRI's NMSE, PSNR and SSIM of one volume (the target
:func:`fastmri_center_crop`        volume's maximum as data range) and its centre crop
:func:`save_model`,                model files with their non-persistent buffers
:func:`load_model`,
:func:`extra_buffers`,
:func:`load_buffers`
:class:`MemoryProbe`,              peak memory (CPU ``VmHWM``, CUDA max allocated) and step times
:func:`timed`, :func:`median`
:func:`atomic_path`,               atomic file writing (temporary file, fsync, ``os.replace``)
:func:`atomic_write_text`
=================================  ==============================================================
"""

from ._engines import (
    Engine,
    GreedyEngine,
    PlainEngine,
    aux_loss_weight,
    make_engine,
    model_loss,
    module_wrapper,
)
from ._evaluate import (
    METRICS,
    MetricsTable,
    check_dataset,
    evaluate,
    psnr_per_stage,
    resolve_collate,
)
from ._fastmri_metrics import SSIM_WINDOW, fastmri_center_crop, fastmri_metrics
from ._io import (
    CHECKPOINT_FORMAT,
    MODEL_FORMAT,
    extra_buffers,
    load_buffers,
    load_model,
    save_model,
)
from ._loop import train
from ._memory import MemoryProbe, median, timed
from ._metrics import get_loss, nrmse, psnr, ssim, ssim_torch
from ._options import SCHEDULERS, StepSampler, TrainOptions, batch_indices
from ._run import (
    RunFolder,
    TrainResult,
    atomic_path,
    atomic_write_text,
    rng_state,
    seed_everything,
    set_rng_state,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "METRICS",
    "MODEL_FORMAT",
    "SCHEDULERS",
    "SSIM_WINDOW",
    "Engine",
    "GreedyEngine",
    "MemoryProbe",
    "MetricsTable",
    "PlainEngine",
    "RunFolder",
    "StepSampler",
    "TrainOptions",
    "TrainResult",
    "atomic_path",
    "atomic_write_text",
    "aux_loss_weight",
    "batch_indices",
    "check_dataset",
    "evaluate",
    "extra_buffers",
    "fastmri_center_crop",
    "fastmri_metrics",
    "get_loss",
    "load_buffers",
    "load_model",
    "make_engine",
    "median",
    "model_loss",
    "module_wrapper",
    "nrmse",
    "psnr",
    "psnr_per_stage",
    "resolve_collate",
    "rng_state",
    "save_model",
    "seed_everything",
    "set_rng_state",
    "ssim",
    "ssim_torch",
    "timed",
    "train",
]
