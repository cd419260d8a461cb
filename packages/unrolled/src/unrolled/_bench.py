r"""``memroll bench``: the papers' tables in miniature, measured in one run.

================  ===============================================================================
table             what is measured
================  ===============================================================================
1 (GLEAM II)      2D MoDL on the real-anatomy multi-coil task trained briefly with ``backprop``,
                  ``checkpoint``, ``reversible`` (MEL) and ``greedy`` (GLEAM), plus the l1-wavelet
                  CS baseline: PSNR, SSIM, nRMSE on the test split, training memory, time per
                  iteration
2 (depth)         training memory against the number of unrolls N = 4 .. 64 per strategy (MoDL),
                  and for ``implicit`` (LUSER, against its own backprop)
3 (MEL accuracy)  relative error of reversible gradients against backprop for 10 .. 100 unrolls,
                  with and without hybrid checkpoints, for several :math:`\mu` and for unrolled
                  PGD (gradient steps inverted by fixed-point iteration)
4 (i-RIM, LUSER)  i-RIM training memory for 50 .. 400 invertible layers; LUSER-SW/DW against
                  LU-DnCNN: parameters, memory, time, quality after a short training
5 (issue 7)       memroll's MoDL (backprop, ``torch.utils.checkpoint`` per unroll, reversible)
                  against deepinv's MoDL at deepinv's configuration (8 coils, 320 x 320, batch 2)
                  at 2 / 4 / 8 unrolls: memory and time per training step
================  ===============================================================================

Method. Every configuration runs in a fresh process (:mod:`unrolled._bench_worker`) started
with ``MALLOC_MMAP_THRESHOLD_=65536`` (freed tensors leave the resident set) and one intra-op
thread (``--threads``). Memory on CPU is the peak resident set size (``VmHWM``) after writing
``5`` to ``/proc/self/clear_refs``; on CUDA ``torch.cuda.max_memory_allocated``. Times are medians
of several steps after a warm-up step. Memory and time are reported as absolute figures and as
ratios to plain backprop measured in the same run.

Entry points: :func:`add_arguments` and :func:`run` (the ``memroll bench`` sub-command), and
``packages/unrolled/benchmarks/run.py`` (``nox -s bench``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["TABLES", "add_arguments", "configs", "run"]

TABLES = ("1", "2", "3", "4", "5")
DEFAULT_OUT = "bench-results/unrolled"


# ------------------------------------------------------------------------------------------------
# configurations
# ------------------------------------------------------------------------------------------------
def configs(quick: bool) -> dict[str, Any]:
    """The benchmark's settings: tiny ones for ``--quick`` (a smoke test), else the full run."""
    if quick:
        mri = {"image_size": 32, "num_coils": 4}
        return {
            "t1": {
                "task": "multicoil_mri",
                "data": mri,
                "model_kwargs": {"iterations": 2, "features": 4, "layers": 3, "mu": 4.0},
                "train": {"steps": 4, "batch_size": 2, "lr": 1e-3, "loss": "l1", "val_every": 2},
                "cs": {"lamdas": [0.003, 0.01], "iterations": 5},
            },
            "t2": {
                "task": "multicoil_mri",
                "data": mri,
                "depths": [2, 4],
                "modl_kwargs": {"features": 4, "layers": 3},
                "luser_data": {"image_size": 16, "num_coils": 4},
                "luser_kwargs": {"features": 8, "groups": 4},
                "steps": 2,
            },
            "t3": {
                "task": "multicoil_mri",
                "data": {"image_size": 16, "num_coils": 4},
                "depths": [2, 4],
                "checkpoint_unrolls": 2,
                "mus": [4.0],
                "features": 4,
            },
            "t4": {
                "task": "multicoil_mri",
                "data": {"image_size": 16, "num_coils": 4},
                "irim_steps": [1, 2],
                "irim_kwargs": {"channels": 8, "blocks": 2, "hidden": 8},
                "steps": 2,
                "luser_task": "singlecoil_mri",
                "luser_data": {"image_size": 16},
                "luser_kwargs": {"iterations": 2, "features": 8, "groups": 4},
                "dncnn_kwargs": {"iterations": 2, "features": 8},
                "train": {"steps": 3, "batch_size": 2, "lr": 1e-3, "loss": "mse"},
            },
            "t5": {
                "task": "multicoil_mri",
                "data": {"image_size": 32, "num_coils": 4},
                "unrolls": [2],
                "steps": 2,
            },
        }
    return {
        "t1": {
            "task": "multicoil_mri",
            "data": {"image_size": 64, "num_coils": 8, "acceleration": 4.0},
            # GLEAM 2D MoDL: N = 8, the invertible coupling prior, features 16 instead of 70 to
            # fit the CPU budget; the demo's settings (configs/demo.toml). mu starts at 0.25 and
            # is learned: GLEAM's mu = 4 made 100 steps plateau at 28 dB (3 dB over zero-filling),
            # the CG data consistency barely moving the prior's output at that weight
            "model_kwargs": {
                "iterations": 8,
                "features": 16,
                "layers": 3,
                "couplings": 4,
                "mu": 0.25,
            },
            "train": {"steps": 150, "batch_size": 2, "lr": 3e-3, "loss": "l1", "val_every": 50},
            # as configs/demo.toml: at mu ~ 0.25 the CG step's inverse loses about 5x per unroll
            # (table 3), so reversible keeps the exact state every unroll (5 layers: MEL's hybrid
            # scheme) and recomputes a segment past the drift tolerance
            "strategy_options": {
                "checkpoint": {"checkpoint_every": 1},
                "reversible": {"checkpoint_every": 5, "check_drift": 1e-4, "on_drift": "recompute"},
            },
            # the README's sweep on this task: 5e-4 to 1e-3 is best at 64 px
            "cs": {"lamdas": [2e-4, 5e-4, 1e-3, 2e-3], "iterations": 100},
        },
        "t2": {
            "task": "multicoil_mri",
            "data": {"image_size": 64, "num_coils": 8},
            "depths": [4, 8, 16, 32, 64],
            "modl_kwargs": {"features": 16, "layers": 5},
            "luser_data": {"image_size": 32, "num_coils": 8},
            "luser_kwargs": {"features": 16, "groups": 8},
            "steps": 2,
        },
        "t3": {
            "task": "multicoil_mri",
            "data": {"image_size": 32, "num_coils": 4},
            "depths": [10, 20, 30, 50, 100],
            "checkpoint_unrolls": 10,
            # GLEAM's mu at R = 4 and R = 16, and deepinv's (table 5); table 1 and the demo start
            # from 0.25
            "mus": [4.0, 1.0, 0.25, 0.05],
            "features": 8,
        },
        "t4": {
            "task": "multicoil_mri",
            "data": {"image_size": 32, "num_coils": 4},
            # 5 invertible layers per step (gradient injection + 4 IRIMBlocks): 50 .. 400 layers
            "irim_steps": [10, 20, 40, 80],
            "irim_kwargs": {"channels": 16, "blocks": 4, "hidden": 16},
            "steps": 2,
            "luser_task": "singlecoil_mri",
            "luser_data": {"image_size": 32, "acceleration": 4.0},
            # the paper's sizes: K = 8, F = 32 (LUSER), 17-layer 64-feature DnCNN (LU-DnCNN)
            "luser_kwargs": {"iterations": 8, "features": 32},
            "dncnn_kwargs": {"iterations": 8, "features": 64},
            # 150 steps: at 40 no network had reached the zero-filled image (17 dB) yet
            "train": {"steps": 150, "batch_size": 2, "lr": 1e-3, "loss": "mse", "val_every": 50},
            # LU-DnCNN's 8 unrolls of one shared 17-layer DnCNN with BatchNorm diverged at lr 1e-3
            # (training loss 1.1 -> 5, test PSNR -1 dB); at 1e-4 it trains (19.5 dB at 150 steps)
            "dncnn_train": {"lr": 1e-4},
        },
        "t5": {
            "task": "multicoil_mri",
            "data": {"image_size": 320, "num_coils": 8},
            "unrolls": [2, 4, 8],
            "steps": 2,
        },
    }


