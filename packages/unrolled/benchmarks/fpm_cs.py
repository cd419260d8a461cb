"""FPMNet's training memory and time per strategy, and the CS baseline's lambda on real anatomy.

1. ``unrolled.FPMNet`` (MEL's FPM network: gradient steps only, a learned LED design) trained
   by ``unrolled.train`` with ``backprop``, ``checkpoint`` and ``reversible`` (hybrid checkpoints
   every 10 unrolls, MEL's setting), each configuration in a fresh process
   (``MALLOC_MMAP_THRESHOLD_=65536``, one thread): the peak RSS of the training loop above the
   process' baseline (``/proc/self/clear_refs`` then ``VmHWM``) and the median step time, as
   ``unrolled.train`` records them; on CUDA ``torch.cuda.max_memory_allocated``.
2. ``unrolled.cs_reconstruct`` on the multi-coil real-anatomy validation split at R = 4 (8 coils,
   2D Poisson disc) for several lambdas: PSNR, SSIM, nRMSE and seconds per slice.

Usage: ``python fpm_cs.py [--quick] [--out DIR] [--device cuda]``; writes ``fpm_cs.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

STRATEGIES = [
    ("backprop", {}),
    ("checkpoint", {}),
    ("reversible", {"checkpoint_every": 10}),
]


def worker(strategy: str, options: dict, unrolls: int, size: int, steps: int, device: str) -> None:
    import torch

    import unrolled

    torch.set_num_threads(1)
    data = unrolled.make_dataset("ptychography", "train", image_size=size)
    torch.manual_seed(0)
    model = unrolled.FPMNet.from_physics(data.acquisition, num_measurements=4, iterations=unrolls)
    result = unrolled.train(
        model, data, strategy=strategy, strategy_options=options, steps=steps, batch_size=2,
        lr=1e-3, progress=False, device=device,
    )  # fmt: skip
    above = result.peak_memory_bytes - (result.memory_baseline_bytes or 0)
    print(json.dumps({"memory": above, "time": result.median_step_time_s}))


def fpm_table(unrolls: tuple[int, ...], size: int, steps: int, device: str) -> str:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    header = "| unrolls | " + " | ".join(s if not o else f"{s} {o}" for s, o in STRATEGIES) + " |"
    lines = [header, "|" + "---|" * (len(STRATEGIES) + 1)]
    for n in unrolls:
        cells: list[str] = []
        base_mb = base_s = None
        for strategy, options in STRATEGIES:
            cmd = [sys.executable, __file__, "--worker", strategy, json.dumps(options)]
            out = subprocess.run(
                [*cmd, str(n), str(size), str(steps), device],
                capture_output=True, text=True, env=env, check=True,
            )  # fmt: skip
            r = json.loads(out.stdout.strip().splitlines()[-1])
            mb, sec = r["memory"] / 2**20, r["time"]
            if base_mb is None:
                base_mb, base_s = mb, sec
                cells.append(f"{mb:.1f} MB, {sec * 1e3:.0f} ms")
            else:
                cells.append(f"{mb:.1f} MB ({mb / base_mb:.2f}x), {sec / base_s:.2f}x time")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cs_table(sizes: tuple[int, ...], lamdas: tuple[float, ...], iterations: int) -> str:
    import torch

    import unrolled

    torch.set_num_threads(1)
    lines = [
        "| image | lambda | PSNR (dB) | SSIM | nRMSE | s / slice |",
        "|---|---|---|---|---|---|",
    ]
    for size in sizes:
        batch = unrolled.make_dataset("multicoil_mri", "val", image_size=size).batch()
        zf = batch.physics.adjoint(batch.y)
        lines.append(
            f"| {size} px | zero-filled | {float(unrolled.psnr(zf, batch.target).mean()):.2f} | "
            f"{float(unrolled.ssim(zf, batch.target).mean()):.3f} | "
            f"{float(unrolled.nrmse(zf, batch.target).mean()):.4f} | |"
        )
        for lam in lamdas:
            start = time.perf_counter()
            x = unrolled.cs_reconstruct(batch.y, batch.physics, lam, iterations)
            per = (time.perf_counter() - start) / batch.size
            lines.append(
                f"| {size} px | {lam:g} | {float(unrolled.psnr(x, batch.target).mean()):.2f} | "
                f"{float(unrolled.ssim(x, batch.target).mean()):.3f} | "
                f"{float(unrolled.nrmse(x, batch.target).mean()):.4f} | {per:.2f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="bench-results/unrolled")
    parser.add_argument("--quick", action="store_true", help="a tiny configuration (smoke test)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        strategy, options, unrolls, size, steps, device = args.worker
        worker(strategy, json.loads(options), int(unrolls), int(size), int(steps), device)
        return
    if args.quick:
        unrolls, size, steps = (10,), 32, 2
        sizes, lamdas, iterations = (32,), (1e-3,), 20
    else:
        unrolls, size, steps = (10, 20, 40), 128, 4
        sizes, lamdas, iterations = (32, 64, 96), (2e-4, 5e-4, 1e-3, 2e-3), 100
    fpm = fpm_table(unrolls, size, steps, args.device)
    cs = cs_table(sizes, lamdas, iterations)
    report = (
        "# FPMNet training memory per strategy, and the CS baseline's lambda\n\n"
        f"FPMNet (gradient steps only, 4 learned measurements of 25 LEDs), ptychography task, "
        f"{size} px objects, batch 2, {steps} steps; memory above the process baseline "
        f"({args.device}), time as the median step relative to backprop\n\n"
        + fpm
        + f"\n\ncs_reconstruct, multicoil_mri val split (8 slices, 8 coils, R = 4 Poisson disc), "
        f"{iterations} iterations\n\n" + cs + "\n"
    )
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "fpm_cs.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
