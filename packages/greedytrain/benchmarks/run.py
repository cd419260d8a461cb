"""Benchmark of greedytrain: end-to-end backprop vs GLEAM (M = 8) vs P-GLEAM over 2 processes.

The network is the issue's toy unrolled network: 8 stages, each a data-consistency gradient step
for single-coil Cartesian MRI (x <- x - t A^H (A x - y), A = mask * F) followed by a residual conv
block (conv 2->F, ReLU, conv F->F, ReLU, conv F->2, plus skip), on real channels
(batch 4, 2 x 256 x 256 by default).

Every configuration runs in a FRESH process (this script in worker mode, started by this script)
with ``MALLOC_MMAP_THRESHOLD_=65536`` so freed tensors leave the resident set. After one warm-up
step (which also allocates the Adam states), the worker writes 5 to /proc/self/clear_refs (the
peak resident set restarts from the current one), runs the timed steps, and reads VmHWM.
"Activations" is that peak minus the resident set just before the timed steps (weights, optimizer
states, data and the Python/torch runtime excluded). Time is the median over the timed steps.
On CUDA the same comparison uses torch.cuda.max_memory_allocated.

    python packages/greedytrain/benchmarks/run.py [--quick] [--out DIR]
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
from typing import Any

import torch
from torch import Tensor, nn

HERE = Path(__file__).resolve()
FULL = {"batch": 4, "size": 256, "features": 32, "stages": 8, "steps": 5}
QUICK = {"batch": 1, "size": 64, "features": 8, "stages": 8, "steps": 3}


# ---------------------------------------------------------------------- the toy network
def fft2c(x: Tensor) -> Tensor:
    return torch.fft.fftshift(
        torch.fft.fft2(torch.fft.ifftshift(x, dim=(-2, -1)), norm="ortho"), dim=(-2, -1)
    )


def ifft2c(x: Tensor) -> Tensor:
    return torch.fft.fftshift(
        torch.fft.ifft2(torch.fft.ifftshift(x, dim=(-2, -1)), norm="ortho"), dim=(-2, -1)
    )


class Stage(nn.Module):
    """Data-consistency step, then a residual conv block."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.step = nn.Parameter(torch.tensor(0.5))
        self.block = nn.Sequential(
            nn.Conv2d(2, features, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(features, features, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(features, 2, 3, padding=1),
        )

    def forward(self, x: Tensor, context: dict[str, Tensor]) -> Tensor:
        xc = torch.complex(x[:, 0], x[:, 1])
        grad = ifft2c(context["mask"] * (fft2c(xc) - context["y"]))
        x = x - self.step * torch.stack([grad.real, grad.imag], dim=1)
        return x + self.block(x)


def build(cfg: dict[str, int], device: torch.device) -> tuple[list[nn.Module], tuple[Any, ...]]:
    torch.manual_seed(0)
    stages = [Stage(cfg["features"]).to(device) for _ in range(cfg["stages"])]
    g = torch.Generator().manual_seed(1)
    b, n = cfg["batch"], cfg["size"]
    truth = torch.randn(b, n, n, dtype=torch.complex64, generator=g)
    mask = (torch.rand(n, n, generator=g) < 0.25).float()
    y = mask * fft2c(truth)
    channels = lambda z: torch.stack([z.real, z.imag], dim=1)  # noqa: E731
    batch = (channels(ifft2c(y)), {"y": y, "mask": mask}, channels(truth))
    return stages, tuple(
        t.to(device) if isinstance(t, Tensor) else {k: v.to(device) for k, v in t.items()}
        for t in batch
    )


def l1(prediction: Tensor, target: Tensor) -> Tensor:
    return (prediction - target).abs().mean()


# ---------------------------------------------------------------------- workers
def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


class SavedBytes:
    """Peak bytes of activations saved for backward (autograd saved-tensor hooks).

    A storage saved by several operations (a ReLU output that the next convolution also saves)
    counts once while any of them holds it; parameters saved by their operations are excluded
    (they are not activations and exist anyway).
    """

    def __init__(self, parameters: list[Tensor]) -> None:
        self.exclude = {p.untyped_storage().data_ptr() for p in parameters}
        self.held: dict[int, list[int]] = {}  # storage -> [holders, bytes]
        self.live = self.peak = 0

    def pack(self, tensor: Tensor) -> Any:
        import weakref

        box = _Box([tensor])
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in self.exclude:
            return box
        if key not in self.held:
            self.held[key] = [0, storage.nbytes()]
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
        self.held[key][0] += 1
        weakref.finalize(box, self._release, key)
        return box

    def _release(self, key: int) -> None:
        entry = self.held[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self.held[key]

    @staticmethod
    def unpack(box: Any) -> Tensor:
        return box.items[0]  # type: ignore[no-any-return]


class _Box:
    def __init__(self, items: list[Tensor]) -> None:
        self.items = items


def memory_worker(mode: str, cfg: dict[str, int], device_name: str) -> dict[str, Any]:
    """Peak memory of one training step of ``mode`` in this (fresh) process."""
    from greedytrain import GreedyTrainer

    torch.set_num_threads(1)
    device = torch.device(device_name)
    stages, batch = build(cfg, device)
    trainer = GreedyTrainer(stages, l1, modules=1 if mode == "end-to-end" else cfg["stages"])
    trainer.train_step(*batch)  # warm-up; allocates the Adam states
    saved = SavedBytes([p for stage in stages for p in stage.parameters()])
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
        trainer.train_step(*batch)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        resting = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")
        resting = _status("VmRSS")
    trainer.train_step(*batch)
    if cuda:
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() if cuda else _status("VmHWM")
    return {"mode": mode, "peak": peak, "resting": resting, "saved": saved.peak}


def timing_worker(cfg: dict[str, int], device_name: str, threads: int) -> dict[str, Any]:
    """Seconds per step of end-to-end and GLEAM, alternating step by step in one process so that
    the load of a shared machine hits both alike; medians after one warm-up step each."""
    from greedytrain import GreedyTrainer

    torch.set_num_threads(threads)
    device = torch.device(device_name)
    trainers, batch = {}, None
    for mode, modules in (("end-to-end", 1), ("GLEAM", cfg["stages"])):
        stages, batch = build(cfg, device)
        trainers[mode] = GreedyTrainer(stages, l1, modules=modules)
    assert batch is not None
    times: dict[str, list[float]] = {mode: [] for mode in trainers}
    for k in range(cfg["steps"] + 1):
        for mode, trainer in trainers.items():
            start = time.perf_counter()
            trainer.train_step(*batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if k:
                times[mode].append(time.perf_counter() - start)
    return {mode: {"time": statistics.median(t), "times": t} for mode, t in times.items()}


def pgleam_worker(cfg: dict[str, int], out: str) -> None:
    """One rank of P-GLEAM (started by torchrun), interleaved step by step with single-process
    GLEAM on rank 0 alone (rank 1 waits in a barrier), so both see the same machine load."""
    import torch.distributed as dist

    from greedytrain import GreedyTrainer
    from greedytrain.distributed import DistributedGreedyTrainer

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    first = dist.get_rank() == 0
    stages, (x0, context, target) = build(cfg, torch.device("cpu"))
    trainer = DistributedGreedyTrainer(stages, l1, modules=cfg["stages"])
    single = GreedyTrainer(build(cfg, torch.device("cpu"))[0], l1, modules=cfg["stages"])
    times: dict[str, list[float]] = {"P-GLEAM": [], "GLEAM": []}
    for k in range(cfg["steps"] + 1):
        dist.barrier()
        if first:
            start = time.perf_counter()
            single.train_step(x0, context, target)
            if k:
                times["GLEAM"].append(time.perf_counter() - start)
        dist.barrier()
        start = time.perf_counter()
        trainer.train_step(x0 if first else None, context, target)  # ends with a loss all-reduce
        if k:
            times["P-GLEAM"].append(time.perf_counter() - start)
    if first:
        result = {mode: {"time": statistics.median(t), "times": t} for mode, t in times.items()}
        Path(out).write_text(json.dumps(result))
    dist.destroy_process_group()


# ---------------------------------------------------------------------- parent
def _env() -> dict[str, str]:
    return {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}


def run_fresh(worker: str, cfg: dict[str, int], device: str, threads: int = 1) -> Any:
    args = [
        sys.executable,
        str(HERE),
        "--worker",
        worker,
        "--device",
        device,
        "--threads",
        str(threads),
        "--config",
        json.dumps(cfg),
    ]
    proc = subprocess.run(args, capture_output=True, text=True, env=_env(), timeout=3600)
    if proc.returncode:
        raise RuntimeError(f"worker {worker} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_pgleam(cfg: dict[str, int], out_dir: Path) -> dict[str, Any]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = out_dir / "pgleam.json"
    args = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        f"--master-port={port}",
        str(HERE),
        "--worker",
        "P-GLEAM",
        "--config",
        json.dumps(cfg),
        "--result",
        str(out),
    ]
    proc = subprocess.run(args, capture_output=True, text=True, env=_env(), timeout=3600)
    if proc.returncode:
        raise RuntimeError(f"P-GLEAM failed:\n{proc.stdout}\n{proc.stderr}")
    return dict(json.loads(out.read_text()))


def mib(n: float) -> str:
    return f"{n / 2**20:.0f}"


def report(cfg: dict[str, int], res: dict[str, Any], device: str, quick: bool) -> str:
    e2e, gleam = res["memory"]["end-to-end"], res["memory"]["GLEAM"]
    t = res["timing"]
    unit = "max_memory_allocated" if device == "cuda" else "peak RSS"
    lines = [
        f"# greedytrain benchmark ({'quick' if quick else 'full'}, {device})",
        "",
        f"Toy unrolled network: {cfg['stages']} stages (single-coil MRI data consistency + "
        f"residual conv block with {cfg['features']} features), batch {cfg['batch']}, 2 x "
        f"{cfg['size']} x {cfg['size']}, Adam, 1 thread per process. Load average while "
        f"measuring: {res['load']}.",
        "",
        f"| method | {unit} (MiB) | above resting (MiB) | ratio | saved for backward (MiB) "
        "| ratio |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in (("end-to-end", e2e), (f"GLEAM, M = {cfg['stages']}", gleam)):
        act, base_act = r["peak"] - r["resting"], e2e["peak"] - e2e["resting"]
        lines.append(
            f"| {name} | {mib(r['peak'])} | {mib(act)} | {act / base_act:.3f} | "
            f"{mib(r['saved'])} | {r['saved'] / e2e['saved']:.3f} |"
        )
    lines += [
        "",
        f"| method | processes x threads | time / iter (s, median of {cfg['steps']}) | ratio |",
        "|---|---|---|---|",
        f"| end-to-end | 1 x 1 | {t['end-to-end']['time']:.3f} | 1.000 |",
        f"| GLEAM, M = {cfg['stages']} | 1 x 1 | {t['GLEAM']['time']:.3f} | "
        f"{t['GLEAM']['time'] / t['end-to-end']['time']:.3f} |",
    ]
    if "pgleam" in res:
        pg, alone = res["pgleam"]["P-GLEAM"], res["pgleam"]["GLEAM"]
        lines += [
            "",
            "P-GLEAM over 2 processes (torchrun, gloo, 1 thread each), interleaved step by step "
            "with single-process GLEAM (1 thread) in the same job:",
            "",
            "| method | processes x threads | time / iter (s) | throughput vs GLEAM |",
            "|---|---|---|---|",
            f"| GLEAM, M = {cfg['stages']} | 1 x 1 | {alone['time']:.3f} | 1.00x |",
            f"| P-GLEAM, M = {cfg['stages']} | 2 x 1 | {pg['time']:.3f} | "
            f"{alone['time'] / pg['time']:.2f}x |",
        ]
    act = (gleam["peak"] - gleam["resting"]) / (e2e["peak"] - e2e["resting"])
    saved = gleam["saved"] / e2e["saved"]
    ratio = t["GLEAM"]["time"] / t["end-to-end"]["time"]
    lines += [
        "",
        "Targets of issue 6: activation memory <= 1/5 of end-to-end: "
        f"{'met' if saved <= 0.2 else 'MISSED'} for tensors saved for backward ({saved:.3f}), "
        f"{'met' if act <= 0.2 else 'MISSED'} for the whole peak above resting ({act:.3f}); "
        f"time <= 1.05 x end-to-end: {'met' if ratio <= 1.05 else 'MISSED'} ({ratio:.3f}).",
    ]
    if "pgleam" in res:
        speed = res["pgleam"]["GLEAM"]["time"] / res["pgleam"]["P-GLEAM"]["time"]
        lines.append(
            "P-GLEAM 2 processes x 1 thread >= 1.5x the throughput of GLEAM 1 x 1: "
            f"{'met' if speed >= 1.5 else 'MISSED'} ({speed:.2f}x)."
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[1])
    parser.add_argument("--out", default="bench-results/greedytrain")
    parser.add_argument("--quick", action="store_true", help="tiny configuration (< 1 minute)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "P-GLEAM":
        pgleam_worker(json.loads(args.config), args.result)
        return
    if args.worker == "timing":
        print(json.dumps(timing_worker(json.loads(args.config), args.device, args.threads)))
        return
    if args.worker:
        print(json.dumps(memory_worker(args.worker, json.loads(args.config), args.device)))
        return

    cfg = QUICK if args.quick else FULL
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = ""
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        res: dict[str, Any] = {
            "memory": {mode: run_fresh(mode, cfg, device) for mode in ("end-to-end", "GLEAM")},
            "timing": run_fresh("timing", cfg, device),
        }
        if device == "cpu":
            res["pgleam"] = run_pgleam(cfg, out_dir)
        res["load"] = " / ".join(f"{v:.1f}" for v in os.getloadavg())
        text += report(cfg, res, device, args.quick) + "\n"
        (out_dir / f"results-{device}.json").write_text(json.dumps(res, indent=1))
    (out_dir / "report.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
