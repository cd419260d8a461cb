"""Step time of ``unrolled.train(..., compile=True)`` against eager, per strategy (README table).

The demo's MoDL (``memroll/configs/demo.toml``: 8 unrolls, coupling prior of 4 couplings, 16
features, 3 convolutions, mu = 0.25, 10 CG iterations; 8-coil real-anatomy MRI at 64 x 64, R = 4,
batch 2), trained with ``backprop``, ``checkpoint`` (every unroll), ``reversible`` (the demo's
hybrid: an exact state every 5 layers, drift check 1e-4) and ``greedy`` (8 modules), eager and
compiled. Each configuration runs in a fresh process on one thread; the configurations are
interleaved (round robin, ``--rounds`` times) and each round's ratio compiled / eager is taken
within that round, so the load of the shared machine cancels as far as it can. A run trains
``--warmup`` steps (the compilation happens there) and then ``--steps`` steps whose median is the
step time; the compile time is the warm-up's total minus ``--warmup`` median steps, with an empty
inductor cache in every run (``TORCHINDUCTOR_CACHE_DIR`` a new folder: what a first run pays; a
warm cache took a few seconds here).

Usage: ``python compile.py [--quick] [--rounds 3] [--out DIR]``; writes ``compile.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

STRATEGIES = {
    "backprop": {},
    "checkpoint": {"checkpoint_every": 1},
    "reversible": {"checkpoint_every": 5, "check_drift": 1e-4, "on_drift": "recompute"},
    "greedy": {},
}


def worker(strategy: str, compile: bool, size: int, unrolls: int, warmup: int, steps: int) -> None:
    """Train one configuration and print its step times as JSON."""
    import torch

    import unrolled

    torch.set_num_threads(1)
    data = unrolled.make_dataset(
        "multicoil_mri", "train", image_size=size, num_coils=8, acceleration=4.0
    )
    torch.manual_seed(0)
    model = unrolled.MoDL(
        iterations=unrolls, prior="coupling", features=16, layers=3, couplings=4, mu=0.25,
        cg_max_iter=10,
    )  # fmt: skip
    times: list[float] = []
    unrolled.train(
        model, data, strategy=strategy, strategy_options=STRATEGIES[strategy],
        steps=warmup + steps, batch_size=2, lr=3e-3, progress=False, compile=compile,
        callback=lambda row: times.append(float(row["time_s"])),
    )  # fmt: skip
    print(json.dumps({"warmup": times[:warmup], "steps": times[warmup:]}))


def _run(strategy: str, compile: bool, args: argparse.Namespace) -> dict[str, list[float]]:
    cmd = [
        sys.executable, __file__, "--worker", strategy, str(int(compile)), str(args.size),
        str(args.unrolls), str(args.warmup), str(args.steps),
    ]  # fmt: skip
    with tempfile.TemporaryDirectory() as cache:  # a cold inductor cache: the full compile time
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "TORCHINDUCTOR_CACHE_DIR": cache}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode:
        raise SystemExit(f"{strategy} compile={compile} failed:\n{out.stderr[-3000:]}")
    result: dict[str, list[float]] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _row(strategy: str, rounds: list[dict[bool, dict[str, list[float]]]], warmup: int) -> str:
    eager = [statistics.median(r[False]["steps"]) for r in rounds]
    compiled = [statistics.median(r[True]["steps"]) for r in rounds]
    ratios = [c / e for c, e in zip(compiled, eager)]
    compile_s = [
        sum(r[True]["warmup"]) - warmup * statistics.median(r[True]["steps"]) for r in rounds
    ]
    return (
        f"| {strategy} | {statistics.median(eager):.3f} | {statistics.median(compiled):.3f} | "
        f"{statistics.median(ratios):.2f}x | {min(ratios):.2f}-{max(ratios):.2f}x | "
        f"{statistics.median(compile_s):.0f} s | {', '.join(f'{q:.2f}' for q in ratios)} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="bench-results/unrolled")
    parser.add_argument("--quick", action="store_true", help="a tiny configuration (smoke test)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        strategy, compile, *sizes = args.worker
        worker(strategy, compile == "1", *(int(v) for v in sizes))  # type: ignore[arg-type]
        return
    args.size, args.unrolls, args.warmup, args.steps = (
        (16, 2, 2, 2) if args.quick else (64, 8, 3, 6)
    )
    rounds: list[dict[str, dict[bool, dict[str, list[float]]]]] = []
    for k in range(1 if args.quick else args.rounds):
        results: dict[str, dict[bool, dict[str, list[float]]]] = {s: {} for s in STRATEGIES}
        for strategy in STRATEGIES:  # round robin: every configuration once per round
            for compile in (False, True):
                results[strategy][compile] = _run(strategy, compile, args)
                print(f"round {k + 1} {strategy} compile={compile}: {results[strategy][compile]}")
        rounds.append(results)
    lines = [
        "| strategy | eager s / step | compiled s / step | compiled / eager (median) | "
        "range over rounds | compile time | ratio per round |",
        "|---|---|---|---|---|---|---|",
        *(_row(s, [r[s] for r in rounds], args.warmup) for s in STRATEGIES),
    ]
    report = (
        f"# unrolled.train(compile=True): step time compiled / eager\n\nMoDL as the demo "
        f"({args.unrolls} unrolls, coupling prior, 16 features), multicoil_mri {args.size} x "
        f"{args.size}, 8 coils, batch 2, CPU, 1 thread; median of {args.steps} steps after "
        f"{args.warmup} warm-up steps, {len(rounds)} interleaved rounds, fresh process per run\n\n"
        + "\n".join(lines)
        + "\n"
    )
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "compile.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
