r"""Training of unrolled models with any memory strategy: :func:`train`.

One step on a mini-batch :math:`(y, A, x)` minimises the loss of the reconstruction,

.. math::

    \mathcal{L} = \ell(\hat x_N, x)                                  \quad\text{(default)}, \qquad
    \mathcal{L} = \textstyle\sum_{k=1}^{N} \ell(\hat x_k, x)         \quad\text{(RIM)}, \qquad
    \mathcal{L} = \ell(\hat x_N, x) + w \textstyle\sum_{k<N} \mathrm{MSE}(\hat x_k, x)
                                                                     \quad\text{(LUSER aux.)}

with :math:`\ell` a loss of :func:`unrolled.get_loss` (complex L1, MSE, NMSE, SSIM),
:math:`\hat x_k` the read-out after stage :math:`k` (:meth:`UnrolledModel.intermediates`), the
RIM's sum when the model sets ``loss_over_stages`` and LUSER's auxiliary loss when it sets
``aux_loss_weight`` :math:`w > 0`. Adam updates the parameters (GLEAM: :math:`\beta = (0.9,
0.999)`). ``strategy="greedy"`` instead runs GLEAM Alg. 1 through
:class:`greedytrain.GreedyTrainer`: every module :math:`m` gets its own Adam and the loss
:math:`\ell(\hat x^{(m)}, x)` of its own output, fed with the detached output of module
:math:`m - 1`.

Determinism and exact resume
----------------------------
The samples of step :math:`s` are a function of ``(seed, s)`` only (:func:`batch_indices`: a
permutation per epoch, seeded by the epoch), the tasks' samples are seeded per item, and a
checkpoint holds the model, the optimizer(s), the scheduler(s), the step, the RNG states (torch,
CUDA, Python, NumPy) and the history. Resuming therefore needs no data-loader state, and a run
that was killed and resumed gives bit-identical parameters and losses to one that never stopped
(same machine and thread count).

Run folder (``run_dir``)
------------------------
====================  ============================================================================
file                  content
====================  ============================================================================
``checkpoint.pt``     full training state (every ``checkpoint_every`` steps and at the end),
                      written atomically (temporary file, fsync, ``os.replace``)
``best.pt``           the model with the lowest validation nRMSE so far (atomic);
                      :func:`load_model` reads it
``log.csv``           ``step, epoch, loss, lr, time_s`` (greedy: also ``loss_module_<m>``), one row
                      every ``log_every`` steps
``val.csv``           ``step, psnr, ssim, nrmse, best`` at every validation
``train_result.json`` :meth:`TrainResult.summary`: steps, final loss, best validation, peak
                      memory, median time per step, options
====================  ============================================================================
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

import greedytrain

from ._base import UnrolledModel
from ._batch import Batch
from ._engines import GreedyEngine, aux_loss_weight, make_engine
from ._evaluate import evaluate, extra_buffers, resolve_collate, save_model
from ._memory import MemoryProbe, median, timed
from ._metrics import get_loss
from ._options import StepSampler, TrainOptions, batch_indices
from ._run import (
    RunFolder,
    TrainResult,
    atomic_write_text,
    load_buffers,
    rng_state,
    seed_everything,
    set_rng_state,
)
from ._strategy import Strategy, as_strategy

__all__ = ["train"]

CHECKPOINT_FORMAT = "memroll-unrolled-train"
CHECKPOINT_VERSION = 1
# options that must match when a run resumes (the others may change: steps, device, workers, ...)
_RESUME_KEYS = (
    "batch_size",
    "loss",
    "lr",
    "betas",
    "weight_decay",
    "scheduler",
    "scheduler_step",
    "scheduler_gamma",
    "min_lr",
    "clip_grad_norm",
    "seed",
)


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device must name a torch device ('cpu', 'cuda:0'), got {name!r}"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available; use device='cpu'")
    return device


def _check_data(data: object, name: str) -> int:
    if not (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
        raise TypeError(
            f"{name} must be a map-style dataset (with __len__ and __getitem__), such as "
            f"unrolled.make_dataset(...) or a list of Batch objects, got {type(data).__name__}"
        )
    n = len(data)
    if n == 0:
        raise ValueError(f"{name} is empty")
    return n


def _read_checkpoint(path: Path) -> dict[str, Any]:
    # weights_only=False: optimizer and Python RNG states need the full unpickler; read only
    # checkpoints written by unrolled.train
    data = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{str(path)!r} is not a checkpoint written by unrolled.train")
    if data.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{str(path)!r} has checkpoint version {data.get('version')!r}; this unrolled reads "
            f"version {CHECKPOINT_VERSION}"
        )
    return data


def _check_resume(saved: dict[str, Any], opts: TrainOptions, strategy: Strategy) -> None:
    for key in _RESUME_KEYS:
        old, new = saved["options"].get(key), getattr(opts, key)
        if isinstance(old, list):
            old = tuple(old)
        if old != new:
            raise ValueError(
                f"cannot resume: option {key}={new!r} differs from the run's {key}={old!r}; "
                "resume with the run's options (only steps, device, num_workers, progress, "
                "val_every, checkpoint_every and log_every may change)"
            )
    if saved["strategy"] != asdict(strategy):
        raise ValueError(
            f"cannot resume: strategy {strategy.describe()!r} differs from the run's "
            f"{Strategy(**saved['strategy']).describe()!r}"
        )
    if saved["step"] > opts.steps:
        raise ValueError(
            f"cannot resume: the checkpoint is at step {saved['step']}, beyond steps={opts.steps}"
        )


def train(
    model: UnrolledModel,
    train_data: Any,
    val_data: Any = None,
    *,
    strategy: str | Strategy = "backprop",
    collate: Callable[[list[Any]], Batch] | None = None,
    val_collate: Callable[[list[Any]], Batch] | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    **options: Any,
) -> TrainResult:
    """Train ``model`` on ``train_data`` with a memory ``strategy``; see :class:`TrainOptions`.

    Parameters
    ----------
    model:
        An :class:`~unrolled.UnrolledModel` (MoDL, UnrolledPGD, RIM, IRIM, ...).
    train_data, val_data:
        Map-style datasets: a :class:`~unrolled.TaskDataset` (its ``collate`` makes the
        batches), any dataset with a ``collate`` argument, or a list of ready
        :class:`~unrolled.Batch` objects (``batch_size=1``).
    strategy:
        ``"backprop"``, ``"checkpoint"``, ``"reversible"``, ``"greedy"``, ``"implicit"`` or a
        :class:`~unrolled.Strategy`; its options go in ``strategy_options``. ``model.set_strategy``
        is called before training; for ``"reversible"`` on a model with ``certify``
        (UnrolledPGD), ``model.certify(physics, x_like)`` runs first on the first training batch.
    collate, val_collate:
        ``collate(samples) -> Batch`` when the datasets have no ``collate`` of their own.
    callback:
        Called after every step with that step's log row (``step``, ``loss``, ``lr``, ...).
    **options:
        :class:`TrainOptions` fields (``steps``, ``batch_size``, ``loss``, ``lr``, ...).

    Returns
    -------
    TrainResult

    Raises
    ------
    ValueError
        An unknown or invalid option (naming it), ``val_every`` without ``val_data``, a strategy
        the model cannot use (saying what would work), a ``run_dir`` that already holds a run
        (without ``resume=True``), or a resume with different options.
    FloatingPointError
        The loss became NaN or infinite (the parameters were not updated).
    """
    opts = TrainOptions.from_kwargs(options)
    if not isinstance(model, UnrolledModel):
        raise TypeError(
            f"model must be an unrolled.UnrolledModel (MoDL, UnrolledPGD, RIM, ...), got "
            f"{type(model).__name__}"
        )
    num_samples = _check_data(train_data, "train_data")
    if val_data is None and opts.val_every is not None:
        raise ValueError(
            f"val_every={opts.val_every} needs val_data (the validation set); pass val_data or "
            "leave val_every=None"
        )
    if opts.batch_size > num_samples:
        raise ValueError(
            f"batch_size={opts.batch_size} is larger than the {num_samples} training samples: "
            f"use batch_size <= {num_samples}"
        )
    chosen = as_strategy(strategy, **opts.strategy_options)
    loss_fn = get_loss(opts.loss)
    device = _device(opts.device)
    collate_fn = resolve_collate(train_data, collate, "train_data", opts.batch_size)
    if val_data is not None:
        _check_data(val_data, "val_data")
        resolve_collate(val_data, val_collate, "val_data", opts.val_batch_size or opts.batch_size)
    run = RunFolder(opts.run_dir) if opts.run_dir is not None else None
    saved: dict[str, Any] | None = None
    if run is not None:
        if run.checkpoint.exists() and not opts.resume:
            raise ValueError(
                f"{str(run.path)!r} already holds a run (checkpoint.pt): pass resume=True to "
                "continue it, or choose another run_dir"
            )
        if opts.resume:
            if not run.checkpoint.exists():
                raise ValueError(f"resume=True but {str(run.checkpoint)!r} does not exist")
            saved = _read_checkpoint(run.checkpoint)
            _check_resume(saved, opts, chosen)

    model.to(device)
    if saved is not None:
        model.load_state_dict(saved["model"])
        load_buffers(model, saved["buffers"])
    else:
        seed_everything(opts.seed)
    start = 0 if saved is None else int(saved["step"])

    if chosen.forward_name == "reversible":
        # a resumed run restored its certified bounds with the buffers; a fresh one certifies on
        # its first training batch (MEL Eq. 7: alpha * L < 1)
        certified = saved is not None and all(
            bool(torch.isfinite(v).all())
            for v in saved["buffers"].values()
            if v.is_floating_point()
        )
        if not certified:
            first_indices = batch_indices(0, num_samples, opts.batch_size, opts.seed)
            first = collate_fn([train_data[i] for i in first_indices]).to(device)
            model.certify(first.physics, first.target)
    model.set_strategy(chosen)
    if (
        chosen.forward_name == "reversible"
        and chosen.name != "greedy"
        and (model.loss_over_stages or aux_loss_weight(model) > 0)
    ):
        raise ValueError(
            f"{type(model).__name__}'s loss reads every stage's output (loss over stages or an "
            "auxiliary loss), which strategy 'reversible' does not keep: use 'checkpoint', or "
            "set aux_loss_weight=0"
        )

    engine = make_engine(model, loss_fn, opts, chosen)

    history: list[dict[str, Any]] = []
    val_history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    best_state: dict[str, Any] | None = None
    if saved is not None:
        engine.load_state_dict(saved["engine"])
        history, val_history, best = saved["history"], saved["val_history"], saved["best"]
        set_rng_state(saved["rng"])

    columns = ["step", "epoch", "loss", "lr", "time_s"]
    if isinstance(engine, GreedyEngine):
        columns += [f"loss_module_{m}" for m in range(engine.trainer.num_modules)]
    val_columns = ["step", "psnr", "ssim", "nrmse", "best"]
    if run is not None:  # the logs as of the checkpoint (a killed run may have logged further)
        run.rewrite(run.log, [r for r in history if _logged(r["step"], opts)], columns)
        run.rewrite(run.val, val_history, val_columns)

    def validate(step: int) -> None:
        nonlocal best, best_state
        table = evaluate(
            model,
            val_data,
            batch_size=opts.val_batch_size or opts.batch_size,
            device=device,
            collate=val_collate,
            num_workers=opts.num_workers,
            max_samples=opts.val_samples,
        )
        means = table.mean()
        improved = best is None or means["nrmse"] < best["nrmse"]
        row = {"step": step, **means, "best": improved}
        val_history.append(row)
        if improved:
            best = {"step": step, **means}
            if run is not None:
                save_model(model, run.best, step=step, metrics=means)
            else:
                best_state = {
                    "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                    "buffers": extra_buffers(model),
                }
        if run is not None:
            run.append(run.val, row, val_columns)

    def checkpoint(step: int, run: RunFolder) -> None:
        greedytrain.atomic_save(
            {
                "format": CHECKPOINT_FORMAT,
                "version": CHECKPOINT_VERSION,
                "step": step,
                "options": asdict(opts),
                "strategy": asdict(chosen),
                "model_class": type(model).__name__,
                "model": model.state_dict(),
                "buffers": extra_buffers(model),
                "engine": engine.state_dict(),
                "rng": rng_state(),
                "history": history,
                "val_history": val_history,
                "best": best,
            },
            run.checkpoint,
        )

    loader = DataLoader(
        train_data,
        batch_sampler=StepSampler(start, opts.steps, num_samples, opts.batch_size, opts.seed),
        collate_fn=collate_fn,
        num_workers=opts.num_workers,
        # a private generator: creating the loader's iterator must not consume the global RNG,
        # or a resumed run would draw different random numbers than an uninterrupted one
        generator=torch.Generator().manual_seed(opts.seed),
    )
    per_epoch = num_samples // opts.batch_size
    probe = MemoryProbe(device)
    times: list[float] = []
    from tqdm.auto import tqdm

    bar = tqdm(
        total=opts.steps,
        initial=start,
        disable=not opts.progress,
        desc=f"train {chosen.describe()}",
        unit="step",
    )
    probe.reset()
    baseline = probe.current()
    try:
        for step, batch in enumerate(loader, start=start):
            batch = batch.to(device)
            lr = engine.lr  # the learning rate this step uses (schedulers step after it)
            with timed(device, times):
                loss, extras = engine.step(batch, step)
            done = step + 1
            row = {
                "step": done,
                "epoch": step // per_epoch,
                "loss": loss,
                "lr": lr,
                "time_s": times[-1],
                **extras,
            }
            history.append(row)
            if run is not None and _logged(done, opts):
                run.append(run.log, row, columns)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
            validate_now = val_data is not None and (
                (opts.val_every is not None and done % opts.val_every == 0) or done == opts.steps
            )
            if validate_now:
                validate(done)
                bar.set_postfix(loss=f"{loss:.4g}", val_nrmse=f"{val_history[-1]['nrmse']:.4g}")
            if run is not None and (
                done == opts.steps
                or (opts.checkpoint_every is not None and done % opts.checkpoint_every == 0)
            ):
                checkpoint(done, run)
            if callback is not None:
                callback(dict(row))
    finally:
        bar.close()
    peak = probe.peak()
    result = TrainResult(
        steps=len(history),
        strategy=chosen.describe(),
        history=history,
        val_history=val_history,
        best=best,
        best_state=best_state,
        peak_memory_bytes=peak,
        memory_baseline_bytes=baseline,
        memory_kind=probe.kind,
        median_step_time_s=median(times[1:] if len(times) > 1 else times),
        run_dir=None if run is None else str(run.path),
        resumed_from=None if saved is None else start,
        options=asdict(opts),
    )
    if run is not None:
        atomic_write_text(run.result, json.dumps(result.summary(), indent=2, default=str) + "\n")
    return result


def _logged(step: int, opts: TrainOptions) -> bool:
    return step % opts.log_every == 0 or step == opts.steps
