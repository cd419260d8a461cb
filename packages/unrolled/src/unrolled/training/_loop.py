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
                      written atomically (temporary file, fsync, ``os.replace``), tensors and
                      plain values only (it loads with ``weights_only=True``)
``checkpoint.prev.pt`` the checkpoint before it: ``resume=True`` falls back to it when
                      ``checkpoint.pt`` is missing, truncated or corrupt (and says so)
``best.pt``           the model with the lowest validation nRMSE so far (atomic);
                      :func:`load_model` reads it
``events.log``        one dated line per resume (the checkpoint read, the files skipped)
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
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader

from .._base import UnrolledModel
from .._batch import Batch
from .._strategy import Strategy, as_strategy
from ._engines import Engine, GreedyEngine, aux_loss_weight, make_engine
from ._evaluate import check_dataset, evaluate, resolve_collate
from ._io import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, extra_buffers, load_buffers
from ._memory import MemoryProbe, median, timed
from ._metrics import get_loss
from ._options import StepSampler, TrainOptions, batch_indices
from ._run import (
    RunFolder,
    TrainResult,
    atomic_write_text,
    rng_state,
    save_model,
    seed_everything,
    set_rng_state,
)

__all__ = ["train"]

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
_VAL_COLUMNS = ["step", "psnr", "ssim", "nrmse", "best"]


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
    session = _Session.set_up(model, train_data, val_data, strategy, collate, val_collate, options)
    session.restore()
    session.fit(callback)
    return session.result()


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


def _name(run: RunFolder) -> str | None:
    return None if run.read_from is None else run.read_from.name


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


def _open_run(opts: TrainOptions, strategy: Strategy) -> tuple[RunFolder | None, dict | None]:
    """Return the run folder (``None`` without ``run_dir``) and, when resuming, its checkpoint."""
    if opts.run_dir is None:
        return None, None
    run = RunFolder(opts.run_dir)
    if run.has_checkpoint() and not opts.resume:
        raise ValueError(
            f"{str(run.path)!r} already holds a run (checkpoint.pt): pass resume=True to "
            "continue it, or choose another run_dir"
        )
    if not opts.resume:
        return run, None
    if not run.has_checkpoint():
        raise ValueError(f"resume=True but {str(run.checkpoint)!r} does not exist")
    saved = run.read_checkpoint()  # checkpoint.pt, else checkpoint.prev.pt (RunFileError)
    _check_resume(saved, opts, strategy)
    return run, saved


