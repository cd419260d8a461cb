"""Activation checkpointing of unrolled steps that is safe for stateful layers.

``torch.utils.checkpoint`` recomputes a segment's forward during backward. A BatchNorm layer in
training mode would then update its running statistics twice per step (once in the forward, once
in the recomputation), silently training a different model than plain backprop. The recomputation
here restores every BatchNorm buffer it touched, so ``"checkpoint"`` gives exactly the model, the
gradients and the running statistics of ``"backprop"``. Dropout is reproduced by the RNG state
that ``torch.utils.checkpoint`` preserves.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["checkpoint_segments"]


def _norm_buffers(modules: Sequence[nn.Module]) -> list[torch.Tensor]:
    buffers: list[torch.Tensor] = []
    seen: set[int] = set()
    for module in modules:
        for sub in module.modules():
            if isinstance(sub, nn.modules.batchnorm._NormBase) and id(sub) not in seen:
                seen.add(id(sub))
                buffers += [b for b in sub.buffers(recurse=False) if b is not None]
    return buffers


@contextlib.contextmanager
def _restoring(buffers: list[torch.Tensor]) -> Iterator[None]:
    saved = [b.detach().clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, s in zip(buffers, saved):
                b.copy_(s)


# torch.compile runs this eagerly (a graph break): dynamo cannot trace torch.utils.checkpoint with
# a context_fn, which restores the BatchNorm statistics (compiled networks inside stay compiled)
@torch.compiler.disable
def checkpoint_segments(
    steps: Sequence[Callable[[Any], Any]],
    modules: Sequence[nn.Module],
    state: Any,
    every: int = 1,
) -> Any:
    """Run ``state = step(state)`` for every step, checkpointing every ``every`` steps.

    Parameters
    ----------
    steps:
        Callables taking and returning the state (a tensor or a tuple of tensors); they may
        close over measurements and operators.
    modules:
        The modules the steps run (their BatchNorm statistics are protected).
    state:
        The initial state.
    every:
        Steps per checkpointed segment (``torch.utils.checkpoint``, non-reentrant).
    """
    if every < 1:
        raise ValueError(f"checkpoint_every must be a positive integer, got {every!r}")
    buffers = _norm_buffers(modules)

    def contexts() -> tuple[
        contextlib.AbstractContextManager[None], contextlib.AbstractContextManager[None]
    ]:
        return contextlib.nullcontext(), _restoring(buffers)

    for start in range(0, len(steps), every):
        segment = steps[start : start + every]

        def run(*flat: Any, _segment: Sequence[Callable[[Any], Any]] = segment) -> Any:
            s: Any = flat if len(flat) > 1 else flat[0]
            for step in _segment:
                s = step(s)
            return s

        flat = state if isinstance(state, tuple) else (state,)
        state = checkpoint(run, *flat, use_reentrant=False, context_fn=contexts)
    return state
