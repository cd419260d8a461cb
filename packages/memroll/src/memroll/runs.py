"""Run folders: train a configuration, score it, reconstruct fastMRI files with it.

The work behind ``memroll train``, ``memroll eval`` and ``memroll recon``, shared by the command
line, the demo and the benchmark (:func:`train_config`, :func:`evaluate_run`,
:func:`reconstruct_file`).

A run folder holds ``config.toml`` (the configuration as trained, with the strategy chosen),
the files of :func:`unrolled.train` (``checkpoint.pt``, ``best.pt``, ``log.csv``, ``val.csv``,
``train_result.json``), and what :func:`evaluate_run` writes: ``metrics_<split>.json`` (means,
standard deviations, per-sample rows, the baselines, PSNR after every stage),
``metrics_<split>.csv`` (per sample) and ``recon_<split>.png``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import unrolled
from unrolled.training import atomic_path, atomic_write_text, extra_buffers, load_buffers

from . import plots
from ._console import CommandError, megabytes, say
from .config import RunConfig, build_model, dump_config, load_config, make_task

__all__ = [
    "CONFIG_FILE",
    "MRI_TASKS",
    "InputBaseline",
    "evaluate_run",
    "load_run_config",
    "reconstruct_file",
    "resume_config",
    "train_config",
    "with_fastmri",
]

CONFIG_FILE = "config.toml"
MRI_TASKS = ("multicoil_mri", "singlecoil_mri")
# options that may change when a run resumes (unrolled.train checks the training options too)
RESUMABLE = {
    "train.steps",
    "train.val_every",
    "train.checkpoint_every",
    "train.log_every",
    "train.device",
    "train.num_workers",
    "train.progress",
    "description",
}


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

    Returns ``train_result.json``'s content, plus ``"metrics"`` (the test-split summary) when
    ``evaluate_after``. In a torchrun job every rank calls it; only the ``main`` one (rank 0)
    writes the run folder, prints and evaluates.
    """
    run = Path(run_dir)
    chosen = config.strategy.resolve(strategy)
    config.strategy.name = chosen.name
    if not resume and (run / "checkpoint.pt").exists():
        raise CommandError(
            f"{str(run)!r} already holds a run (checkpoint.pt): continue it with memroll train "
            "--resume, or choose another --run-dir"
        )
    train_data = make_task(config, "train")
    val_data = make_task(config, "val")
    model = build_model(config, train_data)
    note = say if main else _quiet
    if main:
        run.mkdir(parents=True, exist_ok=True)
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


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value and prefix.count(".") < 1:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _check_resumable(saved: RunConfig, new: RunConfig) -> None:
    old, now = _flatten(saved.to_data()), _flatten(new.to_data())
    for key in sorted(set(old) | set(now)):
        if key in RESUMABLE or key.startswith("eval."):
            continue
        if old.get(key) != now.get(key):
            raise CommandError(
                f"cannot resume with {key} changed (the run has {old.get(key)!r}, now "
                f"{now.get(key)!r}): a resumed run continues the same training; only "
                f"{', '.join(sorted(RESUMABLE - {'description'}))} and eval.* may change"
            )


def with_fastmri(overrides: list[str], fastmri: str | None, config: RunConfig | None) -> list[str]:
    """Return ``overrides`` plus ``task.root=FASTMRI`` (``--fastmri``), checked against the task."""
    if fastmri is None:
        return overrides
    if config is not None and config.task.name not in MRI_TASKS:
        raise CommandError(
            f"--fastmri reads fastMRI files, which only the MRI tasks ({', '.join(MRI_TASKS)}) "
            f"take; this config's task is {config.task.name!r} (it runs on the embedded "
            "real-anatomy data)"
        )
    if not Path(fastmri).exists():
        raise CommandError(f"--fastmri {fastmri!r} does not exist: give a .h5 file or a folder")
    return [*overrides, f"task.root={json.dumps(str(fastmri))}"]


