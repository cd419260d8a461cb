"""The ``memroll`` command line: ``train``, ``eval``, ``recon``, ``bench``, ``demo``, ``configs``.

==============================================  ================================================
command                                         what it does
==============================================  ================================================
``memroll train CONFIG [--strategy S]           trains the configuration's model on its task
[--set key=value ...] [--run-dir DIR]``         (a TOML file, or a shipped config's name) into a
                                                run folder, then scores it on the test split
``memroll train --resume RUN_DIR``              continues a run from its last checkpoint
                                                (bit-identical to a run that never stopped)
``memroll eval RUN_DIR [--split test]``         PSNR, SSIM, nRMSE per sample and mean (std),
                                                against the zero-filled (adjoint) input, and a
                                                figure
``memroll recon RUN_DIR INPUT.h5 OUTPUT.h5``    reconstructs every slice of a fastMRI file
``memroll bench ...``                           the benchmark (papers' tables in miniature)
``memroll demo``                                every memory strategy on one small MoDL
``memroll configs [NAME]``                      lists the shipped configs, or prints one
==============================================  ================================================

A run folder holds ``config.toml`` (the configuration as trained, with the strategy chosen),
the files of :func:`unrolled.train` (``checkpoint.pt``, ``best.pt``, ``log.csv``, ``val.csv``,
``train_result.json``), and what ``memroll eval`` writes: ``metrics_<split>.json`` (means,
standard deviations, per-sample rows, the baselines, PSNR after every stage),
``metrics_<split>.csv`` (per sample) and ``recon_<split>.png``.

Errors in the input (an unknown config key, a bad value, a missing file) end the command with
exit status 2 and one line naming the problem; ``MEMROLL_TRACEBACK=1`` shows the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ._config import (
    MODELS,
    RunConfig,
    build_model,
    config_path,
    count_parameters,
    dump_config,
    load_config,
    make_task,
    shipped_configs,
)
from ._cs import CompressedSensing
from ._evaluate import MetricsTable, evaluate, load_model, psnr_per_stage
from ._run import atomic_text
from ._tasks import TASKS, TaskDataset
from ._train import train

__all__ = ["build_parser", "evaluate_run", "main", "reconstruct_file", "train_config"]

CONFIG_FILE = "config.toml"
MRI_TASKS = ("multicoil_mri", "singlecoil_mri")
# options that may change when a run resumes (unrolled.train checks the training options too)
_RESUMABLE = {
    "train.steps",
    "train.val_every",
    "train.checkpoint_every",
    "train.log_every",
    "train.device",
    "train.num_workers",
    "train.progress",
    "description",
}


class CommandError(ValueError):
    """A problem with the command's input, reported as one line and exit status 2."""


def _say(*parts: object) -> None:
    print(*parts, flush=True)


def _megabytes(value: float | int | None) -> str:
    return "n/a" if value is None else f"{value / 1e6:.1f} MB"


# ------------------------------------------------------------------------------------------------
# train
# ------------------------------------------------------------------------------------------------
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
        if key in _RESUMABLE or key.startswith("eval."):
            continue
        if old.get(key) != now.get(key):
            raise CommandError(
                f"cannot resume with {key} changed (the run has {old.get(key)!r}, now "
                f"{now.get(key)!r}): a resumed run continues the same training; only "
                f"{', '.join(sorted(_RESUMABLE - {'description'}))} and eval.* may change"
            )


def _with_root(overrides: list[str], fastmri: str | None, config: RunConfig | None) -> list[str]:
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


def _default_run_dir(config: RunConfig, strategy: str) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.name}-{strategy}-{stamp}"


