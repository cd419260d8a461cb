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
:class:`TrainResult`,              its result; the run folder's files (two checkpoints, logs,
:class:`RunFolder`,                events); RNG states as tensors and plain values
:func:`rng_state`,
:func:`set_rng_state`
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
:func:`fastmri_metrics`,           fastMRI's NMSE, PSNR and SSIM of one volume (the target
:func:`fastmri_center_crop`        volume's maximum as data range) and its centre crop
:func:`save_model`,                model files with their non-persistent buffers; a run's
:func:`load_model`,                weights with fallback from a corrupt ``best.pt`` to the
:func:`load_run_weights`,          checkpoints
:func:`extra_buffers`,
:func:`load_buffers`
:func:`read_file`,                 reading any file of a run with ``weights_only=True``: a file
:class:`RunFileError`              that is empty, corrupt, of another format version, or needs
                                   Python's full unpickler is refused (nothing in it runs)
:class:`MemoryProbe`,              peak memory (CPU ``VmHWM``, CUDA max allocated) and step times
:func:`timed`, :func:`median`
:func:`atomic_path`,               atomic file writing (temporary file with the user's umask,
:func:`atomic_write_text`,         fsync, ``os.replace``; a failure removes it and says how much
:func:`atomic_save`,               was written), appends cut back on failure, weights-only
:func:`append_text`,               state (:func:`to_plain`)
:func:`to_plain`
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
from ._fastmri_metrics import SSIM_WINDOW, fastmri_center_crop, fastmri_metrics
from ._io import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    FILE_VERSIONS,
    MODEL_FORMAT,
    MODEL_VERSION,
    RunFileError,
    extra_buffers,
    load_buffers,
    load_model,
    read_file,
)
from ._logger import LOGGERS, TensorBoardLogger
from ._loop import train
from ._memory import MemoryProbe, median, timed
from ._metrics import MaskedNMSE, get_loss, nrmse, psnr, ssim, ssim_torch
from ._options import SCHEDULERS, StepSampler, TrainOptions, batch_indices
from ._precision import PRECISIONS, MixedPrecision
from ._run import (
    RunFolder,
    TrainResult,
    append_text,
    atomic_path,
    atomic_save,
    atomic_write_text,
    load_run_weights,
    rng_state,
    save_model,
    seed_everything,
    set_rng_state,
    to_plain,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "FILE_VERSIONS",
    "LOGGERS",
    "METRICS",
    "MODEL_FORMAT",
    "MODEL_VERSION",
    "PRECISIONS",
    "SCHEDULERS",
    "SSIM_WINDOW",
    "Engine",
    "GreedyEngine",
    "MaskedNMSE",
    "MemoryProbe",
    "MetricsTable",
    "MixedPrecision",
    "PlainEngine",
    "RunFileError",
    "RunFolder",
    "StepSampler",
    "TensorBoardLogger",
    "TrainOptions",
    "TrainResult",
    "VolumeIndexed",
    "World",
    "append_text",
    "atomic_path",
    "atomic_save",
    "atomic_write_text",
    "aux_loss_weight",
    "batch_indices",
    "check_dataset",
    "connect",
    "context_to",
    "evaluate",
    "extra_buffers",
    "fastmri_center_crop",
    "fastmri_metrics",
    "get_loss",
    "load_buffers",
    "load_model",
    "load_run_weights",
    "make_engine",
    "median",
    "model_loss",
    "module_wrapper",
    "nrmse",
    "psnr",
    "psnr_per_stage",
    "rank_share",
    "read_file",
    "resolve_collate",
    "rng_state",
    "save_model",
    "seed_everything",
    "set_rng_state",
    "ssim",
    "ssim_torch",
    "timed",
    "to_plain",
    "train",
    "validation_batches",
    "volume_ids",
]