def resume_config(
    run: Path, overrides: list[str], fastmri: str | None, strategy: str | None
) -> RunConfig:
    """Return the configuration a resumed run continues with (``memroll train --resume``).

    Raises :class:`CommandError` when ``run`` is no run folder with a checkpoint, when an option
    that must not change did (the model, the data, the strategy), or when ``train.steps`` is below
    the checkpoint's step.
    """
    if not (run / CONFIG_FILE).is_file():
        raise CommandError(
            f"--resume {str(run)!r}: no {CONFIG_FILE} there; is it a run folder of memroll train?"
        )
    if not (run / "checkpoint.pt").is_file():
        raise CommandError(
            f"--resume {str(run)!r}: the run has no checkpoint.pt yet (it stopped before "
            "its first checkpoint); start it again with memroll train CONFIG --run-dir"
        )
    saved = load_config(run / CONFIG_FILE)
    config = load_config(run / CONFIG_FILE, with_fastmri(overrides, fastmri, saved))
    _check_resumable(saved, config)
    # weights_only=False: a training checkpoint holds optimizer and RNG states (our own file)
    step = int(torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)["step"])
    if config.train.steps < step:
        raise CommandError(
            f"cannot resume with train.steps={config.train.steps}: the run is at step {step}; "
            f"pass --set train.steps=N with N >= {step}"
        )
    if strategy is not None and strategy != saved.strategy.name:
        raise CommandError(
            f"cannot resume with --strategy {strategy}: the run trains with {saved.strategy.name!r}"
        )
    return config


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


def _weights_file(run: Path, weights: str) -> Path:
    best, last = run / "best.pt", run / "checkpoint.pt"
    if weights == "best" and best.is_file():
        return best
    if last.is_file():
        return last
    raise CommandError(f"{str(run)!r} has no trained weights yet (no best.pt or checkpoint.pt)")


def _baselines(
    config: RunConfig, data: unrolled.TaskDataset, kwargs: dict[str, Any]
) -> dict[str, unrolled.MetricsTable]:
    """Score the input (zero-filled) baseline, and CS when the config asks for it."""
    baselines: dict[str, unrolled.MetricsTable] = {}
    probe = data.batch([0])
    if callable(getattr(probe.physics, "adjoint", None)):
        baselines[_input_label(config.task.name)] = unrolled.evaluate(
            InputBaseline(), data, **kwargs
        )
    if config.eval.cs_lamda is not None and config.task.name in (*MRI_TASKS, "mri3d"):
        try:
            cs_model = unrolled.CompressedSensing(config.eval.cs_lamda, config.eval.cs_iterations)
        except ImportError as err:
            say(f"note: the CS baseline is left out ({err})")
        else:
            baselines["CS (l1-wavelet)"] = unrolled.evaluate(cs_model, data, **kwargs)
    return baselines


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

    Writes ``metrics_<split>.json``, ``metrics_<split>.csv`` and ``recon_<split>.png`` into the
    run folder; returns the JSON's content.
    """
    run = Path(run_dir)
    config = load_run_config(run, overrides, fastmri)
    split = split or config.eval.split
    data = make_task(config, split)
    model = build_model(config, data)
    source = _weights_file(run, weights or config.eval.weights)
    info = unrolled.load_model(model, source)
    model.to(device)
    kwargs: dict[str, Any] = {"batch_size": config.eval.batch_size, "device": device}
    kwargs["max_samples"] = config.eval.samples
    table = unrolled.evaluate(model, data, **kwargs)
    baselines = _baselines(config, data, kwargs)
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
    if not data.has_target:
        report["note"] = "these data have no reference (fastMRI test files): metrics are void"
    atomic_write_text(run / f"metrics_{split}.json", json.dumps(report, indent=2) + "\n")
    table.to_csv(run / f"metrics_{split}.csv")
    if figure:
        title = f"{config.name}, {split} sample {{i}} ({source.name}, step {info.get('step')})"
        report["figures"] = _figures(
            run, split, config, data, model, table, title, device, with_input=bool(baselines)
        )
    if not quiet:
        _print_report(report, table, baselines, config)
    return report


def _figures(
    run: Path,
    split: str,
    config: RunConfig,
    data: unrolled.TaskDataset,
    model: nn.Module,
    table: unrolled.MetricsTable,
    title: str,
    device: str,
    *,
    with_input: bool,
) -> list[str]:
    """``recon_<split>[_i].png``.

    Reference, input and reconstruction of the first samples (``title`` is formatted with the sample
    index ``i``).
    """
    count = min(config.eval.figure_samples, len(table))
    batch = data.batch(list(range(count))).to(device)
    model.eval()
    with torch.no_grad():
        x_hat = model(batch.y, batch.physics, batch.x0)
        inputs = InputBaseline()(batch.y, batch.physics, batch.x0) if with_input else None
    color = data.color_channels is not None
    for i in range(count):
        row = table.rows[i]
        panels = []
        if inputs is not None:
            label = _input_label(config.task.name)
            panels.append(plots.Panel(label, plots.display_image(inputs[i], color)))
        label = f"{config.model.name}\n{row['psnr']:.2f} dB, SSIM {row['ssim']:.3f}"
        panels.append(plots.Panel(label, plots.display_image(x_hat[i], color)))
        name = f"recon_{split}.png" if i == 0 else f"recon_{split}_{i}.png"
        plots.comparison_figure(
            run / name,
            plots.Panel("reference", plots.display_image(batch.target[i], color)),
            panels,
            title=title.format(i=i),
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
    if "note" in report:
        say(f"note: {report['note']}")
    say(
        f"files: {Path(report['run_dir']) / ('metrics_' + report['split'] + '.json')}, "
        f"{', '.join(report.get('figures', []))}"
    )


# ------------------------------------------------------------------------------------------------
# recon
# ------------------------------------------------------------------------------------------------
def _recon_data(
    config: RunConfig, src: Path, out: Path, image_size: int | None
) -> unrolled.TaskDataset:
    """Return the file read as the run's task reads fastMRI data (``out`` another file)."""
    if config.task.name not in MRI_TASKS:
        raise CommandError(
            f"memroll recon reads fastMRI files, which only the MRI tasks ({', '.join(MRI_TASKS)}) "
            f"take; this run's task is {config.task.name!r}"
        )
    if not src.is_file():
        raise CommandError(f"INPUT {str(src)!r} is not a file (a fastMRI .h5 file)")
    if out.resolve() == src.resolve():
        raise CommandError("OUTPUT must differ from INPUT (the input file is never overwritten)")
    options: dict[str, Any] = {"root": str(src), "image_size": image_size}
    if config.task.options.get("mask") not in (None, "random", "equispaced"):
        options["mask"] = None  # 2D masks of the embedded data: fastMRI files take 1D columns
    return make_task(config, "test", **options)


