"""``memroll demo``: one small MoDL trained with every memory strategy, and the CS baseline.

The demo trains the shipped ``demo`` configuration (a 2D MoDL with the invertible coupling
prior, CG data consistency, on the embedded real-anatomy multi-coil data) once per strategy,
``backprop``, ``checkpoint``, ``reversible`` and ``greedy`` (GLEAM, one module per unroll), each
in a fresh process (``memroll train``, one thread; two at a time on a CPU with two cores or
more, ``--jobs``); scores each on the test split, with the l1-wavelet compressed-sensing baseline
and the zero-filled input; then prints one table and writes figures:

==============================  ===============================================================
file (in ``--out``)             content
==============================  ===============================================================
``results.md``                  the table (also printed), metrics as mean ± std over the test
                                slices
``results.json``                every figure of the table, per method
``reconstructions.png``         a test slice: reference, zero-filled, CS and every strategy,
                                with their error maps
``loss_curves.png``             training loss against step per strategy
``memory.png``                  peak training memory per strategy
``gleam_psnr_per_module.png``   PSNR after each module (greedy) or stage (the others)
``config.toml``                 the configuration every strategy trained
``runs/<strategy>/``            each run folder (``memroll eval``, ``memroll recon`` read them)
``memory/<strategy>/``          the memory probes' run folders
==============================  ===============================================================

Peak training memory comes from a *memory probe* per strategy: the same training for
:data:`PROBE_STEPS` steps in a fresh process with ``MALLOC_MMAP_THRESHOLD_=65536`` (so freed
tensors leave the RSS), where unrolled.train records the peak RSS of the training loop
minus the RSS when the loop started (on CUDA ``torch.cuda.max_memory_allocated``). The peak is
reached in the first step, when activations, gradients and Adam's state are alive together. The
full trainings run without the allocator setting, which slows CPU training 2.3x (every freed
tensor goes back to the system; measured on the demo's MoDL), so their times are the ones a
user sees: time per iteration is the median wall time of an optimizer step of the training.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import unrolled

from .. import plots
from .._console import CommandError
from ..config import RunConfig, build_model, dump_config, load_config, make_task
from ..runs import evaluate_run
from ._jobs import LAUNCH_ORDER, PROBE_STEPS, Job, probe_overrides, run_jobs
from ._table import format_table, markdown_table, table_row

__all__ = ["CONFIG", "QUICK", "STRATEGIES", "add_arguments", "run"]

STRATEGIES = ("backprop", "checkpoint", "reversible", "greedy")
CONFIG = "demo"
METRICS = ("psnr", "ssim", "nrmse")
# a smoke test of the whole pipeline in seconds (the numbers mean nothing)
QUICK = (
    "task.image_size=32",
    "task.num_coils=4",
    "model.iterations=2",
    "model.features=4",
    "model.cg_max_iter=5",
    "train.steps=3",
    "train.val_every=3",
    "train.checkpoint_every=3",
    "eval.samples=2",
    "eval.cs_iterations=5",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``memroll demo`` to ``parser``."""
    parser.add_argument(
        "--out", default="memroll-demo", help="folder of the results (default memroll-demo)"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="training steps per strategy (default: 150)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a seconds-long smoke test (meaningless numbers)"
    )
    parser.add_argument("--no-cs", action="store_true", help="leave out the CS baseline")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="trainings at a time, one thread each (default: 2, or 1 on a one-core machine)",
    )


@dataclass
class _Demo:
    """What one demo run has set up and measured so far."""

    config: RunConfig
    out: Path
    device: str
    jobs: int
    start: float
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    cs: dict[str, Any] | None = None
    cs_image: torch.Tensor | None = None

    @property
    def runs(self) -> Path:
        return self.out / "runs"

    @property
    def probes(self) -> Path:
        return self.out / "memory"

    @property
    def config_file(self) -> Path:
        return self.out / "config.toml"

    @property
    def probe_steps(self) -> int:
        return min(PROBE_STEPS, self.config.train.steps)


def run(args: argparse.Namespace) -> int:
    """``memroll demo``: train, score, tabulate, plot (see the module docstring)."""
    demo = _set_up(args)
    try:
        walls = _train(demo)
    except RuntimeError as err:
        print(f"memroll demo: {err}", file=sys.stderr)
        return 1
    _score(demo, walls)
    test = make_task(demo.config, "test")
    count = demo.config.eval.samples or len(test)
    if not args.no_cs:
        _compressed_sensing(demo, test, count)
    rows, rows_std, note = _table(demo, count)
    figures = _figures(demo, test)
    elapsed = time.perf_counter() - demo.start
    _write_results(demo, rows_std, note, elapsed, quick=bool(args.quick))
    _print_summary(demo, format_table(rows), note, figures, elapsed)
    return 0


