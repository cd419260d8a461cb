"""Toy unrolled networks, a hand-written GLEAM reference and a process launcher for the tests.

Imported by the test modules (pytest puts this folder on sys.path) and by spawned workers.
"""

from __future__ import annotations

import datetime
import os
import socket
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn


def fft2c(x: Tensor) -> Tensor:
    return torch.fft.fftshift(
        torch.fft.fft2(torch.fft.ifftshift(x, dim=(-2, -1)), norm="ortho"), dim=(-2, -1)
    )


def ifft2c(x: Tensor) -> Tensor:
    return torch.fft.fftshift(
        torch.fft.ifft2(torch.fft.ifftshift(x, dim=(-2, -1)), norm="ortho"), dim=(-2, -1)
    )


class PGDStage(nn.Module):
    """x <- prox(x - t A^H(A x - y)) on real channels (B, 2, H, W); A = mask * F (single coil)."""

    def __init__(self, features: int = 4, step: float = 0.5) -> None:
        super().__init__()
        self.step = step
        self.conv1 = nn.Conv2d(2, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, 2, 3, padding=1)

    def forward(self, x: Tensor, context: dict[str, Any]) -> Tensor:
        xc = torch.complex(x[:, 0], x[:, 1])
        grad = ifft2c(context["mask"] * (fft2c(xc) - context["y"]))
        x = x - self.step * torch.stack([grad.real, grad.imag], dim=1)
        return x + self.conv2(torch.relu(self.conv1(x)))


class ComplexStage(nn.Module):
    """A complex state (B, H, W): x <- x - t A^H(A x - y) + small learned complex mixing."""

    def __init__(self, size: int = 6) -> None:
        super().__init__()
        self.mix = nn.Parameter(0.01 * torch.randn(size, size, dtype=torch.complex128))

    def forward(self, x: Tensor, context: dict[str, Any]) -> Tensor:
        x = x - 0.5 * ifft2c(context["mask"] * (fft2c(x) - context["y"]))
        return x + x @ self.mix.to(x.dtype)


class RIMStage(nn.Module):
    """A state (eta, s) like i-RIM's machine state; the prediction is eta."""

    def __init__(self, size: int = 6) -> None:
        super().__init__()
        self.a = nn.Linear(size, size).double()
        self.b = nn.Linear(size, size).double()

    def forward(
        self, state: tuple[Tensor, Tensor], context: dict[str, Any]
    ) -> tuple[Tensor, Tensor]:
        eta, s = state
        s = torch.tanh(self.a(eta) + s)
        return eta + self.b(s) - 0.1 * (eta - context["y"]), s


def make_stages(n: int, seed: int = 1, dtype: torch.dtype = torch.float64) -> list[nn.Module]:
    torch.manual_seed(seed)
    return [PGDStage().to(dtype) for _ in range(n)]


def make_batch(
    batch: int = 2, size: int = 8, seed: int = 2, dtype: torch.dtype = torch.float64
) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """(state0, context, target) for PGDStage: zero-filled image, k-space and mask, truth."""
    g = torch.Generator().manual_seed(seed)
    complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    truth = torch.randn(batch, size, size, generator=g, dtype=complex_dtype)
    mask = (torch.rand(size, size, generator=g) < 0.5).to(dtype)
    y = mask * fft2c(truth)
    x0 = ifft2c(y)
    as_channels = lambda z: torch.stack([z.real, z.imag], dim=1)  # noqa: E731
    return as_channels(x0), {"y": y, "mask": mask}, as_channels(truth)


def mse(prediction: Tensor, target: Tensor) -> Tensor:
    return (prediction - target).abs().pow(2).mean()


def gleam_reference(
    stages: Sequence[nn.Module],
    sizes: Sequence[int],
    batches: Sequence[tuple[Any, Any, Any]],
    losses: Sequence[Callable[[Any, Any], Tensor]] | None = None,
    weights: Sequence[float] | None = None,
    lr: float = 1e-3,
    clip: float | None = None,
    scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
    output_fn: Callable[[Any], Any] = lambda s: s,
) -> list[list[float]]:
    """GLEAM Alg. 1 written out by hand, independent of greedytrain: per module forward, its
    loss, backward, Adam update, then the detached output feeds the next module."""
    m_count = len(sizes)
    groups, start = [], 0
    for size in sizes:
        groups.append(list(stages[start : start + size]))
        start += size
    opts = [torch.optim.Adam([p for s in g for p in s.parameters()], lr=lr) for g in groups]
    scheds = [scheduler(o) for o in opts] if scheduler else None
    history = []
    for x0, context, target in batches:
        x, step_losses = x0, []
        for m in range(m_count):
            out = x.detach() if isinstance(x, Tensor) else tuple(t.detach() for t in x)
            for stage in groups[m]:
                out = stage(out, context)
            loss = (losses[m] if losses else mse)(output_fn(out), target)
            opts[m].zero_grad()
            (loss * (weights[m] if weights else 1.0)).backward()
            if clip is not None:
                nn.utils.clip_grad_norm_([p for s in groups[m] for p in s.parameters()], clip)
            opts[m].step()
            if scheds:
                scheds[m].step()
            step_losses.append(float(loss.detach()))
            x = out.detach() if isinstance(out, Tensor) else tuple(t.detach() for t in out)
        history.append(step_losses)
    return history


