"""Benchmark of physops' core: Sense against sigpy, and cg's training memory (implicit vs unrolled).

``main(out_dir, quick)`` writes ``core.md`` under ``out_dir`` and returns its text
(``benchmarks/run.py`` discovers this module); ``python bench_core.py --out DIR [--quick]`` runs it
alone.

* Sense forward + adjoint, 8 coils, 320x256, batch 4, complex64, CPU, one thread for both
  libraries: physops applies the batch at once; sigpy (``sigpy.mri.linop.Sense``, numpy) has no
  batch axis, so it applies one operator per sample. Median of several repeats after a warm-up.
* MoDL's data-consistency training step: ``x = cg(A^H A + mu I, A^H y + mu z)`` with a learnable
  ``mu`` and ``z``, loss ``||x - target||^2``, backward; 5 and 50 CG iterations (``tol=0``: all of
  them run), implicit backward against plain autograd through the iterations. Each configuration
  runs in a FRESH worker process (this script in ``--worker`` mode, with
  ``MALLOC_MMAP_THRESHOLD_=65536``) that runs one warm-up step, writes ``5`` to
  ``/proc/self/clear_refs``, runs the measured step and reads ``VmHWM`` (peak RSS) from
  ``/proc/self/status``. The "step memory" is that peak minus the RSS just before the step: what
  the step itself adds. On a CUDA machine the same step is also measured with
  ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import command_line, run_worker, write_report

import physops


def _problem(batch: int, coils: int, shape: tuple[int, int], device: str = "cpu"):
    """Smooth random coil maps, a 1D random Cartesian mask per sample (R ~ 4), an image."""
    g = torch.Generator().manual_seed(0)
    low = torch.randn(batch, coils, 8, 8, dtype=torch.complex64, generator=g)
    maps = torch.nn.functional.interpolate(
        torch.view_as_real(low).permute(0, 1, 4, 2, 3).reshape(batch, coils * 2, 8, 8),
        size=shape,
        mode="bilinear",
        align_corners=False,
    )
    maps = torch.view_as_complex(
        maps.reshape(batch, coils, 2, *shape).permute(0, 1, 3, 4, 2).contiguous()
    )
    maps = maps / maps.abs().square().sum(1, keepdim=True).sqrt()
    width = shape[1]
    mask = (torch.rand(batch, 1, width, generator=g) < 0.25).float()
    centre = max(1, int(0.08 * width))
    mask[..., width // 2 - centre // 2 : width // 2 + (centre + 1) // 2] = 1.0
    x = torch.randn(batch, *shape, dtype=torch.complex64, generator=g)
    return maps.to(device), mask.to(device), x.to(device)


def _sense_timing(config: dict[str, Any]) -> dict[str, Any]:
    """Worker: interleaved timings of physops' and sigpy's Sense forward + adjoint."""
    import sigpy.mri.linop

    torch.set_num_threads(1)
    batch, coils, shape = config["batch"], config["coils"], tuple(config["shape"])
    maps, mask, x = _problem(batch, coils, shape)
    op = physops.Sense(maps, mask)

    def ours() -> None:
        op.adjoint(op(x))

    maps_np, mask_np, x_np = maps.numpy(), mask.numpy(), x.numpy()
    # sigpy applies sqrt(weights): weights = mask**2 is the same operator (a 0/1 mask: the same).
    sigpy_ops = [sigpy.mri.linop.Sense(maps_np[i], weights=mask_np[i] ** 2) for i in range(batch)]

    def theirs() -> None:
        for i in range(batch):
            sigpy_ops[i].H(sigpy_ops[i](x_np[i]))

    # the same numbers first: relative difference of A^H A x
    ref = np.stack([sigpy_ops[i].H(sigpy_ops[i](x_np[i])) for i in range(batch)])
    ours_out = op.adjoint(op(x)).numpy()
    agreement = float(np.linalg.norm(ours_out - ref) / np.linalg.norm(ref))
    # Interleaved: each repeat times both back to back, so load from other processes on a shared
    # machine hits both alike. Both run one thread, so the process CPU time is the cost of the
    # work itself; the wall time also counts waiting for a core on a busy machine.
    cpu, wall = [], []
    with torch.inference_mode():
        ours()
        theirs()
        for _ in range(config["repeats"]):
            c0, w0 = time.process_time(), time.perf_counter()
            ours()
            c1, w1 = time.process_time(), time.perf_counter()
            theirs()
            c2, w2 = time.process_time(), time.perf_counter()
            cpu.append((c1 - c0, c2 - c1))
            wall.append((w1 - w0, w2 - w1))
    return {"cpu": cpu, "wall": wall, "agreement": agreement}


def bench_sense(quick: bool) -> list[str]:
    batch, coils, shape = (2, 4, (64, 48)) if quick else (4, 8, (320, 256))
    repeats = 3 if quick else 15
    config = {"kind": "sense", "batch": batch, "coils": coils, "shape": list(shape)}
    config["repeats"] = repeats
    lines = [
        f"Sense forward + adjoint, {coils} coils, {shape[0]}x{shape[1]}, batch {batch}, complex64, "
        f"CPU, 1 thread, {repeats} interleaved repeats in a fresh process (medians; ratios are "
        "medians of the per-repeat ratios). Default malloc is what users run; "
        "`MALLOC_MMAP_THRESHOLD_=65536` (the setting of the memory measurements) returns every "
        "large buffer to the OS, so each new one costs page faults:",
        "",
        "| malloc | implementation | CPU time (ms) | CPU time / physops | wall time (ms) | "
        "wall / physops |",
        "|---|---|---|---|---|---|",
    ]
    med = statistics.median
    agreement = 0.0
    for label, threshold in (("default", None), ("mmap threshold 64 KiB", "65536")):
        r = run_worker(__file__, config, mmap_threshold=threshold)
        cpu, wall = r["cpu"], r["wall"]
        agreement = r["agreement"]
        lines += [
            f"| {label} | physops.Sense (whole batch) | {med(c[0] for c in cpu) * 1e3:.1f} | "
            f"1.00 | {med(w[0] for w in wall) * 1e3:.1f} | 1.00 |",
            f"| {label} | sigpy.mri.linop.Sense (one per sample) | "
            f"{med(c[1] for c in cpu) * 1e3:.1f} | {med(c[1] / c[0] for c in cpu):.2f} | "
            f"{med(w[1] for w in wall) * 1e3:.1f} | {med(w[1] / w[0] for w in wall):.2f} |",
        ]
    return [*lines, "", f"Relative difference of the two A^H A x: {agreement:.1e}."]


# -- cg memory -------------------------------------------------------------------------------------
def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _worker(config: dict[str, Any]) -> dict[str, float]:
    torch.set_num_threads(1)
    device = config["device"]
    maps, mask, x_true = _problem(config["batch"], config["coils"], tuple(config["shape"]), device)
    op = physops.Sense(maps, mask)
    y = op(x_true)
    z0 = op.adjoint(y)
    mu = torch.nn.Parameter(torch.tensor(0.05, device=device))
    z = torch.nn.Parameter(z0.clone())

    def step(iterations: int) -> None:
        rhs = op.adjoint(y) + mu * z
        x = physops.cg(
            lambda v: op.normal(v) + mu * v,
            rhs,
            max_iter=iterations,
            tol=0.0,
            backward=config["backward"],
        ).x
        loss = (x - x_true).abs().square().sum()
        loss.backward()
        mu.grad = None
        z.grad = None

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    step(1)  # warm-up: FFT plans, allocator, autograd
    sync()
    result: dict[str, float] = {}
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step(config["iterations"])
        sync()
        result["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["step_mb"] = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        rss_before = _status_kb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        step(config["iterations"])
        peak = _status_kb("VmHWM")
        result["peak_mb"] = peak / 1024
        result["step_mb"] = (peak - rss_before) / 1024
    wall, cpu = [], []
    for _ in range(config["repeats"]):
        start, start_cpu = time.perf_counter(), time.process_time()
        step(config["iterations"])
        sync()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    result["time_s"] = statistics.median(wall)
    result["cpu_s"] = statistics.median(cpu)
    return result


def bench_cg_memory(quick: bool, device: str = "cpu") -> list[str]:
    batch, coils, shape = (2, 4, (64, 48)) if quick else (4, 8, (320, 256))
    repeats = 1 if quick else 3
    counts = (5, 50)
    results: dict[tuple[str, int], dict[str, float]] = {}
    for backward in ("unrolled", "implicit"):
        for iterations in counts:
            config = {
                "kind": "cg",
                "device": device,
                "batch": batch,
                "coils": coils,
                "shape": list(shape),
                "backward": backward,
                "iterations": iterations,
                "repeats": repeats,
            }
            results[(backward, iterations)] = run_worker(__file__, config)
    memory = "torch.cuda.max_memory_allocated" if device == "cuda" else "peak RSS (VmHWM)"
    # On CPU (one thread) the process CPU time is robust to other load on a shared machine.
    key, clock = ("time_s", "wall time") if device == "cuda" else ("cpu_s", "CPU time")
    lines = [
        f"MoDL data-consistency training step with cg (Sense, {coils} coils, "
        f"{shape[0]}x{shape[1]}, batch {batch}, complex64, {device.upper()}, 1 thread, "
        f"fresh process per row; {memory}; "
        f"step {clock} median of {repeats}):",
        "",
        "| backward | CG iterations | peak (MB) | step memory (MB) | step memory / plain autograd "
        f"at the same iterations | step {clock} (s) | {clock} / plain autograd |",
        "|---|---|---|---|---|---|---|",
    ]
    for backward in ("unrolled", "implicit"):
        for iterations in counts:
            r = results[(backward, iterations)]
            base = results[("unrolled", iterations)]
            lines.append(
                f"| {'plain autograd' if backward == 'unrolled' else 'implicit'} | {iterations} | "
                f"{r['peak_mb']:.0f} | {r['step_mb']:.1f} | {r['step_mb'] / base['step_mb']:.2f} | "
                f"{r[key]:.2f} | {r[key] / base[key]:.2f} |"
            )
    flat = results[("implicit", 50)]["step_mb"] / results[("implicit", 5)]["step_mb"]
    grows = results[("unrolled", 50)]["step_mb"] / results[("unrolled", 5)]["step_mb"]
    lines += [
        "",
        f"Step memory at 50 vs 5 iterations: implicit {flat:.2f}x (flat), plain autograd "
        f"{grows:.2f}x.",
    ]
    return lines


def main(out_dir: str | os.PathLike[str] = "bench-results/physops", quick: bool = False) -> str:
    torch.set_num_threads(1)
    sections = [
        "## Sense against sigpy",
        "",
        *bench_sense(quick),
        "",
        "## cg training memory: implicit backward against plain autograd",
        "",
        *bench_cg_memory(quick),
        "",
    ]
    if torch.cuda.is_available():
        sections += ["## cg training memory on CUDA", "", *bench_cg_memory(quick, "cuda"), ""]
    return write_report(out_dir, "core", quick, sections)


def _any_worker(config: dict[str, Any]) -> dict[str, Any]:
    return (_sense_timing if config.get("kind") == "sense" else _worker)(config)


if __name__ == "__main__":
    command_line(__doc__, main, _any_worker)