# ------------------------------------------------------------------------------------------------
# the steps
# ------------------------------------------------------------------------------------------------
def _set_up(args: argparse.Namespace) -> _Demo:
    """Check the options, write the configuration and clear the previous run's folders."""
    start = time.perf_counter()
    torch.set_num_threads(1)
    out = Path(args.out)
    overrides = list(QUICK) if args.quick else []
    if args.steps is not None:
        if args.steps < 1:
            raise CommandError(f"--steps must be a positive integer, got {args.steps}")
        overrides.append(f"train.steps={args.steps}")
    config = load_config(CONFIG, overrides)
    if args.jobs is not None:
        jobs = args.jobs
    else:  # one GPU runs one training at a time; CPU cores one each
        jobs = 1 if str(args.device).startswith("cuda") else min(2, os.cpu_count() or 1)
    if jobs < 1:
        raise CommandError(f"--jobs must be a positive integer, got {jobs}")
    demo = _Demo(config, out, args.device, jobs, start)
    out.mkdir(parents=True, exist_ok=True)
    demo.config_file.write_text(dump_config(config, "the configuration memroll demo trained"))
    o, t = config.model.options, config.task.options
    print(
        f"memroll demo: a 2D MoDL ({o.get('iterations')} unrolls, coupling prior of "
        f"{o.get('features')} features) on real-anatomy {t.get('num_coils')}-coil MRI, "
        f"{t.get('image_size')} x {t.get('image_size')}, R = {t.get('acceleration')}, "
        f"{config.train.steps} steps of batch {config.train.batch_size} per strategy; each "
        "strategy in its own process with one thread",
        flush=True,
    )
    for strategy in STRATEGIES:
        for folder in (demo.runs / strategy, demo.probes / strategy):
            if folder.exists():  # the previous demo's run of this strategy
                shutil.rmtree(folder)
    return demo


def _train(demo: _Demo) -> dict[Path, float]:
    """Run the memory probes, then the trainings, each strategy in its own process."""
    order = [s for s in LAUNCH_ORDER if s in STRATEGIES]
    # memory: short probes with the allocator setting of the memory rules; the trainings run
    # without it (returning every freed tensor to the system slows CPU training 2.3x, measured)
    allocator = {"MALLOC_MMAP_THRESHOLD_": "65536"}
    steps = demo.probe_steps
    probe = probe_overrides(steps)
    jobs = [Job(s, demo.probes / s, steps, probe, allocator, "memory") for s in order]
    jobs += [Job(s, demo.runs / s, demo.config.train.steps) for s in order]
    return run_jobs(jobs, demo.config_file, demo.device, demo.jobs)


def _training_memory(run_dir: Path) -> tuple[float | None, str]:
    trained = json.loads((run_dir / "train_result.json").read_text())
    peak, base = trained["peak_memory_bytes"], trained["memory_baseline_bytes"]
    return (None if peak is None or base is None else peak - base), trained["memory_kind"]


def _means(summary: dict[str, Any], key: str = "mean") -> dict[str, float]:
    return {m: summary[m][key] for m in METRICS}


def _score(demo: _Demo, walls: dict[Path, float]) -> None:
    """Each strategy's test metrics (``memroll eval``), memory (its probe) and step time."""
    for strategy in STRATEGIES:
        run_dir = demo.runs / strategy
        trained = json.loads((run_dir / "train_result.json").read_text())
        report = evaluate_run(run_dir, device=demo.device, quiet=True)
        memory, kind = _training_memory(demo.probes / strategy)
        demo.results[strategy] = {
            "metrics": _means(report),
            "std": _means(report, "std"),
            "memory_bytes": memory,
            "memory_kind": kind,
            "training_run_memory_bytes": _training_memory(run_dir)[0],
            "step_time_s": trained["median_step_time_s"],
            "strategy": trained["strategy"],
            "psnr_per_stage": report["psnr_per_stage"],
            "baselines": report["baselines"],
            "weights": report["weights"],
            "wall_time_s": walls[run_dir],
        }


