r"""``memroll bench``: the papers' tables, in miniature on a CPU or at the papers' sizes on a GPU.

================  ===============================================================================
table             the miniature (``--scale miniature``, the default)
================  ===============================================================================
1 (GLEAM II)      2D MoDL on the real-anatomy multi-coil task trained to a plateau of the
                  validation PSNR with ``backprop``, ``checkpoint``, ``reversible`` (MEL) and
                  ``greedy`` (GLEAM), two seeds each, plus the l1-wavelet CS baseline: PSNR, SSIM,
                  nRMSE on the test split (mean ± spread over seeds), training memory, time per
                  iteration, and the verdict on "GLEAM on par with end-to-end"
2 (depth)         training memory against the number of unrolls N = 4 .. 64 per strategy (MoDL),
                  and for ``implicit`` (LUSER, against its own backprop)
3 (MEL accuracy)  relative error of reversible gradients against backprop for 10 .. 100 unrolls,
                  with and without hybrid checkpoints, for several :math:`\mu` and for unrolled
                  PGD (gradient steps inverted by fixed-point iteration)
4 (i-RIM, LUSER)  i-RIM training memory for 50 .. 400 invertible layers; LUSER-SW/DW against
                  LU-DnCNN trained to a plateau: parameters, memory, time, quality, and the
                  verdict on "LUSER-DW at least LU-DnCNN"
5 (issue 7)       memroll's MoDL (backprop, ``torch.utils.checkpoint`` per unroll, reversible)
                  against deepinv's MoDL at deepinv's configuration (8 coils, 320 x 320, batch 2)
                  at 2 / 4 / 8 unrolls: memory and time per training step
================  ===============================================================================

``--scale paper`` measures the same five tables at the papers' own sizes (memory and time; see
:mod:`memroll.bench._paper`) and needs a CUDA GPU unless ``--device cpu`` says otherwise;
``--max-size`` scales every image down (tests, small devices); ``--quick`` runs tiny versions.

Method. On CPU every configuration runs in a fresh process (:mod:`memroll.bench.worker`) started
with ``MALLOC_MMAP_THRESHOLD_=65536`` (freed tensors leave the resident set) and one intra-op
thread (``--threads``); memory is the peak resident set size (``VmHWM``) after writing ``5`` to
``/proc/self/clear_refs``. On CUDA the configurations of a table run in one process, with
``torch.cuda.reset_peak_memory_stats`` between them, and memory is
``torch.cuda.max_memory_allocated`` (``--isolation``; :mod:`memroll.bench._processes`). Times
are medians of several steps after a warm-up step. Memory and time are reported as absolute
figures and as ratios to plain backprop measured in the same run.

Entry points: :func:`add_arguments` and :func:`run` (the ``memroll bench`` sub-command), and
``packages/memroll/benchmarks/run.py`` (``nox -s bench``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .._console import CommandError
from ._plan import SCALES, TABLES, configs
from ._plan import jobs as make_jobs
from ._processes import ISOLATIONS, describe, groups, run_group
from ._report import write_report

__all__ = ["DEFAULT_OUT", "add_arguments", "run"]

DEFAULT_OUT = "bench-results/unrolled"  # the benchmark of the unrolled models


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
        help="tiny versions of every table (a smoke test, a few minutes)",
    )
    parser.add_argument(
        "--scale",
        choices=SCALES,
        default="miniature",
        help="miniature: the papers' tables at CPU sizes, tables 1 and 4 trained to a plateau "
        "(default); paper: the papers' own sizes, memory and time beside the papers' figures "
        "(needs a CUDA GPU, about 5 minutes on an H200)",
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
        "--isolation",
        choices=ISOLATIONS,
        default="auto",
        help="config: a fresh process per configuration (peak RSS needs it: the default on "
        "CPU); table: one process per table, CUDA peak statistics reset between "
        "configurations (the default on CUDA)",
    )
    parser.add_argument(
        "--seeds",
        type=_positive,
        default=None,
        help="seeds of the trained tables 1 and 4 (default 2; --quick: 1)",
    )
    parser.add_argument(
        "--max-size",
        type=_positive,
        default=None,
        metavar="PX",
        help="scale every image down so its largest side is at most PX pixels (frames and "
        "slices in proportion): the tables' structure at a size a CPU or a small GPU runs",
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


def _option(args: argparse.Namespace, name: str, default: Any) -> Any:
    """``args.name``, or ``default`` for a namespace made before the option existed."""
    return getattr(args, name, default)


def _check_args(args: argparse.Namespace) -> tuple[list[str], str, str]:
    """Return the tables, the device and the isolation; refuse bad values in one line."""
    tables = args.tables if isinstance(args.tables, list) else _tables(str(args.tables))
    for name in ("threads", "jobs"):
        value = getattr(args, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CommandError(f"--{name} must be a positive integer, got {value!r}")
    for name in ("seeds", "max_size"):
        value = _option(args, name, None)
        bad = isinstance(value, bool) or not isinstance(value, int) or value < 1
        if value is not None and bad:
            flag = "--" + name.replace("_", "-")
            raise CommandError(f"{flag} must be a positive integer, got {value!r}")
    scale = _option(args, "scale", "miniature")
    if scale not in SCALES:
        raise CommandError(f"--scale must be one of {', '.join(SCALES)}, got {scale!r}")
    import torch

    device = args.device
    if device not in ("auto", "cpu", "cuda"):
        raise CommandError(f"--device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise CommandError(
            "--device cuda was asked for but CUDA is not available; use --device cpu"
        )
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if scale == "paper" and device == "cpu":
            raise CommandError(
                "--scale paper needs a CUDA GPU (the papers' sizes: about 5 minutes on an H200, "
                "hours on a CPU); say --device cpu to run it on the CPU anyway"
            )
    isolation = _option(args, "isolation", "auto")
    if isolation not in ISOLATIONS:
        raise CommandError(f"--isolation must be one of {', '.join(ISOLATIONS)}, got {isolation!r}")
    if isolation == "auto":
        isolation = "table" if device == "cuda" else "config"
    return tables, device, isolation


def _meta(
    args: argparse.Namespace, device: str, tables: list[str], isolation: str
) -> dict[str, Any]:
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
        "scale": _option(args, "scale", "miniature"),
        "max_size": _option(args, "max_size", None),
        "tables": tables,
        "device": device,
        "isolation": isolation,
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
        # TF32 changes float32 convolutions and matmuls on Ampere and later (table 3's floor)
        meta["tf32"] = {
            "cudnn": bool(torch.backends.cudnn.allow_tf32),
            "matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        }
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
    memroll.CommandError
        (a ``ValueError``) An unknown table, a non-positive ``threads``/``jobs``/``seeds``/
        ``max_size``, ``device="cuda"`` without CUDA, or ``--scale paper`` without a GPU and
        without ``--device cpu``.
    """
    emit = log or (lambda line: print(line, file=sys.stderr, flush=True))
    tables, device, isolation = _check_args(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = configs(
        bool(args.quick),
        scale=_option(args, "scale", "miniature"),
        max_size=_option(args, "max_size", None),
        seeds=_option(args, "seeds", None),
    )
    common = {"device": device, "threads": args.threads, "seed": 0}
    jobs = make_jobs(tables, cfg, common)
    meta = _meta(args, device, tables, isolation)
    env = {
        **os.environ,
        "MALLOC_MMAP_THRESHOLD_": "65536",
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
    }
    chosen = groups(jobs, isolation)
    emit(
        f"memroll bench ({meta['mode']}, {meta['scale']}): {len(jobs)} configurations in "
        f"{len(chosen)} process(es), tables {', '.join(tables)}, device {device}, writing to {out}"
    )
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(lambda g: run_group(g, env, lambda j: emit(describe(j))), chosen))
    meta["wall_s"] = time.perf_counter() - start
    meta["load_end"] = _load()
    for key, field in (("table_s", "process_s"), ("table_cpu_s", "cpu_s")):
        meta[key] = {
            t: sum(float(j.result.get(field, 0.0)) for j in jobs if j.table == t) for t in tables
        }
    results = {"meta": meta, "configs": cfg, "jobs": [job.__dict__ for job in jobs]}
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    report = write_report(results, out)
    print(report)
    failed = [j for j in jobs if not j.ok and j.spec["kind"] != "deepinv"]
    for job in failed:
        emit(describe(job))
    return 1 if failed else 0
