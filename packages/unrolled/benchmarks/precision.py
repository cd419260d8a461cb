"""Mixed precision of ``unrolled.train``: gradient error, memory and step time (issue 14, item 3).

``gradients``: for MoDL (coupling prior) and i-RIM at 8 and 32 unrolls, the relative error
``||g - g_ref|| / ||g_ref||`` of every parameter's gradient (concatenated) on one batch, against
float32 backprop ``g_ref`` at the same weights: float32 reversible; bf16-mixed backprop,
checkpoint, reversible, reversible with hybrid checkpoints; fp16-mixed backprop and reversible.

``cost``: peak memory above the loop's baseline and median step time of ``unrolled.train`` for
MoDL per strategy in fp32 and bf16-mixed, each configuration in a fresh process
(``MALLOC_MMAP_THRESHOLD_=65536``, one thread, ``VmHWM`` after ``clear_refs``), configurations
interleaved round robin over ``--rounds`` rounds; the table gives bf16 / fp32 ratios of the same
round (median and spread).

Usage: ``python precision.py [gradients|cost|all] [--quick] [--rounds 3] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys

from bench_cli import parse_args, write_report

MRI = {"image_size": 32, "num_coils": 4}
MODL = {"features": 16, "layers": 3, "couplings": 4, "mu": 1.0, "cg_max_iter": 30}
IRIM = {"channels": 16, "blocks": 4, "hidden": 16}
METHODS = [
    ("fp32", "reversible", {}),
    ("bf16-mixed", "backprop", {}),
    ("bf16-mixed", "checkpoint", {}),
    ("bf16-mixed", "reversible", {}),
    ("bf16-mixed", "reversible", {"checkpoint_every": "unroll"}),
    ("fp16-mixed", "backprop", {}),
    ("fp16-mixed", "reversible", {}),
]


def _model(name: str, unrolls: int, quick: bool):
    import torch

    import unrolled

    torch.manual_seed(0)
    if name == "MoDL":
        kwargs = {**MODL, "features": 4} if quick else MODL
        return unrolled.MoDL(iterations=unrolls, **kwargs), 5  # 4 couplings + the CG step
    kwargs = {**IRIM, "channels": 8, "hidden": 4} if quick else IRIM
    return unrolled.IRIM(steps=unrolls, **kwargs), 1 + kwargs["blocks"]


def _gradient(model, batch, precision: str, strategy: str, options: dict):
    import torch

    from unrolled.training import MixedPrecision, get_loss, model_loss

    model.set_strategy(strategy, **options)
    model.zero_grad(set_to_none=True)
    mixed = MixedPrecision(model, precision, torch.device("cpu"))
    scale = 2.0**10 if precision == "fp16-mixed" else 1.0  # what a GradScaler would do
    try:
        with mixed.step():
            with mixed.autocast():
                loss = model_loss(model, batch, get_loss("l1"))
            (loss * scale).backward()
    finally:
        mixed.close()
    return torch.cat([p.grad.flatten() / scale for p in model.parameters() if p.grad is not None])


def gradients(quick: bool) -> str:
    import torch

    import unrolled

    torch.set_num_threads(1)
    data = unrolled.make_dataset("multicoil_mri", "train", **MRI)
    batch = data.batch([0, 1])
    depths = (2, 4) if quick else (8, 32)
    head = (
        ["model", "unrolls"]
        + [f"{p} {s}" + (" (hybrid)" if o else "") for p, s, o in METHODS]
        + ["bf16 reversible vs bf16 backprop"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in ("MoDL", "IRIM"):
        for n in depths:
            base, per_unroll = _model(name, n, quick)
            reference = _gradient(copy.deepcopy(base), batch, "fp32", "backprop", {})
            cells, got = [], {}
            for precision, strategy, options in METHODS:
                opts = {"checkpoint_every": per_unroll} if options else {}
                try:
                    g = _gradient(copy.deepcopy(base), batch, precision, strategy, opts)
                    error = float((g - reference).norm() / reference.norm())
                    cells.append(f"{error:.1e}")
                    got[(precision, strategy, bool(options))] = g
                except Exception as err:  # a drift error or a divergence is a result too
                    cells.append(f"{type(err).__name__}")
            bf16 = got.get(("bf16-mixed", "backprop", False))
            rev = got.get(("bf16-mixed", "reversible", False))
            if bf16 is not None and rev is not None:
                cells.append(f"{float((rev - bf16).norm() / bf16.norm()):.1e}")
            else:
                cells.append("-")
            lines.append(f"| {name} | {n} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# cost: fresh processes
# ------------------------------------------------------------------------------------------------
STRATEGIES = [("backprop", {}), ("checkpoint", {}), ("reversible", {}), ("greedy", {})]


def worker(spec: dict) -> None:
    import torch

    import unrolled

    torch.set_num_threads(1)
    data = unrolled.make_dataset("multicoil_mri", "train", **spec["data"])
    torch.manual_seed(0)
    model = unrolled.MoDL(iterations=spec["unrolls"], **spec["model"])
    result = unrolled.train(
        model, data, strategy=spec["strategy"], strategy_options=spec["options"],
        steps=spec["steps"], batch_size=2, precision=spec["precision"], progress=False,
    )  # fmt: skip
    above = result.peak_memory_bytes - result.memory_baseline_bytes
    print(json.dumps({"memory": above, "time": result.median_step_time_s}))


def cost(quick: bool, rounds: int) -> str:
    data = {"image_size": 16 if quick else 64, "num_coils": 8}
    model = {"features": 4 if quick else 16, "layers": 3, "couplings": 4, "mu": 1.0}
    model["cg_max_iter"] = 10
    spec = {"data": data, "model": model, "unrolls": 2 if quick else 8, "steps": 3 if quick else 6}
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    ratios: dict[str, dict[str, list[float]]] = {}
    for _ in range(rounds):
        for strategy, options in STRATEGIES:
            got = {}
            for precision in ("fp32", "bf16-mixed"):
                job = {**spec, "strategy": strategy, "options": options, "precision": precision}
                out = subprocess.run(
                    [sys.executable, __file__, "--worker", json.dumps(job)],
                    capture_output=True, text=True, env=env, check=True,
                )  # fmt: skip
                got[precision] = json.loads(out.stdout.strip().splitlines()[-1])
            r = ratios.setdefault(strategy, {"memory": [], "time": [], "fp32_mb": []})
            r["memory"].append(got["bf16-mixed"]["memory"] / got["fp32"]["memory"])
            r["time"].append(got["bf16-mixed"]["time"] / got["fp32"]["time"])
            r["fp32_mb"].append(got["fp32"]["memory"] / 2**20)
            print(strategy, got, flush=True)
    lines = [
        "| strategy | fp32 step memory (MB) | bf16 / fp32 memory | bf16 / fp32 step time |",
        "|---|---|---|---|",
    ]
    for strategy, r in ratios.items():
        mem, time = r["memory"], r["time"]
        lines.append(
            f"| {strategy} | {statistics.median(r['fp32_mb']):.1f} | "
            f"{statistics.median(mem):.2f} ({min(mem):.2f}-{max(mem):.2f}) | "
            f"{statistics.median(time):.2f} ({min(time):.2f}-{max(time):.2f}) |"
        )
    head = (
        f"MoDL, {spec['unrolls']} unrolls, {data['image_size']} x {data['image_size']}, "
        f"8 coils, batch 2, {spec['steps']} steps, {rounds} rounds (median, min-max)\n\n"
    )
    return head + "\n".join(lines)


def main() -> None:
    def what(parser: argparse.ArgumentParser) -> None:
        choices = ("gradients", "cost", "all")
        parser.add_argument("what", nargs="?", default="all", choices=choices)

    args = parse_args(__doc__, worker, rounds=3, extra=what)
    if args is None:
        return
    parts = ["# unrolled: mixed precision\n"]
    if args.what in ("gradients", "all"):
        parts += ["## Gradient error against float32 backprop\n", gradients(args.quick), ""]
    if args.what in ("cost", "all"):
        parts += ["## bf16-mixed against fp32: memory and time\n", cost(args.quick, args.rounds)]
    report = "\n".join(parts) + "\n"
    write_report(args.out, f"precision-{args.what}.md", report)


if __name__ == "__main__":
    main()
