"""Memory and time of one training step: ReversibleSequence against its peers.

Two stacks share the same residual block ``g`` (i-RIM's: strided conv by 2, 3x3 conv,
transposed conv, GLU, weight norm) on a ``(2, 64, 128, 128)`` state:

* ``irim``: ``IRIMBlock`` layers (Householder mixing + additive coupling). Methods: plain
  backprop, ``torch.utils.checkpoint`` per layer, memcnn's ``InvertibleModuleWrapper`` and
  ``ReversibleSequence``. RevLib cannot express the orthogonal mixing, so it is left out here.
* ``additive``: additive couplings alternating the updated half (RevNet). Methods: the four
  above plus RevLib's ``ReversibleSequential`` (the same couplings).

Each configuration runs in a fresh process (``--worker``), started by this script with
``MALLOC_MMAP_THRESHOLD_=65536``; the worker writes 5 to ``/proc/self/clear_refs`` before the
measured steps and reads ``VmHWM`` after (on CUDA: ``torch.cuda.max_memory_allocated``). Time is
the median of the measured steps after a warm-up step. Gradients of every method are compared
with plain backprop on the same weights and input.

    python packages/revlayers/benchmarks/run.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

FULL = {"batch": 2, "channels": 64, "size": 128, "hidden": 64, "depths": [8, 32, 128], "steps": 3}
QUICK = {"batch": 1, "channels": 16, "size": 32, "hidden": 16, "depths": [4], "steps": 2}
METHODS = {
    "irim": ["backprop", "checkpoint", "memcnn", "revlayers"],
    "additive": ["backprop", "checkpoint", "memcnn", "revlib", "revlayers"],
}


# -- worker ---------------------------------------------------------------------------------------
def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def _build(family: str, method: str, depth: int, cfg: dict, device: str):  # type: ignore[no-untyped-def]
    import torch
    from torch.utils.checkpoint import checkpoint

    import revlayers as rl

    torch.manual_seed(0)
    c, half = cfg["channels"], cfg["channels"] // 2
    if family == "irim":
        base = [rl.IRIMBlock(c, cfg["hidden"], downsample=2) for _ in range(depth)]
    else:
        base = [rl.IRIMResidual(half, half, cfg["hidden"], downsample=2) for _ in range(depth)]
    base = [m.to(device) for m in base]
    params = [p for m in base for p in m.parameters()]

    if family == "irim":
        layers = base
    else:
        layers = [
            rl.AdditiveCoupling(g, update="first" if i % 2 == 0 else "second", pass_context=False)
            for i, g in enumerate(base)
        ]

    if method in ("backprop", "revlayers"):
        model = rl.ReversibleSequence(layers, memory_saving=method == "revlayers")
        return model, params
    if method == "checkpoint":
        seq = torch.nn.ModuleList(layers)

        def run_checkpointed(x):  # type: ignore[no-untyped-def]
            for layer in seq:
                x = checkpoint(layer, x, use_reentrant=False)
            return x

        return run_checkpointed, params
    if method == "memcnn":
        import memcnn

        if family == "irim":
            blocks = [memcnn.InvertibleModuleWrapper(m, keep_input=False) for m in layers]
        else:  # memcnn's block is y1 = x1 + F(x2), y2 = x2 + G(y1): two of our layers
            blocks = [
                memcnn.InvertibleModuleWrapper(
                    memcnn.AdditiveCoupling(base[i], base[i + 1]), keep_input=False
                )
                for i in range(0, depth, 2)
            ]
        mods = torch.nn.ModuleList(blocks)

        def run_memcnn(x):  # type: ignore[no-untyped-def]
            for block in mods:
                x = block(x)
            return x

        return run_memcnn, params
    if method == "revlib":
        import revlib

        return revlib.ReversibleSequential(*base, split_dim=1), params
    raise ValueError(f"unknown method {method!r}")


def worker(spec: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    device = spec["device"]
    cfg = spec["cfg"]
    model, params = _build(spec["family"], spec["method"], spec["depth"], cfg, device)
    # lr = 0: the step does the optimizer's work but keeps the weights, so every method's last
    # gradients are taken at the same weights and can be compared with plain backprop
    opt = torch.optim.SGD(params, lr=0.0)
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(cfg["batch"], cfg["channels"], cfg["size"], cfg["size"], generator=gen)
    x0 = x0.to(device)

    def step() -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        x = x0.clone().requires_grad_()  # memcnn frees its input; RevLib needs requires_grad
        y = model(x)
        loss = y.square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    baseline_kib = _rss_kib("VmRSS")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")
    times = [step() for _ in range(1 + cfg["steps"])]
    if device == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
        base_mb = base_cuda / 2**20
    else:
        peak_mb = _rss_kib("VmHWM") / 1024
        base_mb = baseline_kib / 1024
    grads = [p.grad.detach().cpu().clone() for p in params]
    torch.save(grads, spec["grads"])
    return {
        "peak_mb": peak_mb,
        "base_mb": base_mb,
        "time_s": statistics.median(times[1:]),
        "times": times,
    }


# -- parent ---------------------------------------------------------------------------------------
def _run_worker(spec: dict) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _grad_errors(path: Path, ref_path: Path) -> tuple[float, float]:
    import torch

    grads, ref = torch.load(path), torch.load(ref_path)
    flat = torch.cat([g.flatten().double() for g in grads])
    flat_ref = torch.cat([g.flatten().double() for g in ref])
    total = ((flat - flat_ref).norm() / flat_ref.norm()).item()
    worst = max(
        ((g.double() - r.double()).norm() / r.double().norm().clamp_min(1e-30)).item()
        for g, r in zip(grads, ref)
    )
    return total, worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-results/revlayers")
    parser.add_argument("--quick", action="store_true", help="tiny configuration (< 1 minute)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--families", default="irim,additive")
    parser.add_argument("--batch", type=int, help="override the batch size")
    parser.add_argument("--size", type=int, help="override the image size")
    parser.add_argument("--depths", help="override the depths, e.g. 8,32,128")
    parser.add_argument("--steps", type=int, help="override the number of measured steps")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = dict(QUICK if args.quick else FULL)
    for key in ("batch", "size", "steps"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    if args.depths:
        cfg["depths"] = [int(d) for d in args.depths.split(",")]
    out = Path(args.out)
    (out / "grads").mkdir(parents=True, exist_ok=True)
    rows = []
    for family in args.families.split(","):
        for depth in cfg["depths"]:
            for method in METHODS[family]:
                grads = out / "grads" / f"{family}-{method}-{depth}.pt"
                spec = {
                    "family": family,
                    "method": method,
                    "depth": depth,
                    "cfg": cfg,
                    "device": device,
                    "grads": str(grads),
                }
                result = _run_worker(spec)
                result.update(family=family, method=method, depth=depth)
                print(json.dumps(result), flush=True)
                rows.append(result)
    report = _report(rows, cfg, device, out)
    (out / "report.md").write_text(report)
    print(report)


def _report(rows: list[dict], cfg: dict, device: str, out: Path) -> str:
    by_key = {(r["family"], r["method"], r["depth"]): r for r in rows}
    lines = [
        "# revlayers benchmark: one training step (forward, backward, SGD step)",
        "",
        f"State ({cfg['batch']}, {cfg['channels']}, {cfg['size']}, {cfg['size']}), hidden "
        f"{cfg['hidden']}, downsample 2, float32, device {device}, 1 thread; peak = "
        + ("torch.cuda.max_memory_allocated" if device == "cuda" else "VmHWM of a fresh process")
        + f"; step MB = peak minus the resident size before the first step; time = median (and "
        f"min) of {cfg['steps']} steps after one warm-up, as ratios to plain backprop in the same "
        "run. Gradient error: relative to plain backprop over all parameters, and the worst "
        "single tensor.",
        "",
        "| stack | method | depth | peak MB | step MB | mem / backprop | time s (median) "
        "| time / backprop (median) | time / backprop (min) | grad err (all) | grad err (worst) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        key = (r["family"], r["method"], r["depth"])
        if "error" in r:
            lines.append(f"| {key[0]} | {key[1]} | {key[2]} | failed: {r['error']} ||||||||")
            continue
        ref = by_key.get((key[0], "backprop", key[2]), {})
        mem_ratio = r["peak_mb"] / ref["peak_mb"] if "peak_mb" in ref else float("nan")
        time_ratio = r["time_s"] / ref["time_s"] if "time_s" in ref else float("nan")
        min_ratio = min(r["times"][1:]) / min(ref["times"][1:]) if "times" in ref else float("nan")
        if key[1] == "backprop":
            err = (0.0, 0.0)
        else:
            try:
                err = _grad_errors(
                    out / "grads" / f"{key[0]}-{key[1]}-{key[2]}.pt",
                    out / "grads" / f"{key[0]}-backprop-{key[2]}.pt",
                )
            except (OSError, RuntimeError):
                err = (float("nan"), float("nan"))
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {r['peak_mb']:.0f} | "
            f"{r['peak_mb'] - r['base_mb']:.0f} | {mem_ratio:.2f} | {r['time_s']:.2f} | "
            f"{time_ratio:.2f} | {min_ratio:.2f} | {err[0]:.1e} | {err[1]:.1e} |"
        )
    depths = cfg["depths"]
    lines += ["", f"Peak memory at depth {depths[-1]} / depth {depths[0]} (flat in depth = 1):", ""]
    for family, methods in METHODS.items():
        for method in methods:
            lo, hi = (
                by_key.get((family, method, depths[0])),
                by_key.get((family, method, depths[-1])),
            )
            if lo and hi and "peak_mb" in lo and "peak_mb" in hi:
                lines.append(f"- {family} / {method}: {hi['peak_mb'] / lo['peak_mb']:.2f}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
