"""The invertible-module protocol and the generic reverse step the engine falls back on.

Every layer of a :class:`~revlayers.ReversibleSequence` is an :class:`InvertibleModule`:
``forward(x, *context) -> y`` and ``inverse(y, *context) -> x``. During the backward pass the
engine hands each layer the state ``y`` it produced and the gradient ``dL/dy`` and asks for
the input ``x`` and ``dL/dx`` plus the gradients of the layer's learnable tensors and of the
context (:meth:`InvertibleModule._reverse`). The generic step inverts, recomputes the layer with
grad and backpropagates; couplings override it with the one-forward-one-backward trick.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["InvertibleModule", "replaying"]

_REPLAY = threading.local()


def replaying() -> bool:
    """Whether this thread is inside a reverse pass of :class:`~revlayers.ReversibleSequence`.

    While it is true, the engine is re-running layers (inverses, recomputations, segment
    replays) whose forward pass already ran once. A layer with state that its forward pass
    updates (a step counter, a power-iteration vector) must not update it again then: check
    ``revlayers.replaying()`` and skip the update. :class:`~revlayers.InvertibleResidual` does
    so for its spectral-norm estimates, and the engine itself restores the running statistics of
    batch/instance norms.
    """
    return bool(getattr(_REPLAY, "active", False))


@contextmanager
def _replay() -> Iterator[None]:
    previous = replaying()
    _REPLAY.active = True
    try:
        yield
    finally:
        _REPLAY.active = previous


@dataclass
class _Context:
    """What one layer sees during the reverse pass.

    ``values`` are the context arguments handed to the layer (tensors that need a gradient are
    replaced by detached leaves that require grad); ``leaves`` are every context-side tensor
    that needs a gradient (those leaves and the parameters of ``nn.Module`` context items);
    ``label`` names the layer in error messages.
    """

    values: tuple[object, ...]
    leaves: tuple[Tensor, ...]
    label: str = "layer"


@dataclass
class _Reversed:
    """Result of one reverse step: the rebuilt input, its gradient and the other gradients."""

    x: Tensor
    grad_x: Tensor
    grads: list[tuple[Tensor, Tensor | None]] = field(default_factory=list)
    residual: float | None = None


class InvertibleModule(nn.Module):
    """Base class of every layer a :class:`~revlayers.ReversibleSequence` accepts.

    Subclasses implement ``forward(x, *context) -> y`` and ``inverse(y, *context) -> x`` with
    ``inverse(forward(x, *c), *c) == x``. ``context`` holds tensors (or other objects) that the
    layer reads but does not change, such as measurements or a data-consistency gradient.

    The gradient rule
    -----------------
    During backpropagation without stored activations the engine computes gradients for exactly
    these tensors: the input ``x``, every context tensor that requires grad (and the parameters
    of ``nn.Module`` context items), and each layer's :meth:`learnable_tensors`: its
    ``parameters()`` that require grad plus tensors declared with ``parameters=`` on
    :class:`~revlayers.Invertible` and :class:`~revlayers.InvertibleResidual`. A tensor that a
    layer closes over, that requires grad and that is none of these would lose its gradient; the
    engine detects this while it recomputes the layer and raises ``ValueError``.
    """

    _extra_tensors: tuple[Tensor, ...] = ()

    def forward(self, x: Tensor, *context: object) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement forward(x, *context)")

    def inverse(self, y: Tensor, *context: object) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement inverse(y, *context)")

    def learnable_tensors(self) -> list[Tensor]:
        """Tensors of this layer that receive gradients from the reverse pass.

        Its ``parameters()`` that require grad, then tensors declared (but not registered) by
        this layer or by invertible sub-layers, each once.
        """
        seen: set[int] = set()
        out: list[Tensor] = []
        for p in self.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
        for m in self.modules():
            if isinstance(m, InvertibleModule):
                for t in m._extra_tensors:
                    if t.requires_grad and id(t) not in seen:
                        seen.add(id(t))
                        out.append(t)
        return out

    def _label(self) -> str:
        return type(self).__name__

    def _reverse(
        self,
        y: Tensor,
        grad_y: Tensor,
        context: _Context,
        x_known: Tensor | None,
        want_residual: bool,
    ) -> _Reversed:
        """Rebuild the input from ``y`` (or take ``x_known``) and backpropagate ``grad_y``.

        The generic version runs ``inverse`` (unless ``x_known`` is given), recomputes
        ``forward`` with grad and calls :func:`torch.autograd.grad`. Layers with a cheaper exact
        scheme override it (couplings: one forward and one backward of the coupling function).
        """
        return _reverse_generic(self, y, grad_y, context, x_known, want_residual)


def _check_tensor_result(value: object, label: str, method: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(
            f"{label}.{method} returned {type(value).__name__}; an invertible layer must return "
            "one tensor (the new state). Return a single tensor, e.g. concatenate several outputs."
        )
    return value


def _relative(diff: Tensor, ref: Tensor) -> float:
    den = torch.linalg.vector_norm(ref).item()
    num = torch.linalg.vector_norm(diff).item()
    return num / den if den > 0 else num


def _unique(tensors: Sequence[Tensor]) -> list[Tensor]:
    seen: set[int] = set()
    out: list[Tensor] = []
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def _audit(outputs: Sequence[Tensor], allowed: Sequence[Tensor], label: str) -> None:
    """Raise if the graph of ``outputs`` reaches a grad-requiring tensor not in ``allowed``.

    Walks the recomputed layer's autograd graph back from its outputs. It stops at the allowed
    tensors (leaves, or the nodes of allowed non-leaf tensors); any other leaf that requires
    grad, reached directly or through an outer graph, is a tensor the layer closes over whose
    gradient the engine would drop.
    """
    allowed_leaves = {id(t) for t in allowed if t.grad_fn is None}
    allowed_nodes = {t.grad_fn for t in allowed if t.grad_fn is not None}
    stack: list[Any] = [o.grad_fn for o in outputs if o.grad_fn is not None]
    seen: set[object] = set()
    while stack:
        node = stack.pop()
        if node is None or node in seen or node in allowed_nodes:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if isinstance(variable, Tensor):  # AccumulateGrad: a leaf that requires grad
            if id(variable) not in allowed_leaves:
                raise ValueError(
                    f"{label} computes its output from a tensor of shape {tuple(variable.shape)} "
                    f"and dtype {variable.dtype} that requires grad but is neither a context "
                    "tensor nor one of the layer's learnable_tensors(), so ReversibleSequence "
                    "would drop its gradient. Pass it as context (seq(x, *context)), make it a "
                    "parameter of the layer (an nn.Module attribute), or declare it: "
                    "Invertible(f, f_inverse, parameters=[tensor]) or "
                    "InvertibleResidual(g, parameters=[tensor])."
                )
            continue
        stack.extend(fn for fn, _ in node.next_functions)


def _grad(
    outputs: Sequence[Tensor],
    inputs: Sequence[Tensor],
    grad_outputs: Sequence[Tensor],
    label: str,
) -> list[Tensor | None]:
    """``torch.autograd.grad`` with the closure audit, tolerant of outputs without a graph."""
    pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if o.requires_grad]
    if not pairs:
        return [None] * len(inputs)
    outs, gouts = zip(*pairs)
    _audit(outs, inputs, label)
    grads = torch.autograd.grad(outs, list(inputs), list(gouts), allow_unused=True)
    return list(grads)


def _reverse_generic(
    layer: InvertibleModule,
    y: Tensor,
    grad_y: Tensor,
    context: _Context,
    x_known: Tensor | None,
    want_residual: bool,
) -> _Reversed:
    if x_known is None:
        with torch.no_grad():
            x = _check_tensor_result(layer.inverse(y, *context.values), context.label, "inverse")
    else:
        x = x_known
    tensors = layer.learnable_tensors()
    with torch.enable_grad():
        xr = x.detach().requires_grad_(x.is_floating_point() or x.is_complex())
        out = _check_tensor_result(layer(xr, *context.values), context.label, "forward")
    if out.shape != y.shape:
        raise ValueError(
            f"{context.label}: forward(inverse(y)) has shape {tuple(out.shape)} but y has shape "
            f"{tuple(y.shape)}; forward and inverse of an invertible layer must map the state "
            "shapes onto each other."
        )
    wrt = (
        _unique([xr, *context.leaves, *tensors])
        if xr.requires_grad
        else _unique([*context.leaves, *tensors])
    )
    grads = _grad([out], wrt, [grad_y], context.label)
    if xr.requires_grad:
        grad_x = grads[0] if grads[0] is not None else torch.zeros_like(x)
        rest = list(zip(wrt[1:], grads[1:]))
    else:
        grad_x = torch.zeros_like(x)
        rest = list(zip(wrt, grads))
    residual = _relative(out.detach() - y, y) if want_residual else None
    return _Reversed(x, grad_x, rest, residual)


def _norm_layers(module: nn.Module) -> list[nn.Module]:
    return [
        m
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._NormBase)
        and m.training
        and m.track_running_stats
        and m.running_mean is not None
    ]


@contextmanager
def _frozen_stats(module: nn.Module) -> Iterator[None]:
    """Restore the running statistics of batch/instance norms of ``module`` on exit.

    The forward pass updated them once; inverses and recomputations must not update them again.
    """
    norms = _norm_layers(module)
    if not norms:
        yield
        return
    saved = [{k: b.clone() for k, b in m.named_buffers(recurse=False)} for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, buffers in zip(norms, saved):
                for k, b in m.named_buffers(recurse=False):
                    b.copy_(buffers[k])
