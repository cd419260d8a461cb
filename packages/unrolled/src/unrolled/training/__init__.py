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
:func:`make_engine`,               one optimizer step: one Adam for the model (data parallel under
:class:`PlainEngine`,              torchrun), or GLEAM's greedy modules through
:class:`GreedyEngine`,             :class:`greedytrain.GreedyTrainer` (P-GLEAM over devices or
:func:`model_loss`,                ranks)
:func:`context_to`
:class:`World`, :func:`connect`,   the processes of a torchrun job, each rank's share of a batch,
:func:`rank_share`,                whole-volume validation batches (datasets with
:func:`validation_batches`,        ``volume_ids()``, :class:`VolumeIndexed`)
:func:`volume_ids`,
:class:`VolumeIndexed`
:class:`MixedPrecision`,           ``precision="bf16-mixed" | "fp16-mixed"``: networks under
:data:`PRECISIONS`                 autocast, physics and invertible layers in float32
:class:`TensorBoardLogger`,        ``logger="tensorboard"``
:data:`LOGGERS`
:func:`evaluate`,                  per-sample PSNR, SSIM, nRMSE and GLEAM's PSNR per stage
:class:`MetricsTable`,
:func:`psnr_per_stage`
:func:`psnr`, :func:`ssim`,        the metrics and the training losses by name
:func:`nrmse`, :func:`get_loss`
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

from ._distributed import (
    VolumeIndexed,
    World,
    connect,
    rank_share,
    validation_batches,
    volume_ids,
)
from ._engines import (
    Engine,
    GreedyEngine,
    PlainEngine,
    aux_loss_weight,
    context_to,
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
from ._io import (
    CHECKPOINT_FORMAT,
    MODEL_FORMAT,
    extra_buffers,
    load_buffers,
    load_model,
    save_model,
)
from ._logger import LOGGERS, TensorBoardLogger
from ._loop import train
from ._memory import MemoryProbe, median, timed
from ._metrics import get_loss, nrmse, psnr, ssim, ssim_torch
from ._options import SCHEDULERS, StepSampler, TrainOptions, batch_indices
from ._precision import PRECISIONS, MixedPrecision
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
    "LOGGERS",
    "METRICS",
    "MODEL_FORMAT",
    "PRECISIONS",
    "SCHEDULERS",
    "Engine",
    "GreedyEngine",
    "MemoryProbe",
    "MetricsTable",
    "MixedPrecision",
    "PlainEngine",
    "RunFolder",
    "StepSampler",
    "TensorBoardLogger",
    "TrainOptions",
    "TrainResult",
    "VolumeIndexed",
    "World",
    "atomic_path",
    "atomic_write_text",
    "aux_loss_weight",
    "batch_indices",
    "check_dataset",
    "connect",
    "context_to",
    "evaluate",
    "extra_buffers",
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
    "rank_share",
    "resolve_collate",
    "rng_state",
    "save_model",
    "seed_everything",
    "set_rng_state",
    "ssim",
    "ssim_torch",
    "timed",
    "train",
    "validation_batches",
    "volume_ids",
]
