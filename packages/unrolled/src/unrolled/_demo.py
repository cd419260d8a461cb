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
tensors leave the RSS), where :func:`unrolled.train` records the peak RSS of the training loop
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
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ._config import build_model, dump_config, load_config, make_task
from ._evaluate import evaluate, load_model
from ._plots import Panel, comparison_figure, display_image, loss_curves, memory_bars, stage_psnr

__all__ = ["QUICK", "STRATEGIES", "add_arguments", "run"]

STRATEGIES = ("backprop", "checkpoint", "reversible", "greedy")
CONFIG = "demo"
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
    """The options of ``memroll demo``."""
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


def _table_row(
    name: str,
    metrics: dict[str, Any] | None,
    memory: float | None,
    step_time: float | None,
    reference: dict[str, Any],
    std: dict[str, float] | None = None,
) -> list[str]:
    """One row: each value with its ratio to backprop's (``reference``), metrics as mean or,
    with ``std``, as mean ± standard deviation over the test slices."""

    def cell(value: float | None, ref: float | None, fmt: str, spread: float | None = None) -> str:
        if value is None:
            return "-"
        ratio = f" ({value / ref:.2f}x)" if ref else ""
        plus = "" if spread is None else f" ± {spread:{fmt}}"
        return f"{value:{fmt}}{plus}{ratio}"

    m, s = metrics or {}, std or {}
    return [
        name,
        cell(m.get("psnr"), reference.get("psnr"), ".2f", s.get("psnr")),
        cell(m.get("ssim"), reference.get("ssim"), ".4f", s.get("ssim")),
        cell(m.get("nrmse"), reference.get("nrmse"), ".4f", s.get("nrmse")),
        cell(None if memory is None else memory / 1e6, reference.get("memory"), ".1f"),
        cell(None if step_time is None else step_time * 1e3, reference.get("time"), ".0f"),
    ]


HEADER = ["method", "PSNR (dB)", "SSIM", "nRMSE", "peak training memory (MB)", "time/iter (ms)"]


