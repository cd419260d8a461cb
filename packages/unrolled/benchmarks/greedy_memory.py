"""Training memory of greedy (GLEAM) against the other strategies for the demo's MoDL (issue 17).

``memroll bench`` table 2's protocol: each configuration in a fresh process
(``MALLOC_MMAP_THRESHOLD_=65536``, one thread), one warm-up step, then the peak RSS of
``steps`` optimizer steps (``VmHWM`` after writing 5 to ``/proc/self/clear_refs``) minus the
resident memory just before them (model, Adam state, batch): the *step memory*. Configurations
run round robin for ``--rounds`` rounds; the table gives the median and the spread, and each
strategy's ratio to reversible (and to backprop) in the same round.

The model is ``configs/demo.toml``'s: MoDL, 8 unrolls, coupling prior (16 features, 3 layers,
4 couplings), mu = 0.25, CG 10 iterations, on 64 x 64 8-coil real-anatomy MRI, batch 2; GLEAM's
M = N = 8 modules. Usage: ``python greedy_memory.py [--quick] [--rounds 3] [--out DIR]``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

from bench_cli import demo_modl, parse_args, write_report

CONFIGS = [
    ("backprop", {}),
    ("checkpoint", {"checkpoint_every": 1}),
    ("reversible", {}),
    ("reversible", {"checkpoint_every": 5}),
    ("greedy", {}),
    ("greedy", {"inner": "checkpoint"}),
    ("greedy", {"inner": "reversible"}),
]


def _label(strategy: str, options: dict) -> str:
    return strategy + ("" if not options else " " + json.dumps(options, separators=(",", "=")))


def worker(spec: dict) -> None:
    import gc

    import torch

    import unrolled
    from unrolled.training import MemoryProbe, get_loss, make_engine, median, timed

    torch.set_num_threads(1)
    data = unrolled.make_dataset("multicoil_mri", "train", **spec["data"])
    batch = data.batch([0, 1])
    torch.manual_seed(0)
    model = unrolled.MoDL(**spec["model"])
    strategy = unrolled.as_strategy(spec["strategy"], **spec["options"])
    if strategy.forward_name == "reversible":
        model.certify(batch.physics, batch.target)
    model.set_strategy(strategy)
    opts = unrolled.TrainOptions(steps=spec["steps"] + 1, lr=1e-4, progress=False)
    engine = make_engine(model, get_loss("l1"), opts, strategy)
    engine.step(batch, 0)  # warm-up: first-call allocations, Adam state
    gc.collect()
    probe = MemoryProbe(torch.device("cpu"))
    probe.reset()
    base = probe.current()
    times: list[float] = []
    for k in range(spec["steps"]):
        with timed(torch.device("cpu"), times):
            engine.step(batch, k + 1)
    peak = probe.peak()
    print(json.dumps({"step_mb": (peak - base) / 2**20, "time": median(times)}))


def main() -> None:
    args = parse_args(__doc__, worker, rounds=3)
    if args is None:
        return
    model, data = demo_modl(args.quick, mu=0.25, acceleration=4.0)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    runs: dict[str, list[dict]] = {}
    for r in range(args.rounds):
        for strategy, options in CONFIGS:
            spec = {"data": data, "model": model, "strategy": strategy, "options": options}
            spec["steps"] = 2 if args.quick else 3
            done = subprocess.run(
                [sys.executable, __file__, "--worker", json.dumps(spec)],
                capture_output=True, text=True, env=env, check=True,
            )  # fmt: skip
            got = json.loads(done.stdout.strip().splitlines()[-1])
            runs.setdefault(_label(strategy, options), []).append(got)
            print(r, _label(strategy, options), got, flush=True)
    rev, back = _label("reversible", {}), _label("backprop", {})
    lines = [
        "| strategy | step memory (MB) | / reversible | / backprop | time / backprop |",
        "|---|---|---|---|---|",
    ]
    for label, got in runs.items():
        mb = [g["step_mb"] for g in got]
        to_rev = [g["step_mb"] / x["step_mb"] for g, x in zip(got, runs[rev])]
        to_back = [g["step_mb"] / x["step_mb"] for g, x in zip(got, runs[back])]
        time = [g["time"] / x["time"] for g, x in zip(got, runs[back])]
        lines.append(
            f"| {label} | {statistics.median(mb):.1f} ({min(mb):.1f}-{max(mb):.1f}) | "
            f"{statistics.median(to_rev):.2f} | {statistics.median(to_back):.2f} | "
            f"{statistics.median(time):.2f} |"
        )
    report = (
        "# Greedy training memory (issue 17): step memory above the resting set\n\n"
        f"MoDL {model}, multicoil_mri {data}, batch 2; {args.rounds} rounds, median "
        "(min-max); ratios from the same round\n\n" + "\n".join(lines) + "\n"
    )
    write_report(args.out, "greedy_memory.md", report)


if __name__ == "__main__":
    main()
