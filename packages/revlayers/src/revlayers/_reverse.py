"""One reverse step of the engine: what a layer is handed, what it returns, and the generic step.

During the backward pass of :class:`~revlayers.ReversibleSequence` each layer receives the state
``y`` it produced, the gradient ``dL/dy`` and a :class:`ReverseContext`, and returns a
:class:`ReverseStep`: its input ``x``, ``dL/dx`` and the gradients of its learnable tensors and of
the context. :func:`reverse_generic` is the step every layer gets unless it overrides
:meth:`~revlayers.InvertibleModule.reverse_step`: invert, recompute the layer with grad,
backpropagate once over all its inputs. :func:`grad_with_audit` refuses tensors a layer closes
over that would silently lose their gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

__all__ = [
    "ReverseContext",
    "ReverseStep",
    "check_tensor_result",
    "grad_with_audit",
    "relative_error",
    "reverse_generic",
    "shares_memory",
    "unalias",
    "unique",
]


@dataclass
class ReverseContext:
    """What one layer is handed by the engine for its reverse step.

    Attributes
    ----------
    values : tuple
        The context arguments for the layer's calls; tensors that need a gradient are replaced by
        detached leaves that require grad.
    leaves : tuple of Tensor
        Every context-side tensor that needs a gradient (those leaves and the parameters of
        ``nn.Module`` context items). Compute gradients for them too.
    tensors : tuple of Tensor, optional
        The layer's :meth:`~revlayers.InvertibleModule.learnable_tensors` (the engine collects
        them once per forward call); ``None``: ask the layer.
    label : str
        Names the layer in error messages (``"layer 3 (AdditiveCoupling(g))"``).
    x_known : Tensor, optional
        The layer's exact input where the engine has it (a stored state); a layer may use it
        instead of inverting.
    want_residual : bool
        Report ``||f(x) - y|| / ||y||`` for the rebuilt ``x`` in :attr:`ReverseStep.residual`.
    overwrite_state, overwrite_grad : bool
        ``y`` (``grad_y``) belongs to the engine and nothing else reads it: the layer may write
        its result into that memory instead of allocating (couplings do).
    """

    values: tuple[object, ...]
    leaves: tuple[Tensor, ...]
    tensors: tuple[Tensor, ...] | None = None
    label: str = "layer"
    x_known: Tensor | None = None
    want_residual: bool = False
    overwrite_state: bool = False
    overwrite_grad: bool = False

    def tensors_of(self, layer: _HasTensors) -> tuple[Tensor, ...]:
        """Return :attr:`tensors`, or ``layer.learnable_tensors()`` when the engine gave none."""
        return self.tensors if self.tensors is not None else tuple(layer.learnable_tensors())


class _HasTensors(Protocol):
    def learnable_tensors(self) -> list[Tensor]: ...


@dataclass
class ReverseStep:
    """Result of one reverse step.

    Attributes
    ----------
    x : Tensor
        The layer's input, rebuilt from its output (or the ``x_known`` it was given).
    grad_x : Tensor
        ``dL/dx``.
    grads : list of (Tensor, Tensor or None)
        ``(tensor, dL/dtensor)`` for the layer's learnable tensors and the context leaves.
    residual : float, optional
        ``||f(x) - y|| / ||y||`` when the context asked for it.
    """

    x: Tensor
    grad_x: Tensor
    grads: list[tuple[Tensor, Tensor | None]] = field(default_factory=list)
    residual: float | None = None


def check_tensor_result(value: object, label: str, method: str) -> Tensor:
    """Return ``value`` if it is a tensor, else raise ``TypeError`` naming the layer's method."""
    if not isinstance(value, Tensor):
        raise TypeError(
            f"{label}.{method} returned {type(value).__name__}; an invertible layer must return "
            "one tensor (the new state). Return a single tensor, e.g. concatenate several outputs."
        )
    return value