def _format(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(HEADER, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def _markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# longest first, so that with two jobs the pairs finish together (measured step times:
# checkpoint and reversible about 1.5x backprop and greedy)
_LAUNCH_ORDER = ("checkpoint", "reversible", "backprop", "greedy")
# the steps of a memory probe: the peak is reached in the first step (activations, gradients and
# Adam's state all alive), and the third runs a validation
PROBE_STEPS = 3


def _probe(steps: int) -> tuple[str, ...]:
    keys = ("train.steps", "train.val_every", "train.checkpoint_every")
    return tuple(f"{key}={steps}" for key in keys)


@dataclass
class _Job:
    """One ``memroll train`` process of the demo."""

    strategy: str
    run_dir: Path
    steps: int
    overrides: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    label: str = "train"

    def command(self, config_file: Path, device: str) -> list[str]:
        sets = [arg for value in self.overrides for arg in ("--set", value)]
        return [
            sys.executable,
            "-m",
            "unrolled._cli",
            "--threads",
            "1",
            "train",
            str(config_file),
            "--strategy",
            self.strategy,
            *sets,
            "--run-dir",
            str(self.run_dir),
            "--device",
            device,
            "--no-eval",
            "--no-progress",
        ]


def _logged_steps(log: Path) -> int:
    """Complete rows of a run's ``log.csv`` (its header excluded) while the run writes it."""
    try:
        return max(0, log.read_bytes().count(b"\n") - 1)
    except OSError:
        return 0


def _run_jobs(jobs: list[_Job], config_file: Path, device: str, workers: int) -> dict[Path, float]:
    """Run ``jobs`` in order, at most ``workers`` at a time, each a fresh process with one
    thread writing its messages to ``<run_dir>/train.out``, under one progress bar; returns
    each job's wall time by run folder."""
    from tqdm.auto import tqdm

    pending = list(jobs)
    running: dict[Path, tuple[_Job, subprocess.Popen[bytes], Any, float]] = {}
    walls: dict[Path, float] = {}
    progress = {job.run_dir: 0 for job in jobs}
    bar = tqdm(total=sum(job.steps for job in jobs), desc="training", unit="step")
    last = ""
    try:
        while pending or running:
            while pending and len(running) < workers:
                job = pending.pop(0)
                job.run_dir.mkdir(parents=True)
                out = open(job.run_dir / "train.out", "wb")  # noqa: SIM115 - closed when it ends
                process = subprocess.Popen(
                    job.command(config_file, device),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, **job.env},
                )
                running[job.run_dir] = (job, process, out, time.perf_counter())
            time.sleep(0.25)
            for key, (job, process, out, started) in list(running.items()):
                progress[key] = _logged_steps(key / "log.csv")
                status = process.poll()
                if status is None:
                    continue
                out.close()
                del running[key]
                walls[key] = time.perf_counter() - started
                if status != 0:
                    tail = (key / "train.out").read_text(errors="replace")[-2000:]
                    raise RuntimeError(
                        f"{job.label} run of strategy {job.strategy!r} failed (exit status "
                        f"{status}); the end of {key / 'train.out'}:\n{tail}"
                    )
            shown = ", ".join(
                f"{job.strategy} {job.label} {progress[k]}/{job.steps}"
                for k, (job, *_) in running.items()
            )
            if bar.n != sum(progress.values()) or shown != last:
                bar.n, last = sum(progress.values()), shown
                bar.set_postfix_str(shown, refresh=False)
                bar.refresh()
    finally:
        for _, process, out, _ in running.values():
            process.kill()
            process.wait()
            out.close()
        bar.close()
    return walls


def _losses(run_dir: Path) -> tuple[list[int], list[float]]:
    with open(run_dir / "log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [int(r["step"]) for r in rows], [float(r["loss"]) for r in rows]


def _training_memory(run_dir: Path) -> tuple[float | None, str]:
    trained = json.loads((run_dir / "train_result.json").read_text())
    peak, base = trained["peak_memory_bytes"], trained["memory_baseline_bytes"]
    return (None if peak is None or base is None else peak - base), trained["memory_kind"]


def run(args: argparse.Namespace) -> int:
    """``memroll demo``: train, score, tabulate, plot (see the module docstring)."""
    from ._cli import evaluate_run

    start = time.perf_counter()
    torch.set_num_threads(1)
    out = Path(args.out)
    overrides = list(QUICK) if args.quick else []
    if args.steps is not None:
        if args.steps < 1:
            raise ValueError(f"--steps must be a positive integer, got {args.steps}")
        overrides.append(f"train.steps={args.steps}")
    config = load_config(CONFIG, overrides)
    out.mkdir(parents=True, exist_ok=True)
    config_file = out / "config.toml"
    config_file.write_text(dump_config(config, "the configuration memroll demo trained"))
    o = config.model.options
    t = config.task.options
    print(
        f"memroll demo: a 2D MoDL ({o.get('iterations')} unrolls, coupling prior of "
        f"{o.get('features')} features) on real-anatomy {t.get('num_coils')}-coil MRI, "
        f"{t.get('image_size')} x {t.get('image_size')}, R = {t.get('acceleration')}, "
        f"{config.train.steps} steps of batch {config.train.batch_size} per strategy; each "
        "strategy in its own process with one thread",
        flush=True,
    )
    results: dict[str, dict[str, Any]] = {}
    runs, probes = out / "runs", out / "memory"
    for strategy in STRATEGIES:
        for folder in (runs / strategy, probes / strategy):
            if folder.exists():  # the previous demo's run of this strategy
                shutil.rmtree(folder)
    if args.jobs is not None:
        jobs = args.jobs
    else:  # one GPU runs one training at a time; CPU cores one each
        jobs = 1 if str(args.device).startswith("cuda") else min(2, os.cpu_count() or 1)
    if jobs < 1:
        raise ValueError(f"--jobs must be a positive integer, got {jobs}")
    order = [s for s in _LAUNCH_ORDER if s in STRATEGIES]
    # memory: short probes with the allocator setting of the memory rules; the trainings run
    # without it (returning every freed tensor to the system slows CPU training 2.3x, measured)
    allocator = {"MALLOC_MMAP_THRESHOLD_": "65536"}
    steps = min(PROBE_STEPS, config.train.steps)
    job_list = [_Job(s, probes / s, steps, _probe(steps), allocator, "memory") for s in order]
    job_list += [_Job(s, runs / s, config.train.steps) for s in order]
    try:
        walls = _run_jobs(job_list, config_file, args.device, jobs)
    except RuntimeError as err:
        print(f"memroll demo: {err}", file=sys.stderr)
        return 1
    for strategy in STRATEGIES:
        run_dir = runs / strategy
        trained = json.loads((run_dir / "train_result.json").read_text())
        report = evaluate_run(run_dir, device=args.device, quiet=True)
        memory, kind = _training_memory(probes / strategy)
        results[strategy] = {
            "metrics": {m: report[m]["mean"] for m in ("psnr", "ssim", "nrmse")},
            "std": {m: report[m]["std"] for m in ("psnr", "ssim", "nrmse")},
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

    test = make_task(config, "test")
    count = config.eval.samples or len(test)
    first = results[STRATEGIES[0]]
    zero_filled = first["baselines"].get("zero-filled")
    cs: dict[str, Any] | None = None
    cs_image = None
    if not args.no_cs and config.eval.cs_lamda is not None:
        try:
            from ._cs import CompressedSensing

            baseline = CompressedSensing(config.eval.cs_lamda, config.eval.cs_iterations)
        except ImportError as err:
            print(f"note: the CS baseline is left out: {err}", flush=True)
        else:
            tick = time.perf_counter()
            table = evaluate(baseline, test, max_samples=count)  # type: ignore[arg-type]
            seconds = (time.perf_counter() - tick) / len(table)
            summary = table.summary()
            cs = {
                "metrics": {m: summary[m]["mean"] for m in ("psnr", "ssim", "nrmse")},
                "std": {m: summary[m]["std"] for m in ("psnr", "ssim", "nrmse")},
                "lamda": config.eval.cs_lamda,
                "iterations": config.eval.cs_iterations,
                "seconds_per_slice": seconds,
            }
            sample = test.batch([0])
            cs_image = baseline(sample.y, sample.physics)[0]

    # ---- the table
    ref = results["backprop"]
    reference = {
        **ref["metrics"],
        "memory": None if ref["memory_bytes"] is None else ref["memory_bytes"] / 1e6,
        "time": ref["step_time_s"] * 1e3,
    }
    entries: list[tuple[str, dict[str, Any], dict[str, Any], float | None, float | None]] = []
    if zero_filled is not None:
        zf = {m: zero_filled[m]["mean"] for m in ("psnr", "ssim", "nrmse")}
        zf_std = {m: zero_filled[m]["std"] for m in ("psnr", "ssim", "nrmse")}
        entries.append(("zero-filled", zf, zf_std, None, None))
    if cs is not None:
        entries.append(("CS (l1-wavelet)", cs["metrics"], cs["std"], None, None))
    for strategy in STRATEGIES:
        r = results[strategy]
        entries.append((r["strategy"], r["metrics"], r["std"], r["memory_bytes"], r["step_time_s"]))
    rows = [_table_row(n, m, mem, t, reference) for n, m, _, mem, t in entries]
    rows_std = [_table_row(n, m, mem, t, reference, sd) for n, m, sd, mem, t in entries]
    table_text = _format(rows)
    kind = first["memory_kind"]
    note = (
        f"Test split: {count} slices (mean; ratios to backprop's in brackets). Memory: "
        + (
            f"peak RSS of {steps} training steps above the RSS at their start, in a fresh "
            "process per strategy with MALLOC_MMAP_THRESHOLD_=65536 (the trainings run without "
            "it)"
            if kind == "cpu_peak_rss"
            else "torch.cuda.max_memory_allocated during training"
        )
        + f"; time: median wall time of an optimizer step (one thread, {jobs} training(s) at a "
        "time)."
    )

    # ---- figures
    sample = test.batch([0])
    panels = []
    if zero_filled is not None:
        zf_image = sample.physics.adjoint(sample.y)[0]  # type: ignore[operator]
        panels.append(
            Panel(f"zero-filled\n{zero_filled['psnr']['mean']:.2f} dB", display_image(zf_image))
        )
    if cs_image is not None and cs is not None:
        panels.append(Panel(f"CS\n{cs['metrics']['psnr']:.2f} dB", display_image(cs_image)))
    curves = {}
    for strategy in STRATEGIES:
        run_dir = runs / strategy
        model = build_model(load_config(run_dir / "config.toml"), test)
        load_model(model, run_dir / results[strategy]["weights"])
        model.eval()
        with torch.no_grad():
            image = model(sample.y, sample.physics, sample.x0)[0]
        psnr = results[strategy]["metrics"]["psnr"]
        panels.append(Panel(f"{strategy}\n{psnr:.2f} dB (test mean)", display_image(image)))
        curves[strategy] = _losses(run_dir)
    figures = {
        "reconstructions.png": comparison_figure(
            out / "reconstructions.png",
            Panel("reference", display_image(sample.target[0])),
            panels,
            title="test slice 0: every method, and its error map",
        ),
        "loss_curves.png": loss_curves(
            out / "loss_curves.png",
            curves,
            ylabel=f"training loss ({config.train.loss}; greedy: last module's)",
        ),
        "memory.png": memory_bars(
            out / "memory.png",
            {
                s: (results[s]["memory_bytes"] or 0) / 1e6
                for s in STRATEGIES
                if results[s]["memory_bytes"] is not None
            },
        ),
        "gleam_psnr_per_module.png": stage_psnr(
            out / "gleam_psnr_per_module.png",
            {
                "greedy (GLEAM): after each module": results["greedy"]["psnr_per_stage"],
                "backprop: after each stage": results["backprop"]["psnr_per_stage"],
            },
            xlabel="unrolls used at inference (greedy: one module per unroll)",
            references={"CS": cs["metrics"]["psnr"]} if cs is not None else None,
            title="PSNR on the test split after each module (GLEAM Fig. 9)",
        ),
    }

    elapsed = time.perf_counter() - start
    markdown = "\n".join(
        [
            "# memroll demo",
            "",
            _markdown(rows_std),
            "",
            note,
            "",
            f"Total wall time of the demo: {elapsed:.0f} s.",
            "",
        ]
    )
    (out / "results.md").write_text(markdown)
    (out / "results.json").write_text(
        json.dumps(
            {
                "strategies": results,
                "cs": cs,
                "zero_filled": zero_filled,
                "config": config.to_data(),
                "wall_time_s": elapsed,
                "quick": bool(args.quick),
            },
            indent=2,
        )
        + "\n"
    )
    print("", flush=True)
    print(table_text)
    print(note)
    print("")
    where = out.resolve()
    print(f"The demo took {elapsed // 60:.0f} min {elapsed % 60:.0f} s. Files in {where}:")
    print("  results.md, results.json   the table above, with standard deviations")
    for name in figures:
        print(f"  {name}")
    print("  config.toml                the configuration every strategy trained")
    print(
        f"  runs/<strategy>/           run folders: memroll eval {out / 'runs' / 'reversible'}, "
        f"memroll recon {out / 'runs' / 'reversible'} IN.h5 OUT.h5"
    )
    return 0