def train_config(
    config: RunConfig,
    run_dir: str | os.PathLike[str],
    *,
    strategy: str | None = None,
    resume: bool = False,
    progress: bool = True,
    evaluate_after: bool = True,
    header: str = "",
) -> dict[str, Any]:
    """Train ``config`` into ``run_dir`` (``memroll train``); returns ``train_result.json``'s
    content, plus ``"metrics"`` (the test-split summary) when ``evaluate_after``."""
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
    run.mkdir(parents=True, exist_ok=True)
    atomic_text(run / CONFIG_FILE, dump_config(config, header))
    options = _train_options(config, run, resume, progress)
    _warm_up(model, train_data, val_data)
    _say(
        f"{'resuming' if resume else 'training'} {config.name}: {config.model.name} "
        f"({count_parameters(model):,} parameters) on {config.task.name}, strategy "
        f"{chosen.describe()}, {config.train.steps} steps -> {run}"
    )
    result = train(model, train_data, val_data, strategy=chosen, **options)
    summary = result.summary()
    training = (
        None
        if result.peak_memory_bytes is None or result.memory_baseline_bytes is None
        else result.peak_memory_bytes - result.memory_baseline_bytes
    )
    _say(
        f"trained {result.steps} steps: final loss {result.final_loss:.4g}, peak training memory "
        f"{_megabytes(training)} ({result.memory_kind}), {result.median_step_time_s:.3f} s per "
        "step (median)"
    )
    if evaluate_after:
        summary["metrics"] = evaluate_run(run, device=config.train.device)
    recon = f"; memroll recon {run} IN.h5 OUT.h5 reconstructs fastMRI files"
    _say(
        f"run folder {run}: memroll eval {run} scores it; memroll train --resume {run} --set "
        f"train.steps=N trains it further{recon if config.task.name in MRI_TASKS else ''}"
    )
    return summary


def _warm_up(model: nn.Module, train_data: TaskDataset, val_data: TaskDataset) -> None:
    """Do once, before the measured training loop, what would otherwise happen inside it for
    the first time, so that the peak training memory the run records is the training's own.

    On a CPU the peak RSS also counts one-time costs: scikit-image loads its metric modules
    lazily on the first PSNR (about 50 MB), each split builds its shared data on its first item,
    and the first convolution and FFT fault in pages of torch's code (measured 11 to 31 MB,
    depending on the installation). This runs the metrics, reads an item of each split, and
    runs one forward and backward pass of the model on one training sample, then restores the
    model's state and drops its gradients: the training that follows is unchanged (it seeds its
    random numbers itself, or restores them when it resumes)."""
    from ._evaluate import extra_buffers
    from ._metrics import nrmse, psnr, ssim

    sample = val_data.batch([0])
    for metric in (psnr, ssim, nrmse):
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
    with torch.no_grad():
        for name, value in buffers.items():
            model.get_buffer(name).copy_(value)
    for parameter in model.parameters():
        parameter.grad = None
    model.train(was_training)


def _train_options(config: RunConfig, run: Path, resume: bool, progress: bool) -> dict[str, Any]:
    options = dataclasses.asdict(config.train)
    for key in ("run_dir", "resume", "strategy_options"):
        options.pop(key)
    options.update(run_dir=str(run), resume=resume, progress=progress and config.train.progress)
    return options