def _reconstruct_slices(
    model: nn.Module, data: unrolled.TaskDataset, device: str, progress: bool
) -> tuple[list[np.ndarray], list[float]]:
    """Every slice's magnitude in the input's units, and its PSNR where there is a target."""
    from tqdm.auto import tqdm

    images, scores = [], []
    for index in tqdm(range(len(data)), desc="recon", unit="slice", disable=not progress):
        sample = data[index]
        batch = data.collate([sample]).to(device)
        with torch.no_grad():
            x_hat = model(batch.y, batch.physics, batch.x0)
        if data.has_target:
            scores.append(float(unrolled.psnr(x_hat.cpu(), batch.target.cpu())[0]))
        scale = float(sample["scale"])
        magnitude = (x_hat.abs() if x_hat.is_complex() else x_hat)[0] / scale
        images.append(magnitude.to(torch.float32).cpu().numpy())
    return images, scores


def reconstruct_file(
    run_dir: str | os.PathLike[str],
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    weights: str = "best",
    image_size: int | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Reconstruct every slice of a fastMRI-format file (``memroll recon``).

    The file is read as the run's task reads fastMRI data (:func:`unrolled.make_dataset` with
    ``root=``): coil maps by ESPIRiT, the file's own ``mask`` when it has one, else the run's
    undersampling (a 1D mask of its acceleration, seeded per slice) applied to the fully sampled
    k-space. ``OUTPUT.h5`` gets ``reconstruction`` ``(slices, H, W)`` float32, the magnitude in
    the input's units (fastMRI's submission layout), and attributes naming the run; it is
    written atomically.
    """
    import h5py

    run, src, out = Path(run_dir), Path(source), Path(output)
    config = load_run_config(run)
    data = _recon_data(config, src, out, image_size)
    model = build_model(config, data)
    weights_path = _weights_file(run, weights)
    unrolled.load_model(model, weights_path)
    model.to(device).eval()
    images, scores = _reconstruct_slices(model, data, device, progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("reconstruction", data=np.stack(images))
        f.attrs.update(
            memroll_run=str(run),
            memroll_config=config.name,
            model=config.model.name,
            weights=weights_path.name,
            source=str(src),
            retrospective_undersampling=bool(data.has_target),
        )
        if data.has_target:
            f.attrs["acceleration"] = float(data.options["acceleration"])
    how = (
        f"undersampled retrospectively at R = {data.options['acceleration']:g}"
        if data.has_target
        else "with the file's own mask"
    )
    say(f"reconstructed {len(images)} slices of {src.name} ({how}) -> {out}")
    if scores:
        say(
            f"PSNR against the file's fully sampled image: {sum(scores) / len(scores):.2f} dB "
            "(mean over slices)"
        )
    return {
        "output": str(out),
        "slices": len(images),
        "shape": list(images[0].shape) if images else [],
        "psnr_per_slice": scores,
    }