def _compressed_sensing(demo: _Demo, test: unrolled.TaskDataset, count: int) -> None:
    """Score the l1-wavelet CS baseline on the test split (left out when sigpy is missing)."""
    config = demo.config
    if config.eval.cs_lamda is None:
        return
    try:
        baseline = unrolled.CompressedSensing(config.eval.cs_lamda, config.eval.cs_iterations)
    except ImportError as err:
        print(f"note: the CS baseline is left out: {err}", flush=True)
        return
    tick = time.perf_counter()
    table = unrolled.evaluate(baseline, test, max_samples=count)
    seconds = (time.perf_counter() - tick) / len(table)
    summary = table.summary()
    demo.cs = {
        "metrics": _means(summary),
        "std": _means(summary, "std"),
        "lamda": config.eval.cs_lamda,
        "iterations": config.eval.cs_iterations,
        "seconds_per_slice": seconds,
    }
    sample = test.batch([0])
    demo.cs_image = baseline(sample.y, sample.physics)[0]


def _zero_filled(demo: _Demo) -> dict[str, Any] | None:
    zero_filled: dict[str, Any] | None = demo.results[STRATEGIES[0]]["baselines"].get("zero-filled")
    return zero_filled


def _table(demo: _Demo, count: int) -> tuple[list[list[str]], list[list[str]], str]:
    """Return the rows (means; means ± std) and the note below the table."""
    ref = demo.results["backprop"]
    reference = {
        **ref["metrics"],
        "memory": None if ref["memory_bytes"] is None else ref["memory_bytes"] / 1e6,
        "time": ref["step_time_s"] * 1e3,
    }
    entries: list[tuple[str, dict[str, Any], dict[str, Any], float | None, float | None]] = []
    zero_filled = _zero_filled(demo)
    if zero_filled is not None:
        entries.append(("zero-filled", _means(zero_filled), _means(zero_filled, "std"), None, None))
    if demo.cs is not None:
        entries.append(("CS (l1-wavelet)", demo.cs["metrics"], demo.cs["std"], None, None))
    for strategy in STRATEGIES:
        r = demo.results[strategy]
        entries.append((r["strategy"], r["metrics"], r["std"], r["memory_bytes"], r["step_time_s"]))
    rows = [table_row(n, m, mem, t, reference) for n, m, _, mem, t in entries]
    rows_std = [table_row(n, m, mem, t, reference, sd) for n, m, sd, mem, t in entries]
    kind = demo.results[STRATEGIES[0]]["memory_kind"]
    note = (
        f"Test split: {count} slices (mean; ratios to backprop's in brackets). Memory: "
        + (
            f"peak RSS of {demo.probe_steps} training steps above the RSS at their start, in a "
            "fresh process per strategy with MALLOC_MMAP_THRESHOLD_=65536 (the trainings run "
            "without it)"
            if kind == "cpu_peak_rss"
            else "torch.cuda.max_memory_allocated during training"
        )
        + f"; time: median wall time of an optimizer step (one thread, {demo.jobs} training(s) "
        "at a time)."
    )
    return rows, rows_std, note


