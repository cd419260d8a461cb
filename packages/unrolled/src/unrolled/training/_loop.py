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
                      memory, median time per step, world size and backend, options
``tensorboard/``      with ``logger="tensorboard"``: TensorBoard event files (:mod:`._logger`)
====================  ============================================================================

Under ``torchrun`` every process calls :func:`train` with the same arguments; ``batch_size``
is the global batch, and rank 0 alone reads and writes the run folder (:mod:`._distributed`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .._base import UnrolledModel
from .._batch import Batch
from .._strategy import Strategy, as_strategy
from ._distributed import (
    World,
    check_share,
    connect,
    own_rng_state,
    resolve_device,
    step_loader,
    validation_means,
)
from ._engines import Engine, GreedyEngine, aux_loss_weight, make_engine
from ._evaluate import check_dataset, resolve_collate
from ._failures import FailureWatch
from ._io import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, extra_buffers, load_buffers
from ._logger import TensorBoardLogger, make_logger
from ._memory import MemoryProbe, median, timed
from ._metrics import get_loss
from ._options import TrainOptions, batch_indices
from ._precision import MixedPrecision, reversible_defaults
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
        Called after every step with that step's log row (``step``, ``epoch``, ``loss``, ``lr``,
        ``time_s``, greedy's ``loss_module_<m>``), on every rank of a distributed job: the hook
        for monitoring of your own (an experiment tracker, early stopping by raising). The
        built-in monitors are the run folder's CSV files and ``logger="tensorboard"``.
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
    greedytrain.distributed.RankFailedError
        In a distributed job, on the other ranks when one rank failed (naming it and its error).
    """
    session = _Session.set_up(model, train_data, val_data, strategy, collate, val_collate, options)
    try:
        with session.watch.guard():
            session.restore()
            session.fit(callback)
            result = session.result()
            session.finish()
        return result
    finally:
        session.close()


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
                "val_every, checkpoint_every, log_every and compile may change)"
            )
    placement = ("devices", "replicas")  # where modules run, not what is trained
    saved_strategy = {**asdict(Strategy()), **saved["strategy"]}
    old = {k: v for k, v in saved_strategy.items() if k not in placement}
    if old != {k: v for k, v in asdict(strategy).items() if k not in placement}:
        raise ValueError(
            f"cannot resume: strategy {strategy.describe()!r} differs from the run's "
            f"{Strategy(**{**saved['strategy'], 'devices': None, 'replicas': 1}).describe()!r}"
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
    run: RunFolder | None  # rank 0's only: the other ranks of a job write nothing
    saved: dict[str, Any] | None
    world: World = field(default_factory=World)
    watch: FailureWatch = field(init=False)
    engine: Engine | None = None
    precision: MixedPrecision | None = None
    logger: TensorBoardLogger | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    val_history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    best_state: dict[str, Any] | None = None
    columns: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    memory: tuple[int | None, int | None] = (None, None)
    memory_kind: str = ""
    doing: str = ""
    step_no: int = 0  # the step (1-based) being run, validated, checkpointed

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
        """Check the arguments (before anything is written or moved), join the job, open the run."""
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
        chosen = reversible_defaults(
            as_strategy(strategy, **opts.strategy_options), model, opts.precision
        )
        get_loss(opts.loss)
        resolve_device(opts.device)
        collate_fn = resolve_collate(train_data, collate, "train_data", opts.batch_size)
        if val_data is not None:
            check_dataset(val_data, "val_data")
            size = opts.val_batch_size or opts.batch_size
            resolve_collate(val_data, val_collate, "val_data", size)
        world = connect(opts.device)
        try:
            check_share(opts, chosen, world)
            device = resolve_device(world.device(opts.device))
            opened: dict[str, RunFolder | None] = {}

            def decide() -> dict[str, Any] | None:  # rank 0 opens the run folder
                opened["run"], saved = _open_run(opts, chosen)
                return saved

            saved = world.agree(decide)
        except BaseException:
            world.close()
            raise
        session = cls(
            model, opts, chosen, train_data, val_data, collate_fn, val_collate, num_samples,
            device, opened.get("run"), saved, world,
        )  # fmt: skip
        session.watch = FailureWatch(world, session.where, release=session.release)
        return session

    def where(self) -> str:
        """Say what this rank is doing, for the messages of a failed job."""
        return f"{self.doing} at step {self.step_no}" if self.doing else "while setting up"

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
        self.world.broadcast_module(model)  # a job starts from rank 0's weights
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
        self.precision = MixedPrecision(model, opts.precision, self.device)
        self.engine = make_engine(
            model, get_loss(opts.loss), opts, chosen, world=self.world, precision=self.precision
        )
        if saved is not None:
            self.engine.load_state_dict(saved["engine"])
            self.history, self.val_history = saved["history"], saved["val_history"]
            self.best = saved["best"]
            set_rng_state(own_rng_state(saved, self.world))
        self.columns = ["step", "epoch", "loss", "lr", "time_s"]
        if isinstance(self.engine, GreedyEngine):
            self.columns += [f"loss_module_{m}" for m in range(self.engine.trainer.num_modules)]
        if self.run is not None:  # the logs as of the checkpoint (a killed run may have gone on)
            if saved is not None:
                self._note_resume(self.run)
            logged = [r for r in self.history if self._logged(r["step"])]
            self.run.rewrite(self.run.log, logged, self.columns)
            self.run.rewrite(self.run.val, self.val_history, _VAL_COLUMNS)
        self.logger = make_logger(
            opts.logger, None if self.run is None else self.run.path, self.start
        )

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
        bar = tqdm(
            total=opts.steps,
            initial=self.start,
            disable=not (opts.progress and self.world.is_main),
            desc=f"train {self.strategy.describe()}",
            unit="step",
        )
        loader = step_loader(
            self.train_data, self.collate, opts, self.start, self._engine().data_share
        )
        probe = MemoryProbe(self.device)
        probe.reset()
        baseline = probe.current()
        try:
            for step, batch in enumerate(loader, start=self.start):
                self.doing, self.step_no = "during the training step", step + 1
                row = self._step(step, batch.to(self.device), probe)
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.4g}", refresh=False)
                done = step + 1
                if self._validate_now(done):
                    self.validate(done)
                    nrmse = f"{self.val_history[-1]['nrmse']:.4g}"
                    bar.set_postfix(loss=f"{row['loss']:.4g}", val_nrmse=nrmse)
                if opts.run_dir is not None and (
                    done == opts.steps
                    or (opts.checkpoint_every is not None and done % opts.checkpoint_every == 0)
                ):
                    self.checkpoint(done)
                if callback is not None:
                    self.doing = "in the callback"
                    callback(dict(row))
        finally:
            bar.close()
        self.doing = "after the training steps"
        self._engine().sync()  # every rank (and the model's device) holds the whole model
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

    def _step(self, step: int, batch: Batch, probe: MemoryProbe) -> dict[str, Any]:
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
            if self.logger is not None:
                self.logger.log_step(row, probe.peak())
        return row

    def _validate_now(self, done: int) -> bool:
        every = self.opts.val_every
        return self.val_data is not None and (
            (every is not None and done % every == 0) or done == self.opts.steps
        )

    # ------------------------------------------------------------------ validate and save
    def _validation_means(self) -> dict[str, float]:
        """Mean metrics of the validation samples (split over the ranks of a job)."""
        opts = self.opts
        return validation_means(
            self.model,
            self.val_data,
            self.world,
            batch_size=opts.val_batch_size or opts.batch_size,
            device=self.device,
            collate=self.val_collate,
            num_workers=opts.num_workers,
            max_samples=opts.val_samples,
        )

    def validate(self, step: int) -> None:
        """Score the validation set; keep the model when its nRMSE is the best so far."""
        self.doing = "during validation"
        self._engine().sync()
        means = self._validation_means()
        improved = self.best is None or means["nrmse"] < self.best["nrmse"]
        row = {"step": step, **means, "best": improved}
        self.val_history.append(row)
        if improved:
            self.best = {"step": step, **means}
            if self.run is not None:
                save_model(self.model, self.run.best, step=step, metrics=means)
            elif self.opts.run_dir is None:
                self.best_state = {
                    "model": {
                        k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()
                    },
                    "buffers": extra_buffers(self.model),
                }
        if self.run is not None:
            self.run.append(self.run.val, row, _VAL_COLUMNS)
            if self.logger is not None:
                self.logger.log_validation(row)

    def checkpoint(self, step: int) -> None:
        """Write the whole training state to ``checkpoint.pt``, atomically (rank 0).

        The checkpoint it replaces becomes ``checkpoint.prev.pt``. The state is tensors and plain
        values only (the engine's NumPy RNG states become tensors), so the file loads with
        ``torch.load(..., weights_only=True)``. In a job every rank takes part: the engine's
        state and every rank's RNG state are gathered on rank 0 (``rng_ranks``), which writes
        the file.
        """
        self.doing = "while writing the checkpoint"
        engine = self._engine()
        engine.sync()
        engine_state = engine.state_dict()
        rng_ranks = self.world.gather(rng_state())
        if self.run is None:
            return
        self.run.write_checkpoint(
            {
                "format": CHECKPOINT_FORMAT,
                "version": CHECKPOINT_VERSION,
                "step": step,
                "options": asdict(self.opts),
                "strategy": asdict(self.strategy),
                "model_class": type(self.model).__name__,
                "model": self.model.state_dict(),
                "buffers": extra_buffers(self.model),
                "engine": engine_state,
                "rng": rng_ranks[0],
                **({"rng_ranks": rng_ranks} if self.world.distributed else {}),
                "history": self.history,
                "val_history": self.val_history,
                "best": self.best,
            }
        )

    def result(self) -> TrainResult:
        """Return the :class:`TrainResult` (in a run folder also ``train_result.json``)."""
        self.doing = "while writing the result"
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
            run_dir=None if self.opts.run_dir is None else str(self.opts.run_dir),
            resumed_from=None if self.saved is None else self.start,
            options=asdict(self.opts),
            resumed_file=None if self.run is None or self.saved is None else _name(self.run),
            unusable=[] if self.run is None else list(self.run.unusable),
            world_size=self.world.size,
            backend=self.world.backend,
        )
        if self.run is not None:
            text = json.dumps(result.summary(), indent=2, default=str) + "\n"
            atomic_write_text(self.run.result, text)
        return result

    def finish(self) -> None:
        """Wait for every rank of a job to be done, so none leaves while another still needs it."""
        self.doing = "while finishing"
        self.world.barrier()

    def release(self) -> None:
        """Drop this rank's hold on the process group (the engine's DDP wrapper)."""
        if self.engine is not None:
            self.engine.close()

    def close(self) -> None:
        """Remove the precision hooks, close the logger, the watch and (if ours) the job."""
        if self.precision is not None:
            self.precision.close()
        if self.engine is not None:
            self.engine.close()
        if self.logger is not None:
            self.logger.close()
        if self.watch is not None:
            self.watch.close()
        self.world.close()