#: memroll's MoDL configured as close to deepinv's MoDL as it gets: one regulariser shared by
#: every unroll (deepinv shares its DnCNN), 64 features, mu = 1 (deepinv's HQS with stepsize 1
#: solves (A^H A + I) x = A^H y + z). The invertible regulariser is two additive couplings of
#: 4 convolutions each (8 convolutions, 150k parameters) against deepinv's DnCNN of 7
#: convolutions (186k parameters).
T5_MODL = {
    "prior": "coupling",
    "features": 64,
    "layers": 4,
    "couplings": 2,
    "mu": 1.0,
    "share_weights": True,
}


# ------------------------------------------------------------------------------------------------
# jobs
# ------------------------------------------------------------------------------------------------
@dataclass
class Job:
    """One worker process: the table it belongs to, its labels, its spec, and its result."""

    table: str
    labels: dict[str, Any]
    spec: dict[str, Any]
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return "error" not in self.result


def _jobs(tables: list[str], cfg: dict[str, Any], common: dict[str, Any]) -> list[Job]:
    jobs: list[Job] = []

    def add(table: str, labels: dict[str, Any], **spec: Any) -> None:
        jobs.append(Job(table, labels, {**common, **spec}))

    if "1" in tables:
        c = cfg["t1"]
        for strategy in ("backprop", "checkpoint", "reversible", "greedy"):
            add(
                "1",
                {"method": strategy},
                kind="quality",
                task=c["task"],
                data=c["data"],
                model="modl",
                model_kwargs=c["model_kwargs"],
                strategy=strategy,
                strategy_options=c.get("strategy_options", {}).get(strategy, {}),
                train=c["train"],
            )
        add("1", {"method": "cs"}, kind="cs", task=c["task"], data=c["data"], **c["cs"])
    if "2" in tables:
        c = cfg["t2"]
        for n in c["depths"]:
            for strategy in ("backprop", "checkpoint", "reversible", "greedy"):
                add(
                    "2",
                    {"model": "MoDL", "strategy": strategy, "depth": n},
                    kind="memory",
                    task=c["task"],
                    data=c["data"],
                    model="modl",
                    model_kwargs={**c["modl_kwargs"], "iterations": n},
                    strategy=strategy,
                    steps=c["steps"],
                )
            for strategy in ("backprop", "implicit"):
                add(
                    "2",
                    {"model": "LUSER", "strategy": strategy, "depth": n},
                    kind="memory",
                    task=c["task"],
                    data=c["luser_data"],
                    model="luser",
                    model_kwargs={**c["luser_kwargs"], "iterations": n},
                    strategy=strategy,
                    steps=c["steps"],
                )
    if "3" in tables:
        c = cfg["t3"]
        models = [
            {
                "label": f"MoDL, mu = {mu:g}",
                "model": "modl",
                "kwargs": {"features": c["features"], "mu": mu},
            }
            for mu in c["mus"]
        ]
        models.append(
            {
                "label": "unrolled PGD (coupling prox)",
                "model": "pgd",
                "kwargs": {"features": c["features"], "prior": "coupling"},
            }
        )
        add(
            "3",
            {},
            kind="accuracy",
            task=c["task"],
            data=c["data"],
            depths=c["depths"],
            checkpoint_unrolls=c["checkpoint_unrolls"],
            models=models,
        )
    if "4" in tables:
        c = cfg["t4"]
        per_step = 1 + int(c["irim_kwargs"]["blocks"])
        for t in c["irim_steps"]:
            for strategy in ("backprop", "checkpoint", "reversible"):
                add(
                    "4",
                    {"part": "irim", "strategy": strategy, "steps": t, "layers": t * per_step},
                    kind="memory",
                    task=c["task"],
                    data=c["data"],
                    model="irim",
                    model_kwargs={**c["irim_kwargs"], "steps": t},
                    strategy=strategy,
                    steps=c["steps"],
                )
        for label, model, kwargs, strategy in (
            ("LUSER-SW", "luser", {**c["luser_kwargs"], "share_weights": True}, "implicit"),
            ("LUSER-DW", "luser", c["luser_kwargs"], "implicit"),
            ("LU-DnCNN", "lu_dncnn", c["dncnn_kwargs"], "backprop"),
        ):
            add(
                "4",
                {"part": "luser", "method": label, "strategy": strategy},
                kind="quality",
                task=c["luser_task"],
                data=c["luser_data"],
                model=model,
                model_kwargs=kwargs,
                strategy=strategy,
                train={**c["train"], **(c.get("dncnn_train", {}) if model == "lu_dncnn" else {})},
            )
    if "5" in tables:
        c = cfg["t5"]
        for n in c["unrolls"]:
            for strategy in ("backprop", "checkpoint", "reversible"):
                add(
                    "5",
                    {"method": f"memroll {strategy}", "unrolls": n},
                    kind="memory",
                    task=c["task"],
                    data=c["data"],
                    model="modl",
                    model_kwargs={**T5_MODL, "iterations": n},
                    strategy=strategy,
                    steps=c["steps"],
                )
            add(
                "5",
                {"method": "deepinv", "unrolls": n},
                kind="deepinv",
                task=c["task"],
                data=c["data"],
                iterations=n,
                steps=c["steps"],
            )
    return jobs


