"""Peak memory and time per step of ``unrolled.train`` for each strategy (README table).

Each configuration runs in a fresh process (``MALLOC_MMAP_THRESHOLD_=65536``, one thread);
``unrolled.train`` records the peak RSS of its loop (after ``/proc/self/clear_refs``) and the
median step time. Usage: ``python train_loop.py [--quick] [--out DIR]``; writes ``train_loop.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

STRATEGIES = [
    ("backprop", {}),
    ("checkpoint", {}),
    ("reversible", {}),
    ("greedy", {}),
    ("greedy", {"modules": 2, "inner": "reversible"}),
]


def worker(strategy: str, options: dict, unrolls: int, size: int, steps: int) -> None:
    import torch

    import unrolled

    torch.set_num_threads(1)
    data = unrolled.make_dataset("multicoil_mri", "train", image_size=size, num_coils=8)
    torch.manual_seed(0)
    model = unrolled.MoDL(iterations=unrolls, features=16, cg_max_iter=20)
    result = unrolled.train(
        model, data, strategy=strategy, strategy_options=options, steps=steps, batch_size=2,
        progress=False,
    )  # fmt: skip
    above = result.peak_memory_bytes - result.memory_baseline_bytes
    print(json.dumps({"memory": above, "time": result.median_step_time_s}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="bench-results/unrolled")
    parser.add_argument("--quick", action="store_true", help="a tiny configuration (smoke test)")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        strategy, options, unrolls, size, steps = args.worker
        worker(strategy, json.loads(options), int(unrolls), int(size), int(steps))
        return
    unrolls, size, steps = ((2,), 16, 3) if args.quick else ((4, 8), 64, 8)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    header = "| unrolls | " + " | ".join(s if not o else f"{s} {o}" for s, o in STRATEGIES) + " |"
    lines = [header, "|" + "---|" * (len(STRATEGIES) + 1)]
    for n in unrolls:
        cells, base = [], None
        for strategy, options in STRATEGIES:
            cmd = [sys.executable, __file__, "--worker", strategy, json.dumps(options)]
            out = subprocess.run(
                [*cmd, str(n), str(size), str(steps)],
                capture_output=True, text=True, env=env, check=True,
            )  # fmt: skip
            r = json.loads(out.stdout.strip().splitlines()[-1])
            mb = r["memory"] / 2**20
            base = base or mb
            cells.append(f"{mb:.1f} MB ({mb / base:.2f}x), {r['time']:.2f} s")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    report = (
        f"# unrolled.train: memory above baseline and median step time\n\nMoDL (coupling prior, "
        f"16 features), multicoil_mri {size} x {size}, 8 coils, batch 2, {steps} steps\n\n"
        + "\n".join(lines)
        + "\n"
    )
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "train_loop.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