def _cmd_train(args: argparse.Namespace) -> int:
    overrides = list(args.set or [])
    if args.device is not None:
        overrides.append(f"train.device={json.dumps(args.device)}")
    if args.resume is not None:
        if args.config is not None:
            raise CommandError(
                "give either CONFIG (a new run) or --resume RUN_DIR (continue a run), not both"
            )
        run = Path(args.resume)
        if not (run / CONFIG_FILE).is_file():
            raise CommandError(
                f"--resume {str(run)!r}: no {CONFIG_FILE} there; is it a run folder of memroll "
                "train?"
            )
        if not (run / "checkpoint.pt").is_file():
            raise CommandError(
                f"--resume {str(run)!r}: the run has no checkpoint.pt yet (it stopped before "
                "its first checkpoint); start it again with memroll train CONFIG --run-dir"
            )
        saved = load_config(run / CONFIG_FILE)
        config = load_config(run / CONFIG_FILE, _with_root(overrides, args.fastmri, saved))
        _check_resumable(saved, config)
        # weights_only=False: a training checkpoint holds optimizer and RNG states (our own file)
        step = int(
            torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)["step"]
        )
        if config.train.steps < step:
            raise CommandError(
                f"cannot resume with train.steps={config.train.steps}: the run is at step {step}; "
                f"pass --set train.steps=N with N >= {step}"
            )
        if args.strategy is not None and args.strategy != saved.strategy.name:
            raise CommandError(
                f"cannot resume with --strategy {args.strategy}: the run trains with "
                f"{saved.strategy.name!r}"
            )
        train_config(
            config,
            run,
            resume=True,
            progress=not args.no_progress,
            evaluate_after=not args.no_eval,
            header=f"memroll train --resume {run}",
        )
        return 0
    if args.config is None:
        raise CommandError("give a CONFIG (a TOML file or a shipped config's name) or --resume")
    base = load_config(args.config)
    config = load_config(args.config, _with_root(overrides, args.fastmri, base))
    strategy = args.strategy or config.strategy.name
    run = Path(args.run_dir) if args.run_dir else _default_run_dir(config, strategy)
    source = config_path(args.config)
    header = "\n".join(
        [
            f"the configuration of this run, as trained (from {source}",
            *(f"  --set {s}" for s in overrides),
            f"  --strategy {strategy}); memroll train --resume {run} continues it",
        ]
    )
    train_config(
        config,
        run,
        strategy=strategy,
        progress=not args.no_progress,
        evaluate_after=not args.no_eval,
        header=header,
    )
    return 0


# ------------------------------------------------------------------------------------------------
# eval
# ------------------------------------------------------------------------------------------------
class _InputBaseline(nn.Module):
    """The reconstruction without a model: ``x0`` when the task gives one (deblurring: the
    blurry image), else the adjoint ``A^H y`` (MRI: the zero-filled image)."""

    def forward(self, y: Tensor, physics: nn.Module, x0: Tensor | None = None) -> Tensor:
        return x0 if x0 is not None else physics.adjoint(y)  # type: ignore[operator]


def _input_label(task: str) -> str:
    return {"deblur": "blurred input", "ct": "A^T y"}.get(task, "zero-filled")


def _load_run(
    run: Path, overrides: Sequence[str] = (), fastmri: str | None = None
) -> tuple[RunConfig, Path]:
    if not (run / CONFIG_FILE).is_file():
        raise CommandError(
            f"{str(run)!r} is not a run folder of memroll train (no {CONFIG_FILE} there)"
        )
    saved = load_config(run / CONFIG_FILE)
    config = load_config(run / CONFIG_FILE, _with_root(list(overrides), fastmri, saved))
    return config, run


def _weights_file(run: Path, weights: str) -> Path:
    best, last = run / "best.pt", run / "checkpoint.pt"
    if weights == "best" and best.is_file():
        return best
    if last.is_file():
        return last
    raise CommandError(f"{str(run)!r} has no trained weights yet (no best.pt or checkpoint.pt)")