def relative_error(diff: Tensor, ref: Tensor) -> float:
    """``||diff|| / ||ref||`` (``||diff||`` when ``ref`` is zero), with one host transfer."""
    num, den = torch.stack(
        (torch.linalg.vector_norm(diff).float(), torch.linalg.vector_norm(ref).float())
    ).tolist()
    return num / den if den > 0 else num


def shares_memory(a: Tensor, b: Tensor) -> bool:
    """Whether ``a`` and ``b`` live in the same storage (views of one another, or the same)."""
    return bool(a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr())


def unalias(grads: list[Tensor | None], buffers: Sequence[Tensor]) -> list[Tensor | None]:
    """``grads`` with a copy of every gradient that lives in one of ``buffers``.

    Autograd may hand a gradient output straight back (``d(x + b)/db``); a gradient kept for a
    learnable tensor must not change when the engine later writes into that buffer in place.
    """
    return [
        g.clone() if g is not None and any(shares_memory(g, b) for b in buffers) else g
        for g in grads
    ]


def unique(tensors: Sequence[Tensor]) -> list[Tensor]:
    """``tensors`` without repeats (by identity), in order."""
    seen: set[int] = set()
    out: list[Tensor] = []
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def _closure_error(variable: Tensor, label: str) -> ValueError:
    return ValueError(
        f"{label} computes its output from a tensor of shape {tuple(variable.shape)} "
        f"and dtype {variable.dtype} that requires grad but is neither a context "
        "tensor nor one of the layer's learnable_tensors(), so ReversibleSequence "
        "would drop its gradient. Pass it as context (seq(x, *context)), make it a "
        "parameter of the layer (an nn.Module attribute), or declare it: "
        "Invertible(f, f_inverse, parameters=[tensor]) or "
        "InvertibleResidual(g, parameters=[tensor])."
    )


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
                raise _closure_error(variable, label)
            continue
        stack.extend(fn for fn, _ in node.next_functions)


def grad_with_audit(
    outputs: Sequence[Tensor],
    inputs: Sequence[Tensor],
    grad_outputs: Sequence[Tensor],
    label: str,
) -> list[Tensor | None]:
    """One :func:`torch.autograd.grad` over all ``inputs``, after the closure audit.

    Outputs without a graph contribute nothing; inputs they do not reach get ``None``.
    """
    pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if o.requires_grad]
    if not pairs:
        return [None] * len(inputs)
    outs, gouts = zip(*pairs)
    _audit(outs, inputs, label)
    grads = torch.autograd.grad(outs, list(inputs), list(gouts), allow_unused=True)
    return list(grads)


def reverse_generic(layer: Any, y: Tensor, grad_y: Tensor, step: ReverseContext) -> ReverseStep:
    """Invert ``layer`` (unless ``step.x_known``), recompute it with grad and backpropagate."""
    if step.x_known is None:
        with torch.no_grad():
            x = check_tensor_result(layer.inverse(y, *step.values), step.label, "inverse")
    else:
        x = step.x_known
    with torch.enable_grad():
        xr = x.detach().requires_grad_(x.is_floating_point() or x.is_complex())
        out = check_tensor_result(layer(xr, *step.values), step.label, "forward")
    if out.shape != y.shape:
        raise ValueError(
            f"{step.label}: forward(inverse(y)) has shape {tuple(out.shape)} but y has shape "
            f"{tuple(y.shape)}; forward and inverse of an invertible layer must map the state "
            "shapes onto each other."
        )
    others = [*step.leaves, *step.tensors_of(layer)]
    wrt = unique([xr, *others] if xr.requires_grad else others)
    grads = grad_with_audit([out], wrt, [grad_y], step.label)
    if xr.requires_grad:
        grad_x = grads[0] if grads[0] is not None else torch.zeros_like(x)
        rest = list(zip(wrt[1:], grads[1:]))
    else:
        grad_x = torch.zeros_like(x)
        rest = list(zip(wrt, grads))
    residual = relative_error(out.detach() - y, y) if step.want_residual else None
    return ReverseStep(x, grad_x, rest, residual)