@dataclass
class _Session:
    """One call of :func:`train`: its settings, then what the training has done so far."""

    model: UnrolledModel
    opts: TrainOptions
    strategy: Strategy
    train_data: Any
    val_data: Any
    collate: Callable[[list[Any]], Batch]
    val_collate: Callable[[list[Any]], Batch] | None
    num_samples: int
    device: torch.device
    run: RunFolder | None
    saved: dict[str, Any] | None
    engine: Engine | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    val_history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    best_state: dict[str, Any] | None = None
    columns: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    memory: tuple[int | None, int | None] = (None, None)
    memory_kind: str = ""

    @classmethod
    def set_up(
        cls,
        model: UnrolledModel,
        train_data: Any,
        val_data: Any,
        strategy: str | Strategy,
        collate: Callable[[list[Any]], Batch] | None,
        val_collate: Callable[[list[Any]], Batch] | None,
        options: dict[str, Any],
    ) -> _Session:
        """Check every argument (before anything is written or moved) and open the run."""
        opts = TrainOptions.from_kwargs(options)
        if not isinstance(model, UnrolledModel):
            raise TypeError(
                f"model must be an unrolled.UnrolledModel (MoDL, UnrolledPGD, RIM, ...), got "
                f"{type(model).__name__}"
            )
        num_samples = check_dataset(train_data, "train_data")
        if val_data is None and opts.val_every is not None:
            raise ValueError(
                f"val_every={opts.val_every} needs val_data (the validation set); pass val_data "
                "or leave val_every=None"
            )
        if opts.batch_size > num_samples:
            raise ValueError(
                f"batch_size={opts.batch_size} is larger than the {num_samples} training "
                f"samples: use batch_size <= {num_samples}"
            )
        chosen = as_strategy(strategy, **opts.strategy_options)
        get_loss(opts.loss)
        device = _device(opts.device)
        collate_fn = resolve_collate(train_data, collate, "train_data", opts.batch_size)
        if val_data is not None:
            check_dataset(val_data, "val_data")
            size = opts.val_batch_size or opts.batch_size
            resolve_collate(val_data, val_collate, "val_data", size)
        run, saved = _open_run(opts, chosen)
        return cls(
            model, opts, chosen, train_data, val_data, collate_fn, val_collate, num_samples,
            device, run, saved,
        )  # fmt: skip

    # ------------------------------------------------------------------ restore
    def restore(self) -> None:
        """Restore the run's state, or start a fresh one.

        Moves the model, restores a resumed run's state (else seeds everything), certifies and
        sets the strategy, and builds the engine.
        """
        model, opts, saved, chosen = self.model, self.opts, self.saved, self.strategy
        model.to(self.device)
        if saved is not None:
            model.load_state_dict(saved["model"])
            load_buffers(model, saved["buffers"])
        else:
            seed_everything(opts.seed)
        if chosen.forward_name == "reversible" and not self._certified():
            first_indices = batch_indices(0, self.num_samples, opts.batch_size, opts.seed)
            first = self.collate([self.train_data[i] for i in first_indices]).to(self.device)
            model.certify(first.physics, first.target)
        model.set_strategy(chosen)
        if (
            chosen.forward_name == "reversible"
            and chosen.name != "greedy"
            and (model.loss_over_stages or aux_loss_weight(model) > 0)
        ):
            raise ValueError(
                f"{type(model).__name__}'s loss reads every stage's output (loss over stages or "
                "an auxiliary loss), which strategy 'reversible' does not keep: use "
                "'checkpoint', or set aux_loss_weight=0"
            )
        loss_fn = get_loss(opts.loss, seed=opts.seed, **opts.loss_options)
        self.engine = make_engine(model, loss_fn, opts, chosen)
        if saved is not None:
            self.engine.load_state_dict(saved["engine"])
            self.history, self.val_history = saved["history"], saved["val_history"]
            self.best = saved["best"]
            set_rng_state(saved["rng"])
        self.columns = ["step", "epoch", "loss", "lr", "time_s"]
        if isinstance(self.engine, GreedyEngine):
            self.columns += [f"loss_module_{m}" for m in range(self.engine.trainer.num_modules)]
        if self.run is not None:  # the logs as of the checkpoint (a killed run may have gone on)
            if saved is not None:
                self._note_resume(self.run)
            logged = [r for r in self.history if self._logged(r["step"])]
            self.run.rewrite(self.run.log, logged, self.columns)
            self.run.rewrite(self.run.val, self.val_history, _VAL_COLUMNS)

    def _note_resume(self, run: RunFolder) -> None:
        """Clear what a killed writer left, and write the resume into ``events.log``."""
        left = run.remove_temporaries()
        read = run.read_from.name if run.read_from is not None else run.checkpoint.name
        text = f"resumed at step {self.start} from {read}"
        if run.unusable:
            text += f" ({'; '.join(run.unusable)})"
        if left:
            text += f"; removed the temporary files of an interrupted write: {', '.join(left)}"
        run.note(text)

    def _certified(self) -> bool:
        """Tell whether the bounds reversible training needs are known already.

        A resumed run restored its certified bounds with the buffers (MEL Eq. 7: alpha * L < 1);
        a fresh one certifies on its first training batch.
        """
        return self.saved is not None and all(
            bool(torch.isfinite(v).all())
            for v in self.saved["buffers"].values()
            if v.is_floating_point()
        )

    def _logged(self, step: int) -> bool:
        return step % self.opts.log_every == 0 or step == self.opts.steps

    # ------------------------------------------------------------------ fit
    def fit(self, callback: Callable[[dict[str, Any]], None] | None) -> None:
        """Run the optimizer steps from the checkpoint's (or 0) to ``steps``.

        With validation, logs and checkpoints; records peak memory and step times.
        """
        from tqdm.auto import tqdm

        opts = self.opts
        start = self.start
        loader = DataLoader(
            self.train_data,
            batch_sampler=StepSampler(
                start, opts.steps, self.num_samples, opts.batch_size, opts.seed
            ),
            collate_fn=self.collate,
            num_workers=opts.num_workers,
            # a private generator: creating the loader's iterator must not consume the global RNG,
            # or a resumed run would draw different random numbers than an uninterrupted one
            generator=torch.Generator().manual_seed(opts.seed),
        )
        description = f"train {self.strategy.describe()}"
        bar = tqdm(
            total=opts.steps,
            initial=start,
            disable=not opts.progress,
            desc=description,
            unit="step",
        )
        probe = MemoryProbe(self.device)
        probe.reset()
        baseline = probe.current()
        try:
            for step, batch in enumerate(loader, start=start):
                row = self._step(step, batch.to(self.device))
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.4g}", refresh=False)
                done = step + 1
                if self._validate_now(done):
                    self.validate(done)
                    nrmse = f"{self.val_history[-1]['nrmse']:.4g}"
                    bar.set_postfix(loss=f"{row['loss']:.4g}", val_nrmse=nrmse)
                if self.run is not None and (
                    done == opts.steps
                    or (opts.checkpoint_every is not None and done % opts.checkpoint_every == 0)
                ):
                    self.checkpoint(done, self.run)
                if callback is not None:
                    callback(dict(row))
        finally:
            bar.close()
        self.memory = (probe.peak(), baseline)
        self.memory_kind = probe.kind

    def _engine(self) -> Engine:
        if self.engine is None:
            raise RuntimeError("the session has no engine yet: restore() builds it before fit()")
        return self.engine

    @property
    def start(self) -> int:
        """The step the run starts from (the checkpoint's when resuming)."""
        return 0 if self.saved is None else int(self.saved["step"])

    def _step(self, step: int, batch: Batch) -> dict[str, Any]:
        """One optimizer step (``step`` 0-based) and its log row."""
        engine = self._engine()
        lr = engine.lr  # the learning rate this step uses (schedulers step after it)
        with timed(self.device, self.times):
            loss, extras = engine.step(batch, step)
        done = step + 1
        per_epoch = self.num_samples // self.opts.batch_size
        row = {
            "step": done,
            "epoch": step // per_epoch,
            "loss": loss,
            "lr": lr,
            "time_s": self.times[-1],
            **extras,
        }
        self.history.append(row)
        if self.run is not None and self._logged(done):
            self.run.append(self.run.log, row, self.columns)
        return row

    def _validate_now(self, done: int) -> bool:
        every = self.opts.val_every
        return self.val_data is not None and (
            (every is not None and done % every == 0) or done == self.opts.steps
        )

    # ------------------------------------------------------------------ validate and save
    def validate(self, step: int) -> None:
        """Score the validation set; keep the model when its nRMSE is the best so far."""
        opts, model = self.opts, self.model
        table = evaluate(
            model,
            self.val_data,
            batch_size=opts.val_batch_size or opts.batch_size,
            device=self.device,
            collate=self.val_collate,
            num_workers=opts.num_workers,
            max_samples=opts.val_samples,
        )
        means = table.mean()
        improved = self.best is None or means["nrmse"] < self.best["nrmse"]
        row = {"step": step, **means, "best": improved}
        self.val_history.append(row)
        if improved:
            self.best = {"step": step, **means}
            if self.run is not None:
                save_model(model, self.run.best, step=step, metrics=means)
            else:
                self.best_state = {
                    "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                    "buffers": extra_buffers(model),
                }
        if self.run is not None:
            self.run.append(self.run.val, row, _VAL_COLUMNS)

    def checkpoint(self, step: int, run: RunFolder) -> None:
        """Write the whole training state to ``checkpoint.pt``, atomically.

        The checkpoint it replaces becomes ``checkpoint.prev.pt``. The state is tensors and plain
        values only (the engine's NumPy RNG states become tensors), so the file loads with
        ``torch.load(..., weights_only=True)``.
        """
        run.write_checkpoint(
            {
                "format": CHECKPOINT_FORMAT,
                "version": CHECKPOINT_VERSION,
                "step": step,
                "options": asdict(self.opts),
                "strategy": asdict(self.strategy),
                "model_class": type(self.model).__name__,
                "model": self.model.state_dict(),
                "buffers": extra_buffers(self.model),
                "engine": self._engine().state_dict(),
                "rng": rng_state(),
                "history": self.history,
                "val_history": self.val_history,
                "best": self.best,
            }
        )

    def result(self) -> TrainResult:
        """Return the :class:`TrainResult` (in a run folder also ``train_result.json``)."""
        peak, baseline = self.memory
        times = self.times
        result = TrainResult(
            steps=len(self.history),
            strategy=self.strategy.describe(),
            history=self.history,
            val_history=self.val_history,
            best=self.best,
            best_state=self.best_state,
            peak_memory_bytes=peak,
            memory_baseline_bytes=baseline,
            memory_kind=self.memory_kind,
            median_step_time_s=median(times[1:] if len(times) > 1 else times),
            run_dir=None if self.run is None else str(self.run.path),
            resumed_from=None if self.saved is None else self.start,
            options=asdict(self.opts),
            resumed_file=None if self.run is None or self.saved is None else _name(self.run),
            unusable=[] if self.run is None else list(self.run.unusable),
        )
        if self.run is not None:
            text = json.dumps(result.summary(), indent=2, default=str) + "\n"
            atomic_write_text(self.run.result, text)
        return result
