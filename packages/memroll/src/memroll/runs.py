"""Run folders: train a configuration, score it, reconstruct fastMRI files with it.

The work behind ``memroll train``, ``memroll eval`` and ``memroll recon``, shared by the command
line, the demo and the benchmark (:func:`train_config`, :func:`evaluate_run`,
:func:`reconstruct_files`; the fastMRI specifics are in :mod:`memroll.fastmri`).

A run folder holds ``config.toml`` (the configuration as trained, with the strategy chosen; its
header comments say how the run was started and every resume: date, command, step), the files
of :func:`unrolled.train` (``checkpoint.pt`` and the one before it, ``checkpoint.prev.pt``,
``best.pt``, ``log.csv``, ``val.csv``, ``events.log``, ``train_result.json``), and what
:func:`evaluate_run` writes: ``metrics_<split>.json`` (means, standard deviations, per-sample
rows, the baselines, PSNR after every stage), ``metrics_<split>.csv`` (per sample) and
``recon_<split>.png``. Every file follows the user's umask and is written atomically.

Everything the user gave is checked before any work or file: the device, the configuration,
the strategy against the model, the batch size against the data. A ``checkpoint.pt`` that
cannot be used (truncated, corrupt, another version) is skipped for ``checkpoint.prev.pt`` and
a ``best.pt`` for the checkpoints, each time with a line on stderr and in ``events.log``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import unrolled
from unrolled.training import (
    RunFolder,
    atomic_write_text,
    extra_buffers,
    load_buffers,
)

from . import plots
from ._console import CommandError, check_device, input_errors, megabytes, note, say
from ._run_config import (
    CONFIG_FILE,
    MRI_TASKS,
    ResumePoint,
    config_header,
    resume_config,
    resume_header,
    resume_point,
    with_fastmri,
)
from .config import RunConfig, build_model, dump_config, load_config, make_task
from .fastmri import (
    mean_scores,
    print_scores,
    recon_dataset,
    recon_inputs,
    recon_outputs,
    reconstruct_volume,
    score_run_volumes,
    score_volumes,
    submission_attrs,
    write_submission,
)

__all__ = [
    "CONFIG_FILE",
    "MRI_TASKS",
    "InputBaseline",
    "ResumePoint",
    "evaluate_run",
    "load_run_config",
    "reconstruct_file",
    "reconstruct_files",
    "resume_config",
    "resume_header",
    "resume_point",
    "split_overrides",
    "train_config",
    "with_fastmri",
]


# ------------------------------------------------------------------------------------------------
# train
# ------------------------------------------------------------------------------------------------
def train_config(
    config: RunConfig,
    run_dir: str | os.PathLike[str],
    *,
    strategy: str | None = None,
    resume: bool = False,
    progress: bool = True,
    evaluate_after: bool = True,
    header: str = "",
    main: bool = True,
) -> dict[str, Any]:
    """Train ``config`` into ``run_dir`` (``memroll train``).

    Everything is checked before any file is written (:func:`_checked`). ``header`` becomes the
    header comment of ``config.toml``; when resuming it is appended to the run's header.

    Returns ``train_result.json``'s content, plus ``"metrics"`` (the test-split summary) when
    ``evaluate_after``. In a torchrun job every rank calls it; only the ``main`` one (rank 0)
    writes the run folder, prints and evaluates.
    """
    run = Path(run_dir)
    chosen, train_data, val_data, model = _checked(config, run, strategy, resume)
    note = say if main else _quiet
    for data in (train_data, val_data):  # fastMRI: coil maps once, outside the measured loop
        if isinstance(data, unrolled.tasks.FastMRITask) and data.prepare_maps(progress and main):
            note(f"coil maps of the {data.split} split are in the cache (memroll prepare)")
    if main:
        run.mkdir(parents=True, exist_ok=True)
        if resume:
            header = "\n".join(filter(None, [config_header(run / CONFIG_FILE), header]))
        atomic_write_text(run / CONFIG_FILE, dump_config(config, header))
    options = _train_options(config, run, resume, progress and main)
    _warm_up(model, train_data, val_data)
    note(
        f"{'resuming' if resume else 'training'} {config.name}: {config.model.name} "
        f"({unrolled.count_parameters(model):,} parameters) on {config.task.name}, strategy "
        f"{chosen.describe()}, {config.train.steps} steps -> {run}"
    )
    result = unrolled.train(model, train_data, val_data, strategy=chosen, **options)
    summary = result.summary()
    training = (
        None
        if result.peak_memory_bytes is None or result.memory_baseline_bytes is None
        else result.peak_memory_bytes - result.memory_baseline_bytes
    )
    jobs = "" if result.world_size == 1 else f" on {result.world_size} processes (rank 0's)"
    note(
        f"trained {result.steps} steps{jobs}: final loss {result.final_loss:.4g}, peak training "
        f"memory {megabytes(training)} ({result.memory_kind}), "
        f"{result.median_step_time_s:.3f} s per step (median)"
    )
    if evaluate_after and main:
        summary["metrics"] = evaluate_run(run, device=config.train.device)
    recon = f"; memroll recon {run} IN.h5 OUT.h5 reconstructs fastMRI files"
    note(
        f"run folder {run}: memroll eval {run} scores it; memroll train --resume {run} --set "
        f"train.steps=N trains it further{recon if config.task.name in MRI_TASKS else ''}"
    )
    return summary


def _checked(
    config: RunConfig, run: Path, strategy: str | None, resume: bool
) -> tuple[unrolled.Strategy, unrolled.TaskDataset, unrolled.TaskDataset, unrolled.UnrolledModel]:
    """Check what the training needs before any file is written; return what it trains.

    The device, the strategy (and the model's refusal of it, after certifying the bounds that
    ``"reversible"`` needs), a run folder that holds a run already, and a batch larger than the
    data.
    """
    check_device(config.train.device, "train.device")
    with input_errors():
        chosen = config.strategy.resolve(strategy)
    config.strategy.name = chosen.name
    if not resume and RunFolder(run, create=False).has_checkpoint():
        raise CommandError(
            f"{str(run)!r} already holds a run (checkpoint.pt): continue it with memroll train "
            "--resume, or choose another --run-dir"
        )
    train_data = make_task(config, "train")
    val_data = make_task(config, "val")
    model = build_model(config, train_data)
    if config.train.batch_size > len(train_data):
        raise CommandError(
            f"train.batch_size={config.train.batch_size} is larger than the {len(train_data)} "
            f"training samples of this task: use --set train.batch_size=N with N <= "
            f"{len(train_data)}"
        )
    problem = model.strategy_problem(chosen)
    if problem is not None and chosen.forward_name == "reversible":
        # bounds the model needs first (PGD, FPM): certify on the first training batch, as
        # unrolled.train does (it certifies again: the same batch, the same bounds)
        train = config.train
        first = unrolled.batch_indices(0, len(train_data), train.batch_size, train.seed)
        batch = train_data.batch(first)
        with input_errors():  # a learned step that cannot be inverted
            model.certify(batch.physics, batch.target)
        problem = model.strategy_problem(chosen)
    if problem is not None:
        raise CommandError(problem)
    return chosen, train_data, val_data, model


def _quiet(*parts: object) -> None:
    """Print nothing (the other ranks of a torchrun job)."""


def _warm_up(
    model: nn.Module, train_data: unrolled.TaskDataset, val_data: unrolled.TaskDataset
) -> None:
    """Do once what the measured training loop would otherwise do first.

    So the peak training memory the run records is the training's own.

    On a CPU the peak RSS also counts one-time costs: scikit-image loads its metric modules
    lazily on the first PSNR (about 50 MB), each split builds its shared data on its first item,
    and the first convolution and FFT fault in pages of torch's code (measured 11 to 31 MB,
    depending on the installation). This runs the metrics, reads an item of each split, and
    runs one forward and backward pass of the model on one training sample, then restores the
    model's state and drops its gradients: the training that follows is unchanged (it seeds its
    random numbers itself, or restores them when it resumes).
    """
    sample = val_data.batch([0])
    for metric in (unrolled.psnr, unrolled.ssim, unrolled.nrmse):
        metric(0.5 * sample.target, sample.target)
    batch = train_data.batch([0])
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    buffers = extra_buffers(model)
    was_training = model.training
    model.train()
    x_hat = model(batch.y, batch.physics, batch.x0)
    error = x_hat - batch.target
    (torch.view_as_real(error) if error.is_complex() else error).abs().mean().backward()
    model.load_state_dict(state)
    load_buffers(model, buffers)
    for parameter in model.parameters():
        parameter.grad = None
    model.train(was_training)


def _train_options(config: RunConfig, run: Path, resume: bool, progress: bool) -> dict[str, Any]:
    options = dataclasses.asdict(config.train)
    for key in ("run_dir", "resume", "strategy_options"):
        options.pop(key)
    options.update(run_dir=str(run), resume=resume, progress=progress and config.train.progress)
    return options


def split_overrides(split_by_file: str | None, split_seed: int | None) -> list[str]:
    """Return the ``--set`` overrides of ``--split-by-file 0.8,0.1,0.1 --split-seed S``.

    The rule becomes the task options ``split_by_file`` and ``split_seed``, so the run folder's
    ``config.toml`` records it.
    """
    out = []
    if split_by_file is not None:
        try:
            fractions = [float(part) for part in split_by_file.split(",")]
        except ValueError:
            fractions = []
        if len(fractions) != 3:
            raise CommandError(
                "--split-by-file takes three fractions train,val,test such as 0.8,0.1,0.1, got "
                f"{split_by_file!r}"
            )
        out.append(f"task.split_by_file={json.dumps(fractions)}")
    if split_seed is not None:
        out.append(f"task.split_seed={int(split_seed)}")
    return out


# ------------------------------------------------------------------------------------------------
# eval
# ------------------------------------------------------------------------------------------------
class InputBaseline(nn.Module):
    """The reconstruction without a model.

    ``x0`` when the task gives one (deblurring: the blurry image), else the adjoint ``A^H y`` (MRI:
    the zero-filled image).
    """

    def forward(self, y: Tensor, physics: nn.Module, x0: Tensor | None = None) -> Tensor:
        """``x0`` if given, else ``physics.adjoint(y)``."""
        return x0 if x0 is not None else physics.adjoint(y)  # type: ignore[operator]


def _input_label(task: str) -> str:
    return {"deblur": "blurred input", "ct": "A^T y"}.get(task, "zero-filled")


def load_run_config(
    run: Path, overrides: Sequence[str] = (), fastmri: str | None = None
) -> RunConfig:
    """Return the configuration of the run folder ``run`` (with ``--set`` and ``--fastmri``)."""
    if not (run / CONFIG_FILE).is_file():
        raise CommandError(
            f"{str(run)!r} is not a run folder of memroll train (no {CONFIG_FILE} there)"
        )
    saved = load_config(run / CONFIG_FILE)
    return load_config(run / CONFIG_FILE, with_fastmri(list(overrides), fastmri, saved))


def _load_weights(model: nn.Module, run: Path, weights: str, command: str) -> dict[str, Any]:
    """Load the run's weights into ``model`` (:func:`unrolled.load_run_weights`).

    A file that cannot be used is skipped for the next (``best.pt``, ``checkpoint.pt``,
    ``checkpoint.prev.pt``), said on stderr and in the run's ``events.log``.
    """
    folder = RunFolder(run, create=False)
    if not (folder.best.is_file() or folder.has_checkpoint()):
        raise CommandError(f"{str(run)!r} has no trained weights yet (no best.pt or checkpoint.pt)")
    with input_errors():  # a model that does not fit the file (eval --set model.*=...)
        info = unrolled.load_run_weights(model, run, weights)
    if info["skipped"]:
        text = f"{'; '.join(info['skipped'])}: using {info['file']} (step {info.get('step')})"
        note(text)
        with contextlib.suppress(OSError):  # a read-only run folder: stderr says it already
            folder.note(f"{command}: {text}")
    return info


def _baseline_models(config: RunConfig, data: unrolled.TaskDataset) -> dict[str, nn.Module]:
    """Return the input (zero-filled) baseline, and CS when the config asks for it."""
    models: dict[str, nn.Module] = {}
    probe = data.batch([0])
    if callable(getattr(probe.physics, "adjoint", None)):
        models[_input_label(config.task.name)] = InputBaseline()
    if config.eval.cs_lamda is not None and config.task.name in (*MRI_TASKS, "mri3d"):
        try:
            cs_model = unrolled.CompressedSensing(config.eval.cs_lamda, config.eval.cs_iterations)
        except ImportError as err:
            say(f"note: the CS baseline is left out ({err})")
        else:
            models["CS (l1-wavelet)"] = cs_model
    return models


def evaluate_run(
    run_dir: str | os.PathLike[str],
    *,
    split: str | None = None,
    weights: str | None = None,
    overrides: Sequence[str] = (),
    fastmri: str | None = None,
    device: str = "cpu",
    figure: bool = True,
    quiet: bool = False,
) -> dict[str, Any]:
    """Score a run's model on a split (``memroll eval``).

    memroll's metrics per sample (and of the zero-filled input and CS where configured); on
    fastMRI files with a reference also fastMRI's metrics per volume
    (:func:`unrolled.fastmri_metrics` against ``reconstruction_rss``, report key ``"fastmri"``).
    Writes ``metrics_<split>.json``, ``metrics_<split>.csv`` and ``recon_<split>.png`` into the
    run folder; returns the JSON's content.
    """
    run = Path(run_dir)
    config = load_run_config(run, overrides, fastmri)
    split = split or config.eval.split
    data = make_task(config, split)
    model = build_model(config, data)
    info = _load_weights(model, run, weights or config.eval.weights, "eval")
    source = Path(info["file"])
    model.to(device)
    kwargs: dict[str, Any] = {"batch_size": config.eval.batch_size, "device": device}
    kwargs["max_samples"] = config.eval.samples
    table = unrolled.evaluate(model, data, **kwargs)
    models = _baseline_models(config, data)
    baselines = {name: unrolled.evaluate(m, data, **kwargs) for name, m in models.items()}
    report: dict[str, Any] = {
        "run_dir": str(run),
        "split": split,
        "task": config.task.name,
        "model": config.model.name,
        "strategy": config.strategy.name,
        "weights": source.name,
        "step": info.get("step"),
        **table.summary(),
        "baselines": {name: t.summary() for name, t in baselines.items()},
        "psnr_per_stage": unrolled.psnr_per_stage(model, data, **kwargs),
        "per_sample": table.rows,
    }
    scores = score_run_volumes(model, models, data, device, config.eval.samples)
    if scores is not None:
        report["fastmri"] = scores
    if not data.has_target:
        report["note"] = "these data have no reference (fastMRI test files): metrics are void"
    atomic_write_text(run / f"metrics_{split}.json", json.dumps(report, indent=2) + "\n")
    table.to_csv(run / f"metrics_{split}.csv")
    if figure:
        title = f"{config.name}, {split} {{where}} ({source.name}, step {info.get('step')})"
        report["figures"] = _figures(run, split, config, data, model, models, title, device)
    if not quiet:
        _print_report(report, table, baselines, config)
    return report


def _where(data: unrolled.TaskDataset, index: int) -> str:
    """Which sample: ``"sample 3"``, for fastMRI files ``"sample 3 (file.h5, slice 12)"``."""
    describe = getattr(data, "describe", None)
    return f"sample {index}" + (f" ({describe(index)})" if callable(describe) else "")


def _figures(
    run: Path,
    split: str,
    config: RunConfig,
    data: unrolled.TaskDataset,
    model: nn.Module,
    baselines: dict[str, nn.Module],
    title: str,
    device: str,
) -> list[str]:
    """``recon_<split>[_i].png``: the first samples, each with its own PSNR and SSIM.

    Reference, the baselines computed (zero-filled input, CS), the model, their error maps and
    the sampling mask (``title`` is formatted with ``where``, the sample's name).
    """
    count = min(config.eval.figure_samples, len(data))
    batch = data.batch(list(range(count))).to(device)
    model.eval()
    with torch.no_grad():
        outputs = {
            name: m.to(device)(batch.y, batch.physics, batch.x0) for name, m in baselines.items()
        }
        outputs[config.model.name] = model(batch.y, batch.physics, batch.x0)
    color = data.color_channels is not None
    sampling = getattr(batch.physics, "sampling_mask", None)
    masks = sampling() if callable(sampling) else None
    for i in range(count):
        panels = [plots.Panel(n, plots.display_image(x[i], color)) for n, x in outputs.items()]
        mask = None if masks is None else plots.display_image(masks[min(i, len(masks) - 1)])
        name = f"recon_{split}.png" if i == 0 else f"recon_{split}_{i}.png"
        plots.comparison_figure(
            run / name,
            plots.Panel("reference", plots.display_image(batch.target[i], color)),
            panels,
            title=title.format(where=_where(data, i)),
            mask=mask,
        )
    return sorted(p.name for p in run.glob(f"recon_{split}*.png"))


def _summary_line(label: str, table: unrolled.MetricsTable) -> str:
    means, stds = table.mean(), table.std()
    return (
        f"{label:<22} {means['psnr']:7.2f} ({stds['psnr']:.2f})  {means['ssim']:.4f} "
        f"({stds['ssim']:.4f})  {means['nrmse']:.4f} ({stds['nrmse']:.4f})"
    )


def _print_report(
    report: dict[str, Any],
    table: unrolled.MetricsTable,
    baselines: dict[str, unrolled.MetricsTable],
    config: RunConfig,
) -> None:
    say(
        f"{config.name}: {report['model']} ({report['strategy']}), weights {report['weights']} "
        f"(step {report['step']}), {report['split']} split, {len(table)} samples"
    )
    say(f"{'sample':<22} {'PSNR (dB)':>9}  {'SSIM':>6}  {'nRMSE':>7}")
    for row in table.rows:
        say(f"{int(row['sample']):<22} {row['psnr']:9.2f}  {row['ssim']:.4f}  {row['nrmse']:.4f}")
    say(f"{'':<22} mean (std)")
    say(_summary_line(f"{config.model.name}", table))
    for name, base in baselines.items():
        say(_summary_line(name, base))
    scores = report.get("fastmri")
    if scores is not None:
        print_scores(scores["model"]["volumes"], [], scores["reference"])
        for name, value in scores.items():
            if isinstance(value, dict) and name != "model" and value["mean"]:
                mean = value["mean"]
                say(
                    f"{name + ' (mean)':<39}  {mean['nmse']:8.4f}  {mean['psnr']:9.2f}  "
                    f"{mean['ssim']:.4f}"
                )
    if "note" in report:
        say(f"note: {report['note']}")
    say(
        f"files: {Path(report['run_dir']) / ('metrics_' + report['split'] + '.json')}, "
        f"{', '.join(report.get('figures', []))}"
    )


# ------------------------------------------------------------------------------------------------
# recon
# ------------------------------------------------------------------------------------------------
def _check_writable(out: Path) -> None:
    """Refuse an OUTPUT whose folder cannot be written, before any work (creating the folder)."""
    out.parent.mkdir(parents=True, exist_ok=True)  # an OSError (EROFS, EACCES) names the path
    if out.is_dir():
        raise CommandError(f"OUTPUT {str(out)!r} is a folder: give the .h5 file to write")
    if not os.access(out.parent, os.W_OK):
        raise CommandError(
            f"OUTPUT {str(out)!r}: its folder is not writable (read-only, or no permission): "
            "choose another OUTPUT"
        )


def reconstruct_files(
    run_dir: str | os.PathLike[str],
    sources: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    weights: str = "best",
    image_size: int | None = None,
    device: str = "cpu",
    progress: bool = True,
    evaluate: bool = False,
    cache: str | None = None,
) -> dict[str, Any]:
    """Reconstruct every slice of fastMRI-format files (``memroll recon``).

    Each file is read as the run's task reads fastMRI data (:func:`unrolled.make_dataset` with
    ``root=``): coil maps from the coil-map cache (``cache``, default beside the file), the
    file's own ``mask`` when it has one, else the run's undersampling (a 1D mask of its
    acceleration, seeded per slice) applied to the fully sampled k-space. Each output gets
    fastMRI's submission layout: ``reconstruction``, float32 magnitude in the input's units,
    ``(slices, h, w)`` with ``(h, w)`` the header's reconstruction matrix, and attributes naming
    the run; it is written atomically. ``output`` is a ``.h5`` file for one input, else a folder
    (files named as the inputs). With ``evaluate`` the files that carry ``reconstruction_rss``
    (``reconstruction_esc`` single-coil) are scored by :func:`unrolled.fastmri_metrics`.
    """
    from tqdm.auto import tqdm

    run = Path(run_dir)
    config = load_run_config(run)
    if config.task.name not in MRI_TASKS:
        raise CommandError(
            f"memroll recon reads fastMRI files, which only the MRI tasks ({', '.join(MRI_TASKS)}) "
            f"take; this run's task is {config.task.name!r}"
        )
    files = recon_inputs(sources)
    outputs = recon_outputs(files, output)
    import h5py

    for src, out in zip(files, outputs):  # before any work: every input read, every output written
        if not h5py.is_hdf5(src):
            raise CommandError(f"INPUT {str(src)!r} is not an HDF5 file (a fastMRI .h5 file)")
        _check_writable(out)
    datasets = [recon_dataset(config, src, image_size, cache) for src in files]
    model = build_model(config, datasets[0])
    weights_path = Path(_load_weights(model, run, weights, "recon")["file"])
    model.to(device).eval()
    written, rows, unscored = [], [], []
    total = sum(len(d) for d in datasets)
    with tqdm(total=total, desc="recon", unit="slice", disable=not progress) as bar:
        for src, out, data in zip(files, outputs, datasets):
            recon = reconstruct_volume(model, data, 0, device, bar.update)
            write_submission(out, recon, submission_attrs(config, run, weights_path, src, data))
            how = (
                f"undersampled retrospectively at R = {data.options['acceleration']:g}"
                if data.has_target
                else "with the file's own mask"
            )
            bar.write(f"reconstructed {len(recon)} slices of {src.name} ({how}) -> {out}")
            written.append({"input": str(src), "output": str(out), "shape": list(recon.shape)})
            if evaluate:
                scored = score_volumes(data, [(0, recon)])
                rows += scored
                unscored += [] if scored else [src.name]
    reference = (
        "reconstruction_rss" if config.task.name == "multicoil_mri" else ("reconstruction_esc")
    )
    if evaluate:
        print_scores(rows, unscored, reference)
    else:
        say("memroll recon --evaluate scores files that carry the reference with fastMRI's metrics")
    return {"files": written, "fastmri": rows, "mean": mean_scores(rows)}


def reconstruct_file(
    run_dir: str | os.PathLike[str],
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    **options: Any,
) -> dict[str, Any]:
    """Reconstruct one fastMRI file into ``output`` (:func:`reconstruct_files` of one file).

    Returns ``output``, ``slices`` and ``shape`` (``(slices, h, w)``), and ``fastmri`` scores.
    """
    done = reconstruct_files(run_dir, [source], output, **options)
    first = done["files"][0]
    return {
        "output": first["output"],
        "slices": first["shape"][0],
        "shape": first["shape"],
        "fastmri": done["fastmri"],
    }
