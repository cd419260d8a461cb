"""Throughput of ``unrolled.train`` on 2 processes x 1 thread against 1 process x 1 thread (gloo).

The same global batch and model in both: DDP (``backprop``, ``reversible``: each rank half the
batch, gradients all-reduced) and P-GLEAM (``greedy``, M = 8 modules, 4 per rank, every rank the
whole batch). The figure is the median wall time per step of 1 process over that of the
2-process job (rank 0's, from the end of one step to the end of the next, data loading
included; the first step left out): the throughput ratio. Beside it, the CPU time per step of
both ranks together over that of 1 process: what the distribution costs in work (on a machine
whose cores other jobs share, the wall-time ratio depends on the scheduler as much as on us).
Every round runs each method once alone and once as a ``torchrun`` job, interleaved, so a busy
machine slows both alike; the table gives the median ratio over the rounds and its range, and
the load average (the development machine has 2 cores shared with other jobs).

Usage: ``python distributed.py [--quick] [--rounds 5] [--out DIR]``.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import statistics
import subprocess
import sys

from bench_cli import demo_modl, parse_args, write_report

METHODS = [
    ("DDP", "backprop", {}),
    ("DDP", "reversible", {}),
    ("P-GLEAM", "greedy", {}),
]


def worker(spec: dict) -> None:
    import time

    import torch

    import unrolled

    torch.set_num_threads(1)
    data = unrolled.make_dataset("multicoil_mri", "train", **spec["data"])
    torch.manual_seed(0)
    model = unrolled.MoDL(**spec["model"])
    marks: list[tuple[float, float]] = []
    result = unrolled.train(
        model, data, strategy=spec["strategy"], strategy_options=spec["options"],
        steps=spec["steps"], batch_size=spec["batch"], progress=False,
        callback=lambda row: marks.append((time.perf_counter(), time.process_time())),
    )  # fmt: skip
    # from the end of step 1 on: wall and CPU time per step, data loading included
    wall = statistics.median(b[0] - a[0] for a, b in itertools.pairwise(marks))
    cpu = statistics.median(b[1] - a[1] for a, b in itertools.pairwise(marks))
    rank = int(os.environ.get("RANK", "0"))
    report = {"time": wall, "world": result.world_size, "cpu": cpu}
    print(json.dumps({"rank": rank, **report}), flush=True)


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(spec: dict, processes: int) -> tuple[float, float]:
    """Return the median step time (rank 0's) and the CPU time per step of all ranks."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", f"--nproc-per-node={processes}"]
        launcher += [f"--master-port={_port()}"]
    done = subprocess.run(
        [*launcher, __file__, "--worker", json.dumps(spec)],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    reports = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(reports) == processes, reports
    first = next(r for r in reports if r["rank"] == 0)
    return float(first["time"]), sum(float(r["cpu"]) for r in reports)


def main() -> None:
    args = parse_args(__doc__, worker, rounds=5)
    if args is None:
        return
    model, data = demo_modl(args.quick, mu=1.0)
    steps, batch = (3 if args.quick else 6), 4
    ratios: dict[str, list[float]] = {}
    cpu_ratios: dict[str, list[float]] = {}
    loads = []
    for r in range(args.rounds):
        loads.append(os.getloadavg()[0])
        for kind, strategy, options in METHODS:
            spec = {"data": data, "model": model, "strategy": strategy, "options": options}
            spec.update(steps=steps, batch=batch)
            (one, cpu_one), (two, cpu_two) = _run(spec, 1), _run(spec, 2)
            ratios.setdefault(f"{kind} {strategy}", []).append(one / two)
            cpu_ratios.setdefault(f"{kind} {strategy}", []).append(cpu_two / cpu_one)
            print(r, kind, strategy, f"1 process {one:.3f} s ({cpu_one:.3f} s CPU), "
                  f"2 processes {two:.3f} s ({cpu_two:.3f} s CPU)", flush=True)  # fmt: skip
    lines = [
        "| method | throughput 2 x 1 / 1 x 1: median (range) | CPU time per step, 2 ranks / 1 |",
        "|---|---|---|",
    ]
    for label, got in ratios.items():
        cpu = cpu_ratios[label]
        lines.append(
            f"| {label} | {statistics.median(got):.2f}x ({min(got):.2f}-{max(got):.2f}) | "
            f"{statistics.median(cpu):.2f} ({min(cpu):.2f}-{max(cpu):.2f}) |"
        )
    report = (
        "# unrolled.train on 2 processes (gloo, 1 thread each) against 1 process\n\n"
        f"MoDL {model}, multicoil_mri {data}, global batch {batch}, {steps} steps, "
        f"{args.rounds} rounds; load average {min(loads):.1f}-{max(loads):.1f} on "
        f"{os.cpu_count()} cores\n\n" + "\n".join(lines) + "\n"
    )
    write_report(args.out, "distributed.md", report)


if __name__ == "__main__":
    main()