def _losses(run_dir: Path) -> tuple[list[int], list[float]]:
    with open(run_dir / "log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [int(r["step"]) for r in rows], [float(r["loss"]) for r in rows]


def _validation(run_dir: Path) -> tuple[list[int], list[float]]:
    """Return the validation PSNR (dB) of a run against step (``val.csv``)."""
    path = run_dir / "val.csv"
    if not path.is_file():
        return [], []
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [int(r["step"]) for r in rows], [float(r["psnr"]) for r in rows]


def _panels(demo: _Demo, test: unrolled.TaskDataset, sample: unrolled.Batch) -> list[plots.Panel]:
    """Test slice 0 as the baselines and every strategy reconstruct it.

    The figure puts this slice's own PSNR and SSIM under every panel.
    """
    panels = []
    if _zero_filled(demo) is not None:
        zf_image = sample.physics.adjoint(sample.y)[0]  # type: ignore[operator]
        panels.append(plots.Panel("zero-filled", plots.display_image(zf_image)))
    if demo.cs_image is not None and demo.cs is not None:
        panels.append(plots.Panel("CS (l1-wavelet)", plots.display_image(demo.cs_image)))
    for strategy in STRATEGIES:
        run_dir = demo.runs / strategy
        model = build_model(load_config(run_dir / "config.toml"), test)
        unrolled.load_model(model, run_dir / demo.results[strategy]["weights"])
        model.eval()
        with torch.no_grad():
            image = model(sample.y, sample.physics, sample.x0)[0]
        panels.append(plots.Panel(strategy, plots.display_image(image)))
    return panels


def _measured(demo: _Demo, test: unrolled.TaskDataset) -> str:
    """Return what the memory figure measured: model, size, images, how memory was read."""
    config = demo.config
    model = build_model(config, test)
    kind = demo.results[STRATEGIES[0]]["memory_kind"]
    how = "peak RSS above the loop's start" if kind == "cpu_peak_rss" else "CUDA max allocated"
    size = config.task.options.get("image_size", "?")
    return (
        f"{config.model.name}, {config.model.options.get('iterations', '?')} unrolls, "
        f"{unrolled.count_parameters(model):,} parameters; {size} x {size} px, "
        f"{config.task.options.get('num_coils', '?')} coils, batch {config.train.batch_size}; "
        f"{how}, {demo.probe_steps} steps"
    )


def _figures(demo: _Demo, test: unrolled.TaskDataset) -> list[str]:
    """Draw the demo's PNG figures; return their file names."""
    out, results = demo.out, demo.results
    sample = test.batch([0])
    mask = sample.physics.sampling_mask()  # type: ignore[operator]
    plots.comparison_figure(
        out / "reconstructions.png",
        plots.Panel("reference", plots.display_image(sample.target[0])),
        _panels(demo, test, sample),
        title="test slice 0 (of the demo's test split): every method, this slice's PSNR and "
        "SSIM, its error map",
        mask=None if mask is None else plots.display_image(mask[0]),
    )
    plots.loss_curves(
        out / "loss_curves.png",
        {strategy: _losses(demo.runs / strategy) for strategy in STRATEGIES},
        ylabel=f"training loss ({demo.config.train.loss}; greedy: last module's)",
        validation={strategy: _validation(demo.runs / strategy) for strategy in STRATEGIES},
        title=f"training of {demo.config.model.name} per memory strategy",
    )
    memory = {s: results[s]["memory_bytes"] for s in STRATEGIES}
    plots.memory_bars(
        out / "memory.png",
        {s: m / 1e6 for s, m in memory.items() if m is not None},
        title="peak training memory per strategy",
        measured=_measured(demo, test),
    )
    plots.stage_psnr(
        out / "gleam_psnr_per_module.png",
        {
            "greedy (GLEAM): after each module": results["greedy"]["psnr_per_stage"],
            "backprop: after each stage": results["backprop"]["psnr_per_stage"],
        },
        xlabel="unrolls used at inference (greedy: one module per unroll)",
        references={"CS": demo.cs["metrics"]["psnr"]} if demo.cs is not None else None,
        title="PSNR on the test split after each module (GLEAM Fig. 9)",
    )
    return ["reconstructions.png", "loss_curves.png", "memory.png", "gleam_psnr_per_module.png"]


def _write_results(
    demo: _Demo, rows_std: list[list[str]], note: str, elapsed: float, *, quick: bool
) -> None:
    """``results.md`` (the table with standard deviations) and ``results.json``."""
    markdown = "\n".join(
        [
            "# memroll demo",
            "",
            markdown_table(rows_std),
            "",
            note,
            "",
            f"Total wall time of the demo: {elapsed:.0f} s.",
            "",
        ]
    )
    (demo.out / "results.md").write_text(markdown)
    results = {
        "strategies": demo.results,
        "cs": demo.cs,
        "zero_filled": _zero_filled(demo),
        "config": demo.config.to_data(),
        "wall_time_s": elapsed,
        "quick": quick,
    }
    (demo.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")


def _print_summary(
    demo: _Demo, table_text: str, note: str, figures: list[str], elapsed: float
) -> None:
    out = demo.out
    print("", flush=True)
    print(table_text)
    print(note)
    print("")
    print(f"The demo took {elapsed // 60:.0f} min {elapsed % 60:.0f} s. Files in {out.resolve()}:")
    print("  results.md, results.json   the table above, with standard deviations")
    for name in figures:
        print(f"  {name}")
    print("  config.toml                the configuration every strategy trained")
    print(
        f"  runs/<strategy>/           run folders: memroll eval {out / 'runs' / 'reversible'}, "
        f"memroll recon {out / 'runs' / 'reversible'} IN.h5 OUT.h5"
    )