def _run_job(job: Job, env: dict[str, str]) -> Job:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "unrolled._bench_worker"],
        input=json.dumps(job.spec),
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines:
        job.result = json.loads(lines[-1])
    else:
        tail = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        job.result = {"error": tail[-1][:300] if tail else f"exit code {proc.returncode}"}
    job.result["process_s"] = time.perf_counter() - start
    return job


def _describe(job: Job) -> str:
    labels = ", ".join(f"{k}={v}" for k, v in job.labels.items())
    r = job.result
    if not job.ok:
        return f"[table {job.table}] {labels}: FAILED {r['error']}"
    parts = []
    if r.get("step_mb") is not None:
        parts.append(f"{r['step_mb']:.1f} MB")
    if r.get("time_s") is not None:
        parts.append(f"{r['time_s']:.3g} s/step")
    if "test" in r:
        parts.append(f"PSNR {r['test']['psnr']['mean']:.2f} dB")
    return f"[table {job.table}] {labels}: {', '.join(parts)} ({r['process_s']:.0f} s)"


# ------------------------------------------------------------------------------------------------
# the command line
# ------------------------------------------------------------------------------------------------
def _tables(value: str) -> list[str]:
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in chosen if v not in TABLES]
    if bad or not chosen:
        raise argparse.ArgumentTypeError(
            f"unknown table(s) {', '.join(bad) or repr(value)}; choose from {', '.join(TABLES)} "
            "(comma-separated, e.g. --tables 1,5)"
        )
    return chosen


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's options to ``parser`` (``memroll bench`` and ``benchmarks/run.py``)."""
    parser.add_argument(
        "--out",
        default=DEFAULT_OUT,
        help=f"folder for report.md, results.json and the PNG plots (default: {DEFAULT_OUT})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny versions of every table (a smoke test, about a minute)",
    )
    parser.add_argument(
        "--tables",
        type=_tables,
        default=list(TABLES),
        help="comma-separated tables to run: 1 GLEAM Table II, 2 memory vs depth, 3 MEL "
        "accuracy vs depth, 4 i-RIM depth and LUSER vs LU-DnCNN, 5 deepinv comparison "
        "(default: all)",
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where to measure (auto: cuda when available; memory is then "
        "torch.cuda.max_memory_allocated)",
    )
    parser.add_argument(
        "--threads",
        type=_positive,
        default=1,
        help="intra-op threads per measured process (default 1)",
    )
    parser.add_argument(
        "--jobs",
        type=_positive,
        default=1,
        help="measured processes run at once (default 1; more finishes sooner but the timings "
        "then compete for the cores: memory is unaffected)",
    )


def _check_args(args: argparse.Namespace) -> tuple[list[str], str]:
    tables = args.tables if isinstance(args.tables, list) else _tables(str(args.tables))
    for name in ("threads", "jobs"):
        value = getattr(args, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"--{name} must be a positive integer, got {value!r}")
    import torch

    device = args.device
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but CUDA is not available; use --device cpu")
    return tables, device


def _meta(args: argparse.Namespace, device: str, tables: list[str]) -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    meta: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "tables": tables,
        "device": device,
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": args.threads,
        "jobs": args.jobs,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "load_start": _load(),
    }
    if device == "cuda":
        meta["gpu"] = torch.cuda.get_device_name()
    return meta


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def run(args: argparse.Namespace, log: Callable[[str], None] | None = None) -> int:
    """Run the benchmark; write ``report.md``, ``results.json`` and PNG plots to ``args.out``.

    Prints progress to standard error and the report to standard output. Returns 0 when every
    memroll configuration was measured, 1 when one failed (its row says why); a peer that cannot
    run here (deepinv) is reported, not counted as a failure.

    Raises
    ------
    ValueError
        An unknown table, a non-positive ``threads``/``jobs``, or ``device="cuda"`` without CUDA.
    """
    from ._bench_report import write_report

    emit = log or (lambda line: print(line, file=sys.stderr, flush=True))
    tables, device = _check_args(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = configs(bool(args.quick))
    common = {"device": device, "threads": args.threads, "seed": 0}
    jobs = _jobs(tables, cfg, common)
    meta = _meta(args, device, tables)
    env = {
        **os.environ,
        "MALLOC_MMAP_THRESHOLD_": "65536",
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
    }
    emit(
        f"memroll bench ({meta['mode']}): {len(jobs)} measured processes, tables "
        f"{', '.join(tables)}, device {device}, writing to {out}"
    )
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for job in pool.map(lambda j: _run_job(j, env), jobs):
            emit(_describe(job))
    meta["wall_s"] = time.perf_counter() - start
    meta["load_end"] = _load()
    results = {"meta": meta, "configs": cfg, "jobs": [job.__dict__ for job in jobs]}
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    report = write_report(results, out)
    print(report)
    failed = [j for j in jobs if not j.ok and j.spec["kind"] != "deepinv"]
    for job in failed:
        emit(_describe(job))
    return 1 if failed else 0
