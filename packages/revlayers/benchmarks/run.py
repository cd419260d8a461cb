"""Memory and time of one training step: ReversibleSequence against its peers.

Two stacks share the same residual block ``g`` (i-RIM's: strided conv by 2, 3x3 conv,
transposed conv, GLU, weight norm) on a ``(2, 64, 128, 128)`` state (``--batch``, ``--size``):

* ``irim``: ``IRIMBlock`` layers (Householder mixing + additive coupling). Methods: plain
  backprop, ``torch.utils.checkpoint`` per layer, memcnn's ``InvertibleModuleWrapper`` and
  ``ReversibleSequence``. RevLib cannot express the orthogonal mixing, so it is left out here.
* ``additive``: additive couplings alternating the updated half (RevNet). Methods: the four
  above plus RevLib's ``ReversibleSequential`` (the same couplings).

``revlayers`` is ``ReversibleSequence`` with its defaults (``check_drift="auto"``);
``revlayers-none`` the same without drift checks (``check_drift=None``), so their ratio is the
cost of the default checks; ``revlayers-baseline`` runs the ``ReversibleSequence`` of another
source tree (``--baseline-src``, e.g. the previous release unpacked) with its defaults, for
before/after figures from the same run.

Each configuration runs in a fresh process (``--worker``), started by this script with
``MALLOC_MMAP_THRESHOLD_=65536``; the worker writes 5 to ``/proc/self/clear_refs`` before the
measured steps and reads ``VmHWM`` after (on CUDA: ``torch.cuda.max_memory_allocated``). Time is
the median of the measured steps after a warm-up step. With ``--repeats R`` every configuration
runs R times, round robin (all configurations once, then again), and the report gives same-run
ratios (each repetition's time over backprop's, and over RevLib's, in that repetition) as their
mean and range: on a shared machine absolute times drift, ratios from the same minute much less.
Gradients of every method are compared with plain backprop on the same weights and input.

    python packages/revlayers/benchmarks/run.py [--quick] [--out DIR] [--repeats R]
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
    "irim": ["backprop", "checkpoint", "memcnn", "revlayers", "revlayers-none"],
    "additive": ["backprop", "checkpoint", "memcnn", "revlib", "revlayers", "revlayers-none"],
}
BASELINE = "revlayers-baseline"


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

    if method in ("backprop", "revlayers", BASELINE):
        model = rl.ReversibleSequence(layers, memory_saving=method != "backprop")
        return model, params
    if method == "revlayers-none":
        return rl.ReversibleSequence(layers, check_drift=None), params
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

    cpu_times: list[float] = []

    def step() -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        start, cpu_start = time.perf_counter(), time.process_time()
        x = x0.clone().requires_grad_()  # memcnn frees its input; RevLib needs requires_grad
        y = model(x)
        loss = y.square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        cpu_times.append(time.process_time() - cpu_start)
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
    import revlayers

    return {
        "revlayers": str(Path(revlayers.__file__).parent),
        "peak_mb": peak_mb,
        "base_mb": base_mb,
        "time_s": statistics.median(times[1:]),
        "times": times,
        # CPU time of this one-thread process: what another job on the machine does not add
        "cpu_s": statistics.median(cpu_times[1:]),
    }


# -- parent ---------------------------------------------------------------------------------------
def _run_worker(spec: dict) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    if spec.get("src"):  # another revlayers source tree first on the path
        env["PYTHONPATH"] = os.pathsep.join([spec["src"], env.get("PYTHONPATH", "")])
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


def _configurations(args: argparse.Namespace, cfg: dict) -> list[tuple[str, int, str]]:
    wanted = args.methods.split(",") if args.methods else None
    configs = []
    for family in args.families.split(","):
        methods = list(METHODS[family]) + ([BASELINE] if args.baseline_src else [])
        for depth in cfg["depths"]:
            for method in methods:
                if wanted is None or method in wanted:
                    configs.append((family, depth, method))
    return configs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-results/revlayers")
    parser.add_argument("--quick", action="store_true", help="tiny configuration (< 1 minute)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--families", default="irim,additive")
    parser.add_argument("--methods", help="only these methods, e.g. backprop,revlib,revlayers")
    parser.add_argument("--batch", type=int, help="override the batch size")
    parser.add_argument("--size", type=int, help="override the image size")
    parser.add_argument("--depths", help="override the depths, e.g. 8,32,128")
    parser.add_argument("--steps", type=int, help="override the number of measured steps")
    parser.add_argument("--repeats", type=int, default=1, help="round-robin repetitions")
    parser.add_argument("--baseline-src", help="a source tree (its src/ folder) to compare with")
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
    for rep in range(args.repeats):
        for family, depth, method in _configurations(args, cfg):
            spec = {
                "family": family,
                "method": method,
                "depth": depth,
                "cfg": cfg,
                "device": device,
                "grads": str(out / "grads" / f"{family}-{method}-{depth}.pt"),
                "src": args.baseline_src if method == BASELINE else None,
            }
            result = _run_worker(spec)
            result.update(family=family, method=method, depth=depth, rep=rep)
            print(json.dumps(result), flush=True)
            rows.append(result)
    (out / "rows.json").write_text(json.dumps(rows, indent=1))
    report = _report(rows, cfg, device, out, args.repeats)
    (out / "report.md").write_text(report)
    print(report)


def _ratios(rows: list[dict], key: tuple, ref_method: str, field: str) -> list[float]:
    """Per repetition: the configuration's ``field`` over ``ref_method``'s in that repetition."""
    family, method, depth = key
    by_rep = {
        (r["method"], r["rep"]): r for r in rows if (r["family"], r["depth"]) == (family, depth)
    }
    out = []
    for (m, rep), r in by_rep.items():
        ref = by_rep.get((ref_method, rep))
        if m == method and ref and field in r and field in ref:
            out.append(r[field] / ref[field])
    return out


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.2f}"
    return f"{mean:.2f} [{min(values):.2f}-{max(values):.2f}]"


def _report(rows: list[dict], cfg: dict, device: str, out: Path, repeats: int) -> str:
    keys = list(dict.fromkeys((r["family"], r["method"], r["depth"]) for r in rows))
    ok = [r for r in rows if "error" not in r]
    lines = [
        "# revlayers benchmark: one training step (forward, backward, SGD step)",
        "",
        f"State ({cfg['batch']}, {cfg['channels']}, {cfg['size']}, {cfg['size']}), hidden "
        f"{cfg['hidden']}, downsample 2, float32, device {device}, 1 thread; peak = "
        + ("torch.cuda.max_memory_allocated" if device == "cuda" else "VmHWM of a fresh process")
        + "; step MB = peak minus the resident size before the first step (medians over "
        f"repetitions). Time: median of {cfg['steps']} steps after one warm-up in each of "
        f"{repeats} round-robin repetition(s); ratios are same-repetition ratios, given as mean "
        "[min-max] over the repetitions. CPU time: the process's own (one thread), which other "
        "jobs on a shared machine inflate much less than wall time. Gradient error: relative to "
        "plain backprop over all parameters, and the worst single tensor (last repetition).",
        "",
        "| stack | method | depth | peak MB | step MB | mem / backprop | time s (median) "
        "| time / backprop | time / RevLib | CPU time / backprop | CPU time / RevLib "
        "| grad err (all) | grad err (worst) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in keys:
        runs = [r for r in ok if (r["family"], r["method"], r["depth"]) == key]
        if not runs:
            error = next(r["error"] for r in rows if (r["family"], r["method"], r["depth"]) == key)
            lines.append(f"| {key[0]} | {key[1]} | {key[2]} | failed: {error} ||||||||||")
            continue
        peak = statistics.median(r["peak_mb"] for r in runs)
        step = statistics.median(r["peak_mb"] - r["base_mb"] for r in runs)
        mem = statistics.median(_ratios(ok, key, "backprop", "peak_mb") or [float("nan")])
        seconds = statistics.median(r["time_s"] for r in runs)
        err = _grad_error_of(out, key)
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {peak:.0f} | {step:.0f} | {mem:.2f} | "
            f"{seconds:.2f} | {_spread(_ratios(ok, key, 'backprop', 'time_s'))} | "
            f"{_spread(_ratios(ok, key, 'revlib', 'time_s'))} | "
            f"{_spread(_ratios(ok, key, 'backprop', 'cpu_s'))} | "
            f"{_spread(_ratios(ok, key, 'revlib', 'cpu_s'))} | {err[0]:.1e} | {err[1]:.1e} |"
        )
    depths = cfg["depths"]
    lines += ["", f"Peak memory at depth {depths[-1]} / depth {depths[0]} (flat in depth = 1):", ""]
    for family, method, depth in keys:
        if depth != depths[0]:
            continue
        lo = [
            r["peak_mb"]
            for r in ok
            if (r["family"], r["method"], r["depth"]) == (family, method, depth)
        ]
        hi = [
            r["peak_mb"]
            for r in ok
            if (r["family"], r["method"], r["depth"]) == (family, method, depths[-1])
        ]
        if lo and hi:
            lines.append(
                f"- {family} / {method}: {statistics.median(hi) / statistics.median(lo):.2f}"
            )
    return "\n".join(lines) + "\n"


def _grad_error_of(out: Path, key: tuple) -> tuple[float, float]:
    family, method, depth = key
    if method == "backprop":
        return 0.0, 0.0
    try:
        return _grad_errors(
            out / "grads" / f"{family}-{method}-{depth}.pt",
            out / "grads" / f"{family}-backprop-{depth}.pt",
        )
    except (OSError, RuntimeError):
        return float("nan"), float("nan")


if __name__ == "__main__":
    main()
