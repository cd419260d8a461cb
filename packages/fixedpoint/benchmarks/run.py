"""Benchmark of fixedpoint against torchdeq (``nox -s bench`` runs this file).

Sections of the report (Markdown, written to ``--out`` and printed):

1. Solves: iterations and time to reach a relative residual of 1e-4 and 1e-6 on three maps (a
   contractive conv layer with input injection, a complex Hermitian and a complex non-normal
   contraction; see ``maps.py``), the complex ones also on their real views, for fixedpoint's
   ``anderson``, ``banach`` and ``broyden`` and torchdeq's ``anderson``, ``fixed_point_iter`` and
   ``broyden``. Iterations
   are evaluations of ``f`` (the most any sample needed); times are medians of repeated solves.
2. Training memory and time: one forward + backward step of an implicit layer on the conv map
   (weights learnable) with 10 and with 100 forward and backward iterations, against plain
   backprop through the same number of unrolled Picard iterations, backprop through Anderson's
   iterations (``backward="unrolled"``) and torchdeq's DEQ with implicit differentiation.
   Every configuration runs in a fresh process; on CPU the peak is the process's ``VmHWM``
   after ``clear_refs`` (with ``MALLOC_MMAP_THRESHOLD_=65536``), on CUDA
   ``torch.cuda.max_memory_allocated``; both reported above the memory held before the step.
3. Gradient bias: the Jacobian-free and phantom gradients against the implicit gradient.
4. Host synchronisation: Anderson's time per iteration with ``check_every`` = 1, 4 and 16 (the
   host learns whether every sample stopped every ``check_every`` iterations) on the n = 256
   maps, as ratios to ``check_every=1`` in the same run (the measurement behind the default).

Times on CPU are CPU time of the measuring process (``time.process_time``: on a shared machine the
other jobs' share of the cores does not count, their load on caches and memory still does); on
CUDA they are wall time between synchronisations.

Usage: ``python run.py [--out DIR] [--quick] [--device cpu|cuda] [--threads N]
[--sections solves,memory,bias,sync]``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from maps import complex_map, conv_map, real_view  # noqa: E402

import fixedpoint  # noqa: E402

try:  # torchdeq is a benchmark-only dependency ([dependency-groups] bench)
    import torchdeq
    from torchdeq.solver import get_solver as torchdeq_solver

    TORCHDEQ_VERSION = importlib.metadata.version("torchdeq")
except ImportError:  # reported in the output
    torchdeq = None
    torchdeq_solver = None
    TORCHDEQ_VERSION = "not installed"

CONFIGS = {
    "full": {
        "conv": {"batch": 4, "channels": 32, "size": 64},
        "n": 256,
        "batch": 4,
        "repeats": 7,
        "max_iter": 500,
        "memory_iters": (10, 100),
        "timing_steps": 3,
    },
    "quick": {
        "conv": {"batch": 2, "channels": 8, "size": 16},
        "n": 32,
        "batch": 2,
        "repeats": 1,
        "max_iter": 300,
        "memory_iters": (5, 20),
        "timing_steps": 1,
    },
}
TOLS = (1e-4, 1e-6)


# -- helpers ------------------------------------------------------------------------------------
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _clock(device: str) -> Callable[[], float]:
    """The timer of this device: CPU time of the process on CPU, wall time on CUDA."""
    return time.perf_counter if device.startswith("cuda") else time.process_time


def _timed(fn: Callable[[], Any], repeats: int, device: str) -> tuple[float, Any]:
    """Median wall time (s) of ``repeats`` calls after one warm-up call, and the last output."""
    out = fn()
    times = []
    clock = _clock(device)
    for _ in range(repeats):
        _sync(device)
        start = clock()
        out = fn()
        _sync(device)
        times.append(clock() - start)
    return statistics.median(times), out


def _maps(cfg: dict, device: str) -> dict[str, tuple[Callable, torch.Tensor]]:
    f_conv, z_conv, _ = conv_map(**cfg["conv"], device=device)
    out: dict[str, tuple[Callable, torch.Tensor]] = {"conv": (f_conv, z_conv)}
    for kind in ("hermitian", "nonnormal"):
        f, z0, _ = complex_map(kind, n=cfg["n"], batch=cfg["batch"], device=device)
        out[kind] = (f, z0)
        out[f"{kind} (real view)"] = (real_view(f), torch.view_as_real(z0))
    return out


# -- 1. solves ----------------------------------------------------------------------------------
def _ours(f: Callable, z0: torch.Tensor, method: str, tol: float, max_iter: int) -> Callable:
    def run() -> tuple[int, bool]:
        r = fixedpoint.solve(f, z0, method, tol=tol, max_iter=max_iter, on_failure="ignore")
        return int(r.iterations.max()), bool(r.converged.all())

    return run


def _theirs(f: Callable, z0: torch.Tensor, method: str, tol: float, max_iter: int) -> Callable:
    solver = torchdeq_solver(method)

    def run() -> tuple[int, bool]:
        _, _, info = solver(f, z0, max_iter=max_iter, tol=tol, stop_mode="rel")
        return int(info["nstep"].max()), bool((info["rel_lowest"] < tol).all())

    return run


def bench_solves(cfg: dict, device: str) -> list[dict]:
    """Every solver on every map and tolerance. The timings of one map and its real view are
    taken round-robin (all solvers, both views, then the next repeat), so that load from other
    processes on a shared machine falls on all of them alike; the median is reported."""
    maps = _maps(cfg, device)
    groups = [
        [name, f"{name} (real view)"] if f"{name} (real view)" in maps else [name]
        for name in maps
        if not name.endswith("(real view)")
    ]
    max_iter = cfg["max_iter"]
    clock = _clock(device)
    rows = []
    for group in groups:
        for tol in TOLS:
            runs: dict[tuple[str, str], Callable[[], tuple[int, bool]]] = {}
            for name in group:
                f, z0 = maps[name]
                for method in ("anderson", "banach", "broyden"):
                    runs[name, f"fixedpoint {method}"] = _ours(f, z0, method, tol, max_iter)
                if torchdeq_solver is not None:
                    for method in ("anderson", "fixed_point_iter", "broyden"):
                        runs[name, f"torchdeq {method}"] = _theirs(f, z0, method, tol, max_iter)
            outcome = {key: run() for key, run in runs.items()}  # warm-up, and the iterations
            times: dict[tuple[str, str], list[float]] = {key: [] for key in runs}
            for _ in range(cfg["repeats"]):
                for key, run in runs.items():
                    _sync(device)
                    start = clock()
                    run()
                    _sync(device)
                    times[key].append(clock() - start)
            for (name, solver), (iters, converged) in outcome.items():
                seconds = statistics.median(times[name, solver])
                rows.append(
                    {
                        "map": name,
                        "tol": tol,
                        "solver": solver,
                        "iterations": iters,
                        "converged": converged,
                        "ms": 1e3 * seconds,
                        "us_per_iter": 1e6 * seconds / max(iters, 1),
                    }
                )
                print(json.dumps(rows[-1]), file=sys.stderr)
    rows.sort(key=lambda r: (list(maps).index(r["map"]), -r["tol"]))
    return rows


# -- 2. training memory (one fresh process per configuration) -----------------------------------
def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(spec: dict) -> dict:
    """One training step of one configuration; returns peak memory and median step time."""
    torch.set_num_threads(spec["threads"])
    device = spec["device"]
    cfg = CONFIGS[spec["config"]]
    f, z0, tensors = conv_map(**cfg["conv"], device=device)
    weight = tensors["weight"].requires_grad_()
    iters = spec["iters"]
    method = spec["method"]

    def step() -> None:
        weight.grad = None
        if method == "backprop":
            z = z0
            for _ in range(iters):
                z = f(z)
        elif method == "torchdeq":
            deq = torchdeq.get_deq(
                f_solver="anderson",
                b_solver="anderson",
                f_max_iter=iters,
                b_max_iter=iters,
                f_tol=0.0,
                b_tol=0.0,
                ift=True,
            )
            z = deq(f, z0)[0][-1]
        else:  # "anderson" or "banach", or "anderson unrolled": backprop through the solver
            z = fixedpoint.implicit(
                f,
                z0,
                method=method.split()[0],
                backward="unrolled" if method.endswith("unrolled") else "implicit",
                tol=0.0,
                max_iter=iters,
                backward_tol=0.0,
                on_failure="ignore",
            )
        z.square().mean().backward()
        _sync(device)

    step()  # warm-up: lazy initialisations are not part of the step's memory
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        Path("/proc/self/clear_refs").write_text("5")
        before = _rss_kib("VmRSS") * 1024
        step()
        peak = _rss_kib("VmHWM") * 1024 - before
    seconds, _ = _timed(step, spec["timing_steps"], device)
    return {"peak_bytes": peak, "seconds": seconds}


def bench_memory(cfg_name: str, device: str, threads: int) -> list[dict]:
    """Run every configuration in a fresh process of its own (the quick smoke test runs them all
    in one process: its figures only show that the code runs)."""
    cfg = CONFIGS[cfg_name]
    methods = ["backprop", "anderson", "banach", "anderson unrolled"]
    methods += ["torchdeq"] if torchdeq else []
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    specs = [
        {
            "config": cfg_name,
            "device": device,
            "method": method,
            "iters": iters,
            "threads": threads,
            "timing_steps": cfg["timing_steps"],
        }
        for method in methods
        for iters in cfg["memory_iters"]
    ]
    batches = [specs] if cfg_name == "quick" else [[spec] for spec in specs]
    rows = []
    for batch in batches:
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", json.dumps(batch)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"worker {batch} failed:\n{proc.stderr}")
        results = json.loads(proc.stdout.strip().splitlines()[-1])
        for spec, result in zip(batch, results, strict=True):
            rows.append({"method": spec["method"], "iters": spec["iters"], **result})
            print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


# -- 3. gradient bias ----------------------------------------------------------------------------
def bench_bias(cfg: dict, device: str) -> list[dict]:
    f, z0, tensors = conv_map(**cfg["conv"], device=device)
    weight = tensors["weight"].requires_grad_()

    def grad(**kwargs: Any) -> torch.Tensor:
        weight.grad = None
        z = fixedpoint.implicit(f, z0, tol=1e-6, max_iter=100, **kwargs)
        z.square().mean().backward()
        return weight.grad.detach().clone()

    exact = grad(backward="implicit", backward_tol=1e-7)
    rows = []
    variants: dict[str, dict[str, Any]] = {
        "jacobian_free": {"backward": "jacobian_free"},
        "phantom k=1": {"backward": "phantom", "phantom_steps": 1, "phantom_damping": 1.0},
        "phantom k=5, lambda=0.5": {"backward": "phantom", "phantom_steps": 5},
        "phantom k=5, lambda=1": {
            "backward": "phantom",
            "phantom_steps": 5,
            "phantom_damping": 1.0,
        },
        "phantom k=20, lambda=1": {
            "backward": "phantom",
            "phantom_steps": 20,
            "phantom_damping": 1.0,
        },
    }
    for name, kwargs in variants.items():
        g = grad(**kwargs)
        rows.append(
            {
                "gradient": name,
                "rel_error": float((g - exact).norm() / exact.norm()),
                "cosine": float(
                    torch.nn.functional.cosine_similarity(g.flatten(), exact.flatten(), 0)
                ),
            }
        )
    return rows


# -- 4. host synchronisation ----------------------------------------------------------------------
CHECK_EVERY = (1, 4, 16)
SECTIONS = ("solves", "memory", "bias", "sync")


def bench_check_every(cfg: dict, device: str) -> list[dict]:
    """Anderson's time per iteration for each ``check_every``, round-robin, medians."""
    maps = {k: v for k, v in _maps(cfg, device).items() if k != "conv"}
    clock = _clock(device)
    rows = []
    for name, (f, z0) in maps.items():
        runs = {
            every: (
                lambda f=f, z0=z0, every=every: fixedpoint.solve(
                    f, z0, tol=1e-6, max_iter=cfg["max_iter"], check_every=every
                )
            )
            for every in CHECK_EVERY
        }
        iters = {every: int(run().iterations.max()) for every, run in runs.items()}
        times: dict[int, list[float]] = {every: [] for every in runs}
        for _ in range(3 * cfg["repeats"]):
            for every, run in runs.items():
                _sync(device)
                start = clock()
                run()
                _sync(device)
                times[every].append(clock() - start)
        base = statistics.median(times[1]) / iters[1]
        for every in CHECK_EVERY:
            per_iter = statistics.median(times[every]) / iters[every]
            rows.append(
                {
                    "map": name,
                    "check_every": every,
                    "iterations": iters[every],
                    "us_per_iter": 1e6 * per_iter,
                    "ratio": per_iter / base,
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


# -- report -------------------------------------------------------------------------------------
def _table(head: str, align: str, row: str, rows: Iterable[dict]) -> str:
    """A Markdown table: ``head``, ``align`` (cells joined by ``|``), ``row.format(**r)`` a row."""
    return "\n".join([f"| {head} |", f"|{align}|", *(f"| {row.format(**r)} |" for r in rows)])


def _fmt_solves(rows: list[dict]) -> str:
    head = "map | tol | solver | iterations | converged | time (ms) | per iteration (us)"
    row = "{map} | {tol:g} | {solver} | {iterations} | {converged} | {ms:.2f} | {us_per_iter:.0f}"
    marked = [{**r, "converged": "yes" if r["converged"] else "**no**"} for r in rows]
    return _table(head, "---|---|---|---:|---|---:|---:", row, marked)


def _summary(rows: list[dict]) -> str:
    """Targets: iterations vs torchdeq, Anderson per-iteration time vs Picard, complex vs real."""
    by = {(r["map"], r["tol"], r["solver"]): r for r in rows}
    lines = [
        "| map | tol | AA iterations: ours / torchdeq | AA time: ours / torchdeq "
        "| AA per-iteration time / Picard's: ours, torchdeq |",
        "|---|---|---:|---:|---:|",
    ]
    for (name, tol, solver), r in by.items():
        if solver != "fixedpoint anderson":
            continue
        t = by.get((name, tol, "torchdeq anderson"))
        ours_pic = by[(name, tol, "fixedpoint banach")]
        t_pic = by.get((name, tol, "torchdeq fixed_point_iter"))
        it = f"{r['iterations']} / {t['iterations']}" if t else f"{r['iterations']} / -"
        tm = f"{r['ms'] / t['ms']:.2f}" if t else "-"
        ratio_ours = r["us_per_iter"] / ours_pic["us_per_iter"]
        ratio_t = f"{t['us_per_iter'] / t_pic['us_per_iter']:.2f}" if t and t_pic else "-"
        lines.append(f"| {name} | {tol:g} | {it} | {tm} | {ratio_ours:.2f}, {ratio_t} |")
    lines += [
        "",
        "| complex map | tol | solver | iterations: complex / real view "
        "| time: complex / real view |",
        "|---|---|---|---:|---:|",
    ]
    for (name, tol, solver), r in by.items():
        real = by.get((f"{name} (real view)", tol, solver))
        if real is None:
            continue
        lines.append(
            f"| {name} | {tol:g} | {solver} | {r['iterations']} / {real['iterations']} | "
            f"{r['ms'] / real['ms']:.2f} |"
        )
    return "\n".join(lines)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b > 0 else "-"


def _fmt_memory(rows: list[dict], device: str) -> str:
    base = {r["iters"]: r for r in rows if r["method"] == "backprop"}
    low, high = sorted(base)
    lines = [
        f"| method | peak @ {low} it (MiB) | peak @ {high} it (MiB) | ratio {high}/{low} "
        f"| vs backprop @ {low} | vs backprop @ {high} | step time @ {low} (s) "
        f"| step time @ {high} (s) | time vs backprop @ {high} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    methods = dict.fromkeys(r["method"] for r in rows)
    for m in methods:
        r = {x["iters"]: x for x in rows if x["method"] == m}
        lo, hi = r[low]["peak_bytes"], r[high]["peak_bytes"]
        lines.append(
            f"| {m} | {lo / 2**20:.1f} | {hi / 2**20:.1f} | {_ratio(hi, lo)} | "
            f"{_ratio(lo, base[low]['peak_bytes'])} | {_ratio(hi, base[high]['peak_bytes'])} | "
            f"{r[low]['seconds']:.2f} | {r[high]['seconds']:.2f} | "
            f"{_ratio(r[high]['seconds'], base[high]['seconds'])} |"
        )
    what = "torch.cuda.max_memory_allocated" if device.startswith("cuda") else "VmHWM"
    return "\n".join(lines) + f"\n\nPeak = {what} during the step minus memory before it."


def _fmt_bias(rows: list[dict]) -> str:
    head = "gradient | relative error vs implicit | cosine"
    return _table(head, "---|---:|---:", "{gradient} | {rel_error:.3g} | {cosine:.4f}", rows)


def _fmt_check_every(rows: list[dict]) -> str:
    head = "map | check_every | iterations | per iteration (us) | vs check_every=1"
    row = "{map} | {check_every} | {iterations} | {us_per_iter:.0f} | {ratio:.2f}"
    return _table(head, "---|---:|---:|---:|---:", row, rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="bench-results/fixedpoint")
    parser.add_argument("--quick", action="store_true", help="tiny configuration (smoke test)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads on CPU")
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps([worker(spec) for spec in json.loads(args.worker)]))
        return
    warnings.simplefilter("ignore")  # torchdeq's deprecation warnings are not ours to fix
    torch.set_num_threads(args.threads)
    cfg_name = "quick" if args.quick else "full"
    cfg = CONFIGS[cfg_name]
    sections = args.sections.split(",")
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    results: dict[str, list[dict]] = {}
    body = []
    if "solves" in sections:
        results["solves"] = bench_solves(cfg, args.device)
        body += ["## Targets", "", _summary(results["solves"]), ""]
        body += ["## Solves", "", _fmt_solves(results["solves"]), ""]
    if "memory" in sections:
        results["memory"] = bench_memory(cfg_name, args.device, args.threads)
        body += ["## Training memory and time (conv map, forward + backward)", ""]
        body += [_fmt_memory(results["memory"], args.device), ""]
    if "bias" in sections:
        results["bias"] = bench_bias(cfg, args.device)
        body += ["## Gradient bias (conv map, weight gradient)", "", _fmt_bias(results["bias"]), ""]
    if "sync" in sections:
        results["sync"] = bench_check_every(cfg, args.device)
        body += ["## Host synchronisation (Anderson, tol 1e-6, time per iteration)", ""]
        body += [_fmt_check_every(results["sync"]), ""]
    c = cfg["conv"]
    timer = "wall time" if args.device.startswith("cuda") else "CPU time of the process"
    header = [
        f"# fixedpoint benchmark ({cfg_name})",
        "",
        f"Device: {args.device}; torch {torch.__version__}; "
        f"torchdeq {TORCHDEQ_VERSION}; "
        f"intra-op threads: {args.threads}; times: {timer}. Conv map: {c['batch']}x"
        f"{c['channels']}x{c['size']}x{c['size']} float32; complex maps: n = {cfg['n']}, "
        f"batch {cfg['batch']}, complex64. "
        "Defaults of both libraries (fixedpoint: Anderson m=5, Broyden m=10; torchdeq: Anderson "
        "m=6, lam=1e-4, Broyden keeping max_iter terms); "
        "relative residual ||f(x) - x|| / ||f(x)|| per sample.",
    ]
    report = "\n".join([*header, "", *body])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(report)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(report)


if __name__ == "__main__":
    main()
