"""Small layers and comparison helpers shared by the revlayers tests."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

import revlayers as rl


class SmallNet(nn.Module):
    """A coupling function: conv -> tanh -> conv, optionally reading a context image."""

    def __init__(self, cin: int, cout: int, context_channels: int = 0, dims: int = 2) -> None:
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
        self.c1 = conv(cin + context_channels, 6, 3, padding=1)
        self.c2 = conv(6, cout, 3, padding=1)

    def forward(self, x: Tensor, *context: object) -> Tensor:
        if context:
            c = context[0]
            assert isinstance(c, Tensor)
            x = torch.cat([x, c.real.expand(x.shape[0], *c.shape[1:])], dim=1)
        return self.c2(torch.tanh(self.c1(x)))


def mixed_layers(
    channels: int = 4, repeats: int = 2, context_channels: int = 1
) -> list[rl.InvertibleModule]:
    """Every layer type of the package, each with its own weights."""
    half = channels // 2
    layers: list[rl.InvertibleModule] = []
    for _ in range(repeats):
        layers += [
            rl.HouseholderConv(channels),
            rl.AdditiveCoupling(SmallNet(half, half, context_channels)),
            rl.AffineCoupling(SmallNet(half, 2 * half, context_channels), update="first"),
            rl.IRIMBlock(channels, hidden_channels=6, downsample=2),
            rl.InvertibleResidual(
                nn.Sequential(
                    nn.Conv2d(channels, 6, 3, padding=1), nn.ELU(), nn.Conv2d(6, channels, 1)
                ),
                pass_context=False,
            ),
        ]
    return layers


def grads_of(
    model: nn.Module, inputs: Sequence[Tensor], run: Callable[[], Tensor]
) -> tuple[list[Tensor | None], list[Tensor | None], Tensor]:
    """Gradients of ``run()``'s loss for the model's parameters and for ``inputs``."""
    model.zero_grad(set_to_none=True)
    for t in inputs:
        t.grad = None
    out = run()
    loss = (out.abs() ** 2).sum() * 0.5 + out.real.sum()
    loss.backward()
    return (
        [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        [None if t.grad is None else t.grad.clone() for t in inputs],
        out.detach(),
    )


def rel(a: Tensor | None, b: Tensor | None) -> float:
    assert a is not None
    assert b is not None
    den = torch.linalg.vector_norm(b).item()
    return torch.linalg.vector_norm(a - b).item() / (den if den > 0 else 1.0)


def compare_with_backprop(
    seq: rl.ReversibleSequence, x: Tensor, *context: object
) -> dict[str, float]:
    """Worst relative gradient error of ``seq`` against plain backprop on a deep copy."""
    ref = copy.deepcopy(seq)
    ref.memory_saving = False
    tensors = [x, *(c for c in context if isinstance(c, Tensor) and c.requires_grad)]
    p1, i1, y1 = grads_of(seq, tensors, lambda: seq(x, *context))
    p2, i2, y2 = grads_of(ref, tensors, lambda: ref(x, *context))
    assert all(b is not None for b in p2), "every parameter must get a gradient from backprop"
    return {
        "output": rel(y1, y2),
        "params": max(rel(a, b) for a, b in zip(p1, p2)),
        "input": rel(i1[0], i2[0]),
        "context": max((rel(a, b) for a, b in zip(i1[1:], i2[1:])), default=0.0),
    }
