"""Processes for the distributed tests of unrolled.train: gloo on CPU, spawned by the test.

Starting processes is the slow part (importing torch and unrolled takes seconds on a loaded
2-core machine), so one job of two ranks runs many scenarios in turn, each in a process group of
its own (a failing scenario destroys its group), and writes its results to files the test reads.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import unrolled

SIZE = 16
STEPS = 3


class Stop(Exception):
    """Raised by a callback to stop a run, as a crash would."""


# ---------------------------------------------------------------------- models and data
def dataset(split: str = "train", dtype: str = "float64") -> unrolled.TaskDataset:
    return unrolled.make_dataset("multicoil_mri", split, image_size=SIZE, num_coils=4, dtype=dtype)


def model(kind: str, dtype: str = "float64") -> unrolled.UnrolledModel:
    torch.manual_seed(0)
    if kind == "luser":
        solver = {"tol": 1e-10, "max_iter": 200, "on_failure": "ignore"}
        m: unrolled.UnrolledModel = unrolled.LUSER(
            iterations=2, features=8, groups=4, aux_loss_weight=0.0, solver=solver
        )
    elif kind == "resnet":
        m = unrolled.MoDL(iterations=2, prior="resnet", features=4, cg_max_iter=20)
    else:
        m = unrolled.MoDL(iterations=2, features=4, cg_max_iter=20)
    return m.double() if dtype == "float64" else m


#: name -> (model kind, dtype, strategy, strategy options, extra train options)
SCENARIOS: dict[str, tuple[str, str, str, dict[str, Any], dict[str, Any]]] = {
    "backprop-float64": ("modl", "float64", "backprop", {}, {}),
    "backprop-float32": ("modl", "float32", "backprop", {}, {}),
    "checkpoint-float64": ("resnet", "float64", "checkpoint", {}, {}),
    "reversible-float64": ("modl", "float64", "reversible", {}, {}),
    "implicit-float64": ("luser", "float64", "implicit", {}, {}),
    "greedy-float64": ("modl", "float64", "greedy", {"modules": 2}, {}),
    # networks compiled in place before DDP wraps the loss (torch.compile, inductor)
    "compile-reversible-float32": ("modl", "float32", "reversible", {}, {"compile": True}),
    "greedy-replicas-float64": ("modl", "float64", "greedy", {"modules": 2, "replicas": 2}, {}),
    "bf16-backprop": ("modl", "float32", "backprop", {}, {"precision": "bf16-mixed"}),
    "bf16-greedy": ("modl", "float32", "greedy", {"modules": 2}, {"precision": "bf16-mixed"}),
}


def train_options(extra: dict[str, Any]) -> dict[str, Any]:
    return {"steps": STEPS, "batch_size": 4, "lr": 1e-2, "progress": False, **extra}


def train_scenario(name: str, ranked: bool = True) -> tuple[unrolled.UnrolledModel, Any]:
    """Train scenario ``name`` (in a job when a process group is up); return model and result."""
    kind, dtype, strategy, options, extra = SCENARIOS[name]
    if not ranked:  # the 1-process reference of a P-GLEAM run with replicas
        options = {k: v for k, v in options.items() if k != "replicas"}
    m = model(kind, dtype)
    result = unrolled.train(
        m, dataset(dtype=dtype), strategy=strategy, strategy_options=options,
        **train_options(extra),
    )  # fmt: skip
    return m, result


def params(m: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in m.parameters()]


# ---------------------------------------------------------------------- the job's scenarios
def _group(out: Path, name: str, rank: int, world: int) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"file://{out / ('store-' + name)}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=120),
    )


def _scenario(out: Path, name: str, rank: int, world: int, fn: Callable[[], Any]) -> None:
    """Run ``fn`` in a fresh process group; record its result or its error."""
    _group(out, name, rank, world)
    try:
        result = fn()
    except Exception as error:
        (out / f"{name}-error{rank}.txt").write_text(f"{type(error).__name__}: {error}")
        return
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    torch.save(result, out / f"{name}{rank}.pt")


def _run_folder_scenario(out: Path, rank: int) -> dict[str, Any]:
    m = model("modl", "float64")
    result = unrolled.train(
        m, dataset(), dataset("val"), run_dir=str(out / "run"), val_every=2, val_samples=5,
        val_batch_size=2, checkpoint_every=2, **train_options({}),
    )  # fmt: skip
    return {"params": params(m), "val": result.val_history, "world": result.world_size}


def _resume_scenario(out: Path, rank: int, mode: str) -> dict[str, Any]:
    options = train_options({"steps": 5, "checkpoint_every": 2, "scheduler": "cosine"})

    def stop(row: dict[str, Any]) -> None:
        if row["step"] == 3:
            raise Stop("stopped after step 3")

    m = model("modl", "float64")
    if mode == "killed":
        unrolled.train(m, dataset(), run_dir=str(out / "resume"), callback=stop, **options)
    result = unrolled.train(
        m, dataset(), run_dir=str(out / mode), resume=mode == "resume", **options
    )
    return {"params": params(m), "losses": result.losses, "from": result.resumed_from}


def _failing_scenario(rank: int) -> None:
    def boom(row: dict[str, Any]) -> None:
        if rank == 1 and row["step"] == 2:
            raise FloatingPointError("simulated failure of rank 1")

    unrolled.train(model("modl", "float32"), dataset(dtype="float32"), callback=boom,
                   **train_options({"steps": 6}))  # fmt: skip


def job(rank: int, world: int, out: str) -> None:
    """Every scenario in turn (see the module docstring)."""
    folder = Path(out)
    for name in SCENARIOS:

        def run(name: str = name) -> dict[str, Any]:
            m, result = train_scenario(name)
            return {"params": params(m), "losses": result.losses}

        _scenario(folder, name, rank, world, run)
    _scenario(folder, "run-folder", rank, world, lambda: _run_folder_scenario(folder, rank))
    for mode in ("straight", "killed"):
        _scenario(
            folder, f"resume-{mode}", rank, world,
            lambda mode=mode: _resume_scenario(folder, rank, mode),
        )  # fmt: skip
    # the run stopped at step 3 (checkpoint at 2) continues; "killed" wrote into out/resume
    _scenario(
        folder, "resume-resume", rank, world, lambda: _resume_scenario(folder, rank, "resume")
    )
    _scenario(
        folder, "bad-batch", rank, world,
        lambda: unrolled.train(model("modl", "float32"), dataset(dtype="float32"),
                               **train_options({"batch_size": 3})),
    )  # fmt: skip
    _scenario(folder, "failure", rank, world, lambda: _failing_scenario(rank))
    dead_rank(rank, world, out)  # last: rank 1 dies


def dead_rank(rank: int, world: int, out: str) -> None:
    """Rank 1 kills itself (SIGKILL) after step 2; rank 0 writes the error it got and when."""
    folder = Path(out)
    _group(folder, "dead", rank, world)

    def die(row: dict[str, Any]) -> None:
        if rank == 1 and row["step"] == 2:
            (folder / "killed-at.txt").write_text(str(time.time()))
            os.kill(os.getpid(), signal.SIGKILL)

    try:
        unrolled.train(model("modl", "float32"), dataset(dtype="float32"), callback=die,
                       **train_options({"steps": 20}))  # fmt: skip
    except Exception as error:
        report = {"error": f"{type(error).__name__}: {error}", "time": time.time()}
        (folder / f"dead{rank}.json").write_text(json.dumps(report))


# ---------------------------------------------------------------------- launching
def _entry(rank: int, world: int, fn: Callable[..., None], out: str) -> None:
    torch.set_num_threads(1)
    try:
        fn(rank, world, out)
    except BaseException:
        Path(out, f"crash{rank}.txt").write_text(traceback.format_exc())
        raise


def run_job(fn: Callable[..., None], out: Path, world: int = 2, timeout: float = 600,
            wait_for: tuple[int, ...] | None = None) -> dict[int, str]:  # fmt: skip
    """Run ``fn(rank, world, out)`` in ``world`` spawned processes; always reap them.

    Only the ranks of ``wait_for`` (default all) must finish within ``timeout``. Returns the
    tracebacks of ranks that crashed outside the scenarios' own error handling.
    """
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_entry, args=(r, world, fn, str(out)), daemon=True) for r in range(world)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    try:
        for r in wait_for if wait_for is not None else range(world):
            procs[r].join(max(0.0, deadline - time.monotonic()))
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join(10)
    crashes = {r: out / f"crash{r}.txt" for r in range(world)}
    return {r: path.read_text() for r, path in crashes.items() if path.exists()}