def flat_parameters(stages: Sequence[nn.Module]) -> Tensor:
    return torch.cat([p.detach().reshape(-1).cpu() for s in stages for p in s.parameters()])


# ---------------------------------------------------------------------- process launching
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _entry(
    rank: int, world: int, port: int, fn: Callable[..., None], args: tuple[Any, ...], log: str
) -> None:
    torch.set_num_threads(1)
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=120),
        )
        fn(rank, world, *args)
    except BaseException:
        Path(log).write_text(traceback.format_exc())
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_ranks(
    fn: Callable[..., None],
    world: int,
    args: tuple[Any, ...],
    workdir: Path,
    timeout: float = 180,
    wait_for: Sequence[int] | None = None,
) -> dict[int, str]:
    """Run ``fn(rank, world, *args)`` in ``world`` spawned gloo processes; always reaps them.

    With ``wait_for``, only those ranks must finish within ``timeout``; the others are killed
    once they have (a rank that stopped itself never finishes). Returns {rank: traceback} for the
    ranks that failed (empty when all succeeded).
    """
    ctx = mp.get_context("spawn")
    port = free_port()
    logs = [str(workdir / f"rank{r}.log") for r in range(world)]
    procs = [
        ctx.Process(target=_entry, args=(r, world, port, fn, args, logs[r]), daemon=True)
        for r in range(world)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    awaited = range(world) if wait_for is None else wait_for
    try:
        for r in awaited:
            procs[r].join(max(0.0, deadline - time.monotonic()))
    finally:
        hung = [r for r in awaited if procs[r].is_alive()]
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(10)
    if hung:
        raise TimeoutError(f"ranks {hung} did not finish within {timeout} s")
    return {r: Path(logs[r]).read_text() for r in range(world) if os.path.exists(logs[r])}


# ---------------------------------------------------------------------- distributed workers
def problem(kind: str, batch: int, seed: int) -> tuple[Any, Any, Any]:
    if kind == "pgd":
        return make_batch(batch=batch, seed=seed)
    if kind == "rim":  # a tuple state (eta, s); the prediction is eta
        g = torch.Generator().manual_seed(seed)
        y = torch.randn(batch, 6, generator=g, dtype=torch.float64)
        truth = torch.randn(batch, 6, generator=g, dtype=torch.float64)
        return (y.clone(), torch.zeros_like(y)), {"y": y}, truth
    g = torch.Generator().manual_seed(seed)
    truth = torch.randn(batch, 6, 6, generator=g, dtype=torch.complex128)
    mask = (torch.rand(6, 6, generator=g) < 0.5).double()
    y = mask * fft2c(truth)
    return ifft2c(y), {"y": y, "mask": mask}, truth


def stages_for(kind: str, n: int) -> list[nn.Module]:
    if kind == "pgd":
        return make_stages(n)
    if kind == "rim":
        torch.manual_seed(6)
        return [RIMStage() for _ in range(n)]
    torch.manual_seed(5)
    return [ComplexStage() for _ in range(n)]


def output_fn_for(kind: str) -> Callable[[Any], Any] | None:
    return first_of if kind == "rim" else None


def first_of(state: Any) -> Any:
    return state[0]


def take(tree: Any, rows: slice) -> Any:
    """The rows of a replica's share of the batch (tensors with a batch dimension)."""
    if isinstance(tree, Tensor):
        return tree[rows] if tree.dim() >= 3 else tree
    if isinstance(tree, dict):
        return {k: take(v, rows) for k, v in tree.items()}
    if isinstance(tree, tuple):
        return tuple(take(v, rows) for v in tree)
    return tree


def job_worker(
    rank: int, world: int, out: str, configs: list[dict[str, Any]], checks: bool
) -> None:
    """One process-group job running several scenarios in turn (starting processes is the slow
    part of these tests): with ``checks``, first a configuration mismatch, then every config in
    ``configs`` (results under ``out/config{i}``), then, with ``checks``, a failing rank."""
    if checks:
        mismatch_worker(rank, world, out)
    for i, config in enumerate(configs):
        folder = Path(out) / f"config{i}"
        folder.mkdir(exist_ok=True)
        gleam_worker(rank, world, str(folder), config)
    if checks:
        failing_worker(rank, world, out)


def gleam_worker(rank: int, world: int, out: str, config: dict[str, Any]) -> None:
    """Train a toy network with DistributedGreedyTrainer; write each rank's results."""
    from greedytrain.distributed import DistributedGreedyTrainer

    kind, steps, replicas = config["kind"], config["steps"], config.get("replicas", 1)
    stages = stages_for(kind, config["stages"])
    trainer = DistributedGreedyTrainer(
        stages,
        mse,
        modules=config["modules"],
        replicas=replicas,
        placement=config.get("placement", "round_robin"),
        data=config.get("data", "per_rank"),
        context_fn=(lambda c: {k: v for k, v in c.items() if k != "note"})
        if config.get("data") == "broadcast"
        else None,
        sync_losses=config.get("sync_losses", True),
        output_fn=output_fn_for(kind),
    )
    positions = world // replicas
    per_replica = config["batch"] // replicas
    rows = slice(trainer.replica * per_replica, (trainer.replica + 1) * per_replica)
    history = []
    for step in range(steps):
        x0, context, target = (take(t, rows) for t in problem(kind, config["batch"], 100 + step))
        if config.get("data") == "broadcast":
            context = {**context, "note": "a picklable non-tensor leaf"}
            if rank % positions != 0:
                x0, context, target = None, None, None
        elif rank % positions != 0:
            x0 = None
        history.append(trainer.train_step(x0, context, target))
    trainer.save(Path(out) / "checkpoint.pt", extra={"steps": steps})
    torch.save(
        {
            "losses": history,
            "modules": trainer.local_modules,
            "params": {
                m: [p.detach().clone() for p in trainer.runners[m].parameters()]
                for m in trainer.local_modules
            },
        },
        Path(out) / f"result{rank}.pt",
    )


def failing_worker(rank: int, world: int, out: str) -> None:
    """Rank 1's loss raises at step 1; every rank records the error it sees."""
    from greedytrain.distributed import DistributedGreedyTrainer, RankFailedError

    def loss(prediction: Tensor, target: Tensor) -> Tensor:
        if rank == 1 and trainer.step == 1:
            raise FloatingPointError("simulated failure: loss is not finite")
        return mse(prediction, target)

    trainer = DistributedGreedyTrainer(make_stages(4), loss, modules=4)
    try:
        for step in range(3):
            x0, context, target = make_batch(seed=step)
            trainer.train_step(x0 if rank == 0 else None, context, target)
    except RankFailedError as error:
        Path(out, f"error{rank}.txt").write_text(str(error))
        return
    Path(out, f"error{rank}.txt").write_text("no error")


def dead_rank_worker(rank: int, world: int, out: str, how: str, peer_timeout: float) -> None:
    """Rank 1 kills (``how="SIGKILL"``) or stops (``"SIGSTOP"``) itself during step 1; rank 0
    writes the error it got and when (``rank0.json``), rank 1 when it went (``rank1.json``)."""
    import json
    import signal

    from greedytrain.distributed import DistributedGreedyTrainer, RankFailedError

    def loss(prediction: Tensor, target: Tensor) -> Tensor:
        if rank == 1 and trainer.step == 1:
            Path(out, "rank1.json").write_text(json.dumps({"time": time.time()}))
            os.kill(os.getpid(), getattr(signal, how))
        return mse(prediction, target)

    trainer = DistributedGreedyTrainer(make_stages(4), loss, modules=4, peer_timeout=peer_timeout)
    try:
        for step in range(3):
            x0, context, target = make_batch(seed=step)
            trainer.train_step(x0 if rank == 0 else None, context, target)
    except RankFailedError as error:
        report = {"error": str(error), "time": time.time()}
        Path(out, f"rank{rank}.json").write_text(json.dumps(report))
        return
    Path(out, f"rank{rank}.json").write_text(json.dumps({"error": "no error"}))


def mismatch_worker(rank: int, world: int, out: str) -> None:
    from greedytrain.distributed import DistributedGreedyTrainer

    try:
        DistributedGreedyTrainer(make_stages(4), mse, modules=2 + 2 * rank)
    except ValueError as error:
        Path(out, f"mismatch{rank}.txt").write_text(str(error))


# ---------------------------------------------------------------------- kill-and-resume
class NoisyStage(PGDStage):
    """PGDStage with dropout, so training consumes the global RNG."""

    def forward(self, x: Tensor, context: dict[str, Any]) -> Tensor:
        return nn.functional.dropout(super().forward(x, context), p=0.2, training=self.training)


def resume_main(checkpoint: str, out: str, total: int, mode: str) -> None:
    """Train to ``total`` steps, saving after each; ``mode="resume"`` starts from the checkpoint,
    ``"victim"`` sleeps after each save so that the parent can kill it mid-run."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    stages = [NoisyStage().double() for _ in range(4)]
    from greedytrain import GreedyTrainer

    trainer = GreedyTrainer(
        stages,
        mse,
        lambda p: torch.optim.AdamW(p, lr=1e-2),
        modules=2,
        scheduler_factory=lambda o: torch.optim.lr_scheduler.StepLR(o, 2, 0.5),
    )
    history: dict[int, list[float]] = {}
    if mode == "resume":
        history = trainer.load(checkpoint)
    while trainer.step < total:
        x0, context, target = make_batch(seed=int(torch.randint(0, 10**6, ())))
        x0 = x0 + 0.01 * torch.randn_like(x0)
        step = trainer.step
        history[step] = trainer.train_step(x0, context, target)
        trainer.save(checkpoint, extra=history)
        print(f"saved {trainer.step}", flush=True)
        if mode == "victim":
            time.sleep(0.3)
    torch.save({"params": flat_parameters(stages), "history": history}, out)