def _summary_line(label: str, table: MetricsTable) -> str:
    means, stds = table.mean(), table.std()
    return (
        f"{label:<22} {means['psnr']:7.2f} ({stds['psnr']:.2f})  {means['ssim']:.4f} "
        f"({stds['ssim']:.4f})  {means['nrmse']:.4f} ({stds['nrmse']:.4f})"
    )


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
    """Score a run's model on a split (``memroll eval``): writes ``metrics_<split>.json``,
    ``metrics_<split>.csv`` and ``recon_<split>.png`` into the run folder; returns the JSON's
    content."""
    from ._plots import Panel, comparison_figure, display_image

    run = Path(run_dir)
    config, _ = _load_run(run, overrides, fastmri)
    split = split or config.eval.split
    chosen = weights or config.eval.weights
    data = make_task(config, split)
    model = build_model(config, data)
    source = _weights_file(run, chosen)
    info = load_model(model, source)
    model.to(device)
    limit = config.eval.samples
    kwargs = {"batch_size": config.eval.batch_size, "device": device, "max_samples": limit}
    table = evaluate(model, data, **kwargs)  # type: ignore[arg-type]
    baselines: dict[str, MetricsTable] = {}
    probe = data.batch([0])
    if callable(getattr(probe.physics, "adjoint", None)):
        baselines[_input_label(config.task.name)] = evaluate(
            _InputBaseline(),  # type: ignore[arg-type]
            data,
            **kwargs,  # type: ignore[arg-type]
        )
    cs_model: CompressedSensing | None = None
    if config.eval.cs_lamda is not None and config.task.name in (*MRI_TASKS, "mri3d"):
        try:
            cs_model = CompressedSensing(config.eval.cs_lamda, config.eval.cs_iterations)
        except ImportError as err:
            _say(f"note: the CS baseline is left out ({err})")
        if cs_model is not None:
            baselines["CS (l1-wavelet)"] = evaluate(cs_model, data, **kwargs)  # type: ignore[arg-type]
    stages = psnr_per_stage(
        model, data, batch_size=config.eval.batch_size, device=device, max_samples=limit
    )
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
        "psnr_per_stage": stages,
        "per_sample": table.rows,
    }
    if not data.has_target:
        report["note"] = "these data have no reference (fastMRI test files): metrics are void"
    atomic_text(run / f"metrics_{split}.json", json.dumps(report, indent=2) + "\n")
    table.to_csv(run / f"metrics_{split}.csv")
    if figure:
        count = min(config.eval.figure_samples, len(table))
        batch = data.batch(list(range(count))).to(device)
        model.eval()
        with torch.no_grad():
            x_hat = model(batch.y, batch.physics, batch.x0)
            inputs = _InputBaseline()(batch.y, batch.physics, batch.x0) if len(baselines) else None
        color = data.color_channels is not None
        for i in range(count):
            row = table.rows[i]
            panels = []
            if inputs is not None:
                label = _input_label(config.task.name)
                panels.append(Panel(label, display_image(inputs[i], color)))
            panels.append(
                Panel(
                    f"{config.model.name}\n{row['psnr']:.2f} dB, SSIM {row['ssim']:.3f}",
                    display_image(x_hat[i], color),
                )
            )
            name = f"recon_{split}.png" if i == 0 else f"recon_{split}_{i}.png"
            comparison_figure(
                run / name,
                Panel("reference", display_image(batch.target[i], color)),
                panels,
                title=f"{config.name}, {split} sample {i} ({source.name}, step {info.get('step')})",
            )
        report["figures"] = sorted(p.name for p in run.glob(f"recon_{split}*.png"))
    if not quiet:
        _print_report(report, table, baselines, config)
    return report


def _print_report(
    report: dict[str, Any],
    table: MetricsTable,
    baselines: dict[str, MetricsTable],
    config: RunConfig,
) -> None:
    _say(
        f"{config.name}: {report['model']} ({report['strategy']}), weights {report['weights']} "
        f"(step {report['step']}), {report['split']} split, {len(table)} samples"
    )
    _say(f"{'sample':<22} {'PSNR (dB)':>9}  {'SSIM':>6}  {'nRMSE':>7}")
    for row in table.rows:
        _say(f"{int(row['sample']):<22} {row['psnr']:9.2f}  {row['ssim']:.4f}  {row['nrmse']:.4f}")
    _say(f"{'':<22} mean (std)")
    _say(_summary_line(f"{config.model.name}", table))
    for name, base in baselines.items():
        _say(_summary_line(name, base))
    if "note" in report:
        _say(f"note: {report['note']}")
    _say(
        f"files: {Path(report['run_dir']) / ('metrics_' + report['split'] + '.json')}, "
        f"{', '.join(report.get('figures', []))}"
    )


def _cmd_eval(args: argparse.Namespace) -> int:
    evaluate_run(
        Path(args.run_dir),
        split=args.split,
        weights=args.weights,
        overrides=list(args.set or []),
        fastmri=args.fastmri,
        device=args.device or "cpu",
    )
    return 0


