"""Why GLEAM (greedy) trails end-to-end backprop in ``memroll bench`` table 1: two measurements.

1. ``--modules 8,4,2``: greedy training of table 1's MoDL with M modules (N / M unrolls trained
   end to end inside each module, each module with its own loss on its own output), under table
   1's protocol (the same spec the benchmark's worker runs, seed ``--seed``): if the gap to
   backprop comes from the local losses, it shrinks as M falls (M = 1 is backprop).
2. ``--constant STEPS``: backprop and greedy (M = N) at table 1's settings but a constant
   learning rate for STEPS steps, validation every 50: is the gap an artefact of the schedule,
   or does it stay when both keep training?

Writes one JSON line per run to ``--out`` (validation curve, test PSNR, PSNR per stage).

    python packages/memroll/benchmarks/gleam_gap.py --out gap.jsonl --modules 4,2
    python packages/memroll/benchmarks/gleam_gap.py --out gap.jsonl --constant 1500
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from memroll import bench
from memroll.bench import worker


def _table1_spec(strategy: str, seed: int) -> dict:
    job = next(
        j
        for j in bench.jobs(["1"], bench.configs(False, seeds=seed + 1), {"device": "cpu"})
        if j.labels.get("method") == strategy and j.labels.get("seed") == seed
    )
    return dict(job.spec)


def _run(spec: dict, label: str, out: str) -> None:
    start = time.perf_counter()
    result = worker.run_spec(spec)
    row = {
        "label": label,
        "wall_s": time.perf_counter() - start,
        "test_psnr": result["test"]["psnr"]["mean"],
        "stage_psnr": result["stage_psnr"],
        "training": result["training"],
        "val": [(v["step"], round(v["psnr"], 3)) for v in result["val"]],
        "spec": spec,
    }
    with open(out, "a") as f:
        f.write(json.dumps(row, default=float) + "\n")
    print(label, f"{row['test_psnr']:.2f} dB", row["training"], flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modules", default="", help="comma-separated M for greedy, e.g. 4,2")
    parser.add_argument("--constant", type=int, default=0, help="steps at a constant lr")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for m in [int(v) for v in args.modules.split(",") if v.strip()]:
        spec = _table1_spec("greedy", args.seed)
        spec["strategy_options"] = {**spec.get("strategy_options", {}), "modules": m}
        _run(spec, f"greedy M={m} (table 1 protocol)", args.out)
    if args.constant:
        for strategy in ("backprop", "greedy"):
            spec = _table1_spec(strategy, args.seed)
            train = {k: v for k, v in spec["train"].items() if not k.startswith("scheduler")}
            train.pop("plateau")
            spec["train"] = {**train, "steps": args.constant, "val_every": 50}
            _run(spec, f"{strategy}, constant lr, {args.constant} steps", args.out)


if __name__ == "__main__":
    main()
