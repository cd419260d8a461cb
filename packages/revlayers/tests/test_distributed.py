"""ReversibleSequence inside DistributedDataParallel: two gloo processes on CPU."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import revlayers as rl

WORLD = 2


def _model() -> rl.ReversibleSequence:
    torch.manual_seed(0)
    layers: list[rl.InvertibleModule] = []
    for _ in range(3):
        g = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 2, 3, padding=1))
        layers += [rl.HouseholderConv(4), rl.AdditiveCoupling(g, pass_context=False)]
    return rl.ReversibleSequence(layers, checkpoint_every=2).double()


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 4, 6, 6, dtype=torch.float64, generator=gen)
    target = torch.randn(4, 4, 6, 6, dtype=torch.float64, generator=gen)
    return x, target


def _rank(rank: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        model = DistributedDataParallel(_model())
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x, target = _data()
        half = x.shape[0] // WORLD
        xs, ts = x[rank * half : (rank + 1) * half], target[rank * half : (rank + 1) * half]
        grads = []
        for _ in range(2):  # two steps: gradients are averaged and the weights stay in sync
            opt.zero_grad()
            loss = (model(xs.clone().requires_grad_()) - ts).square().mean()
            loss.backward()
            grads.append([p.grad.clone() for p in model.parameters()])
            opt.step()
        torch.save({"grads": grads, "params": list(model.parameters())}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
@pytest.mark.slow
def test_ddp_two_gloo_processes_match_single_process_backprop(tmp_path: Path) -> None:
    mp.spawn(_rank, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ref = _model()
    ref.memory_saving = False  # plain backprop, one process, full batch
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    x, target = _data()
    expected = []
    for _ in range(2):
        opt.zero_grad()
        (ref(x) - target).square().mean().backward()
        expected.append([copy.deepcopy(p.grad) for p in ref.parameters()])
        opt.step()
    for rank in range(WORLD):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        for step_grads, step_expected in zip(result["grads"], expected):
            for g, e in zip(step_grads, step_expected):
                torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
        for p, q in zip(result["params"], ref.parameters()):
            torch.testing.assert_close(p, q.detach(), rtol=1e-10, atol=1e-12)