# ------------------------------------------------------------------------------------------------
# recon
# ------------------------------------------------------------------------------------------------
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
    the input's units (fastMRI's submission layout), and attributes naming the run.
    """
    import h5py
    from tqdm.auto import tqdm

    run = Path(run_dir)
    config, _ = _load_run(run)
    if config.task.name not in MRI_TASKS:
        raise CommandError(
            f"memroll recon reads fastMRI files, which only the MRI tasks ({', '.join(MRI_TASKS)}) "
            f"take; this run's task is {config.task.name!r}"
        )
    src = Path(source)
    if not src.is_file():
        raise CommandError(f"INPUT {str(src)!r} is not a file (a fastMRI .h5 file)")
    out = Path(output)
    if out.resolve() == src.resolve():
        raise CommandError("OUTPUT must differ from INPUT (the input file is never overwritten)")
    options: dict[str, Any] = {"root": str(src), "image_size": image_size}
    if config.task.options.get("mask") not in (None, "random", "equispaced"):
        options["mask"] = None  # 2D masks of the embedded data: fastMRI files take 1D columns
    data: TaskDataset = make_task(config, "test", **options)
    model = build_model(config, data)
    weights_path = _weights_file(run, weights)
    load_model(model, weights_path)
    model.to(device).eval()
    images, scores = [], []
    from ._metrics import psnr

    for index in tqdm(range(len(data)), desc="recon", unit="slice", disable=not progress):
        sample = data[index]
        batch = data.collate([sample]).to(device)
        with torch.no_grad():
            x_hat = model(batch.y, batch.physics, batch.x0)
        if data.has_target:
            scores.append(float(psnr(x_hat.cpu(), batch.target.cpu())[0]))
        scale = float(sample["scale"])
        magnitude = (x_hat.abs() if x_hat.is_complex() else x_hat)[0] / scale
        images.append(magnitude.to(torch.float32).cpu().numpy())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with h5py.File(tmp, "w") as f:
            import numpy as np

            f.create_dataset("reconstruction", data=np.stack(images))
            f.attrs["memroll_run"] = str(run)
            f.attrs["memroll_config"] = config.name
            f.attrs["model"] = config.model.name
            f.attrs["weights"] = weights_path.name
            f.attrs["source"] = str(src)
            f.attrs["retrospective_undersampling"] = bool(data.has_target)
            if data.has_target:
                f.attrs["acceleration"] = float(data.options["acceleration"])
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    result: dict[str, Any] = {
        "output": str(out),
        "slices": len(images),
        "shape": list(images[0].shape) if images else [],
        "psnr_per_slice": scores,
    }
    how = (
        f"undersampled retrospectively at R = {data.options['acceleration']:g}"
        if data.has_target
        else "with the file's own mask"
    )
    _say(f"reconstructed {len(images)} slices of {src.name} ({how}) -> {out}")
    if scores:
        _say(
            f"PSNR against the file's fully sampled image: {sum(scores) / len(scores):.2f} dB "
            "(mean over slices)"
        )
    return result


def _cmd_recon(args: argparse.Namespace) -> int:
    reconstruct_file(
        args.run_dir,
        args.input,
        args.output,
        weights=args.weights,
        image_size=args.image_size,
        device=args.device or "cpu",
        progress=not args.no_progress,
    )
    return 0


# ------------------------------------------------------------------------------------------------
# configs, bench, demo
# ------------------------------------------------------------------------------------------------
def _cmd_configs(args: argparse.Namespace) -> int:
    if args.name is not None:
        print(config_path(args.name).read_text(), end="")
        return 0
    _say("shipped configs (memroll train NAME; memroll configs NAME prints one):")
    for name, path in shipped_configs().items():
        config = load_config(path)
        first = config.description.strip().splitlines()[0] if config.description.strip() else ""
        _say(f"  {name:<16} {config.model.name:<12} {config.task.name:<15} {first}")
    _say(f"models: {', '.join(MODELS)}; tasks: {', '.join(TASKS)}")
    return 0


def _bench_module() -> Any:
    try:
        return importlib.import_module("unrolled._bench")
    except ModuleNotFoundError as err:
        if err.name != "unrolled._bench":
            raise
        return None


def _cmd_bench_unavailable(args: argparse.Namespace) -> int:
    print(
        "memroll bench: the benchmark is not available in this version of memroll-unrolled yet",
        file=sys.stderr,
    )
    return 2


def build_parser() -> argparse.ArgumentParser:
    """The ``memroll`` argument parser."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="memroll",
        description="Train physics-based unrolled networks with memory-saving strategies.",
    )
    parser.add_argument("--version", action="version", version=f"memroll {__version__}")
    parser.add_argument(
        "--threads",
        dest="torch_threads",  # `memroll bench` has a --threads of its own
        type=int,
        default=None,
        help="torch intra-op threads of this process (default: torch's choice)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = commands.add_parser("train", help="train a model from a config file into a run folder")
    p.add_argument(
        "config", nargs="?", help="a TOML config file, or a shipped config's name (memroll configs)"
    )
    p.add_argument(
        "--strategy", choices=("backprop", "checkpoint", "reversible", "greedy", "implicit")
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set model.iterations=4 (repeatable)",
    )
    p.add_argument("--run-dir", help="the run folder (default runs/<name>-<strategy>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    p.add_argument("--fastmri", metavar="PATH", help="train on your fastMRI files (MRI configs)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: the config's train.device)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-eval", action="store_true", help="skip the test-split evaluation")
    p.set_defaults(handler=_cmd_train)

    p = commands.add_parser("eval", help="score a run on its test split, with a figure")
    p.add_argument("run_dir", help="a run folder of memroll train")
    p.add_argument("--split", choices=("train", "val", "test"), help="default: the config's")
    p.add_argument("--weights", choices=("best", "last"), help="best.pt (default) or checkpoint.pt")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--fastmri", metavar="PATH", help="score on your fastMRI files (MRI runs)")
    p.add_argument("--device", help="default cpu")
    p.set_defaults(handler=_cmd_eval)

    p = commands.add_parser("recon", help="reconstruct a fastMRI-format .h5 file")
    p.add_argument("run_dir", help="a run folder of memroll train (an MRI task)")
    p.add_argument("input", help="a fastMRI .h5 file (fully sampled, or with its own mask)")
    p.add_argument("output", help="the .h5 file to write (key 'reconstruction')")
    p.add_argument("--weights", choices=("best", "last"), default="best")
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="crop every slice to N x N (default: the file's reconstruction size)",
    )
    p.add_argument("--device", help="default cpu")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_cmd_recon)

    p = commands.add_parser("bench", help="the benchmark: the papers' tables in miniature")
    bench = _bench_module()
    if bench is not None:
        bench.add_arguments(p)
        p.set_defaults(handler=bench.run)
    else:
        p.set_defaults(handler=_cmd_bench_unavailable)

    from . import _demo

    p = commands.add_parser("demo", help="every memory strategy on one small MoDL, compared")
    _demo.add_arguments(p)
    p.set_defaults(handler=_demo.run)

    p = commands.add_parser("configs", help="list the shipped configs, or print one")
    p.add_argument("name", nargs="?", help="a shipped config's name")
    p.set_defaults(handler=_cmd_configs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``memroll`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.torch_threads is not None:
        if args.torch_threads < 1:
            parser.error(f"--threads must be a positive integer, got {args.torch_threads}")
        torch.set_num_threads(args.torch_threads)
    start = time.perf_counter()
    try:
        status = int(args.handler(args))
    except KeyboardInterrupt:
        print("memroll: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`memroll configs | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (ValueError, TypeError, FileNotFoundError, ImportError, FloatingPointError) as err:
        if os.environ.get("MEMROLL_TRACEBACK"):
            raise
        print(f"memroll {args.command}: error: {err}", file=sys.stderr)
        return 2
    if args.command in ("train", "eval", "recon"):
        _say(f"({args.command} took {time.perf_counter() - start:.1f} s)")
    return status


if __name__ == "__main__":  # pragma: no cover - python -m unrolled._cli
    sys.exit(main())
