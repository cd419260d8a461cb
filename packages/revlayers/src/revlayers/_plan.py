"""The work of one forward call of :class:`~revlayers.ReversibleSequence` and its backward pass.

Forward (grad enabled, run under ``no_grad``): keep only the output, the input (by reference)
and, with ``checkpoint_every=k``, the input of every k-th layer. States the engine produced and
nobody else holds are *owned*: the next layer may write its output into them
(:meth:`~revlayers.InvertibleModule.forward_step`), so couplings update half the channels in
place instead of concatenating.

Backward, one segment ``[a, b)`` between stored states at a time, from the last::

    state, grad = stored output (or stored x_b), dL/dy
    for i = b-1 .. a:
        x_i, dL/dx_i, dL/dtheta_i, dL/dcontext += layer_i.reverse_step(state, grad)
        state, grad = x_i, dL/dx_i
    check the rebuilt x_a against the stored one, continue from the stored x_a (exact), which
    bounds the drift to k layers (MEL Sec. 4)

Owned states and gradients are overwritten in place by the next reverse step; the input, the
stored states, the output, the incoming gradient and the context are never written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import torch
from torch import Tensor, nn

from ._base import InvertibleModule, frozen_stats, is_tracking_norm, replay
from ._drift import DriftPolicy, ReverseDiagnostics, drift_error
from ._errors import DriftError
from ._reverse import (
    ReverseContext,
    ReverseStep,
    check_tensor_result,
    relative_error,
    shares_memory,
    unalias,
)

__all__ = ["Plan", "inspect_layer"]


def _ptr(t: Tensor) -> int:
    return int(t.untyped_storage().data_ptr())


def inspect_layer(layer: InvertibleModule, label: str) -> list[nn.Module]:
    """Refuse layers that draw random numbers in training mode; return the tracking norms.

    One walk over the layer's modules: dropout with ``p > 0`` and RReLU in training mode raise
    ``ValueError`` (a recomputation would draw another mask); batch/instance norms that update
    running statistics are returned, so that replays restore them.
    """
    norms: list[nn.Module] = []
    for name, m in layer.named_modules():
        random = (isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0) or isinstance(
            m, nn.RReLU
        )
        if random and m.training:
            where = f"submodule '{name}'" if name else "the layer itself"
            raise ValueError(
                f"ReversibleSequence cannot train {label}: {where} is "
                f"{type(m).__name__}, which draws new random numbers on every call, so the "
                "backward pass would recompute the layer with a different mask and return "
                "wrong gradients (and a wrong inverse). Remove it, set p=0, or call .eval() on "
                "that submodule."
            )
        if is_tracking_norm(m):
            norms.append(m)
    return norms


class _Reports(Protocol):
    diagnostics: ReverseDiagnostics


class Plan:
    """Everything one forward call needs in its backward pass.

    Parameters
    ----------
    owner : ReversibleSequence
        The sequence; its ``diagnostics`` attribute receives the report of the backward pass.
    layers : sequence of InvertibleModule
        Its layers.
    context : tuple
        The context arguments of the call.
    checkpoint_every : int, optional
        Store the input of every k-th layer.
    policy : DriftPolicy
        The drift checks to run.
    labels : sequence of str, optional
        Where each layer sits in the caller's model (``"unroll 3 of 10"``), for messages.
    explain : callable, optional
        ``explain(first, last)``: a likely cause, in words, of drift found while reversing layers
        ``last .. first`` (``None``: the generic cause).
    """

    def __init__(
        self,
        owner: _Reports,
        layers: Sequence[InvertibleModule],
        context: tuple[object, ...],
        checkpoint_every: int | None,
        policy: DriftPolicy,
        *,
        labels: Sequence[str] | None = None,
        explain: Callable[[int, int], str | None] | None = None,
    ) -> None:
        self.owner = owner
        self.labels = labels
        self.explain = explain
        self.layers = list(layers)
        self.context = context
        self.checkpoint_every = checkpoint_every
        self.policy = policy
        self.diff: list[Tensor] = []
        self.index: dict[int, int] = {}
        for item in context:
            if isinstance(item, Tensor):
                self._add([item] if item.requires_grad else [])
            elif isinstance(item, nn.Module):
                self._add(p for p in item.parameters() if p.requires_grad)
        self.tensors = [tuple(layer.learnable_tensors()) for layer in self.layers]
        # layers on the generic reverse step: at a stored state they take the stored input
        # instead of inverting (their checkpoint check is then f(x_stored) against y)
        self.generic = [
            type(layer).reverse_step is InvertibleModule.reverse_step for layer in self.layers
        ]
        for tensors in self.tensors:
            self._add(tensors)
        self.norms: list[list[nn.Module]] = []

    def _add(self, tensors: Iterable[Tensor]) -> None:
        for t in tensors:
            if id(t) not in self.index:
                self.index[id(t)] = len(self.diff)
                self.diff.append(t)

    def name(self, i: int) -> str:
        """Layer ``i``'s name, prefixed by its place in the model when ``labels`` were given."""
        name = self.layers[i].layer_name()
        return name if self.labels is None else f"{self.labels[i]}: {name}"

    def label(self, i: int) -> str:
        """``"layer i (name)"`` for messages."""
        return f"layer {i} ({self.name(i)})"

    def cause(self, first: int, last: int) -> str | None:
        """Return the ``explain`` hook's cause of drift in layers ``first .. last``, if any."""
        return None if self.explain is None else self.explain(first, last)

    def prepare(self) -> None:
        """Refuse random layers and find the norms whose statistics the replays must restore."""
        self.norms = [inspect_layer(layer, self.label(i)) for i, layer in enumerate(self.layers)]

    def stored_indices(self) -> list[int]:
        """Return the indices of the layers whose inputs the forward pass keeps."""
        k = self.checkpoint_every
        return [0] if k is None else list(range(0, len(self.layers), k))

    def _context_ptrs(self) -> set[int]:
        return {_ptr(c) for c in self.context if isinstance(c, Tensor)}

    # -- forward --------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Run the layers (no graph); return the output and the stored states."""
        keep = set(self.stored_indices())
        protected = {_ptr(x), *self._context_ptrs()}
        stored: list[Tensor] = []
        h, owned = x, False
        for i, layer in enumerate(self.layers):
            if i in keep:
                stored.append(h)
                protected.add(_ptr(h))
                owned = False
            out = layer.forward_step(h, self.context, owned)
            h = check_tensor_result(out, self.label(i), "forward")
            owned = _ptr(h) not in protected
        return h, stored

    # -- backward -------------------------------------------------------------------------------
    def _context_leaves(self) -> tuple[tuple[object, ...], tuple[Tensor, ...]]:
        values: list[object] = []
        leaves: list[Tensor] = []
        for item in self.context:
            if isinstance(item, Tensor) and item.requires_grad:
                leaf = item.detach().requires_grad_()
                self.index[id(leaf)] = self.index[id(item)]
                values.append(leaf)
                leaves.append(leaf)
            else:
                values.append(item)
                if isinstance(item, nn.Module):
                    leaves.extend(p for p in item.parameters() if p.requires_grad)
        unique: dict[int, Tensor] = {id(t): t for t in leaves}
        return tuple(values), tuple(unique.values())

    def backward(
        self, stored: dict[int, Tensor], y: Tensor, grad_y: Tensor
    ) -> tuple[Tensor, list[Tensor | None]]:
        """Rebuild every layer from the output down; return ``dL/dx`` and the other gradients."""
        values, leaves = self._context_leaves()
        report = ReverseDiagnostics(mode=self.policy.mode)
        self.owner.diagnostics = report
        protected = {_ptr(y), _ptr(grad_y), *map(_ptr, stored.values()), *self._context_ptrs()}
        recompute = self.policy.active and self.policy.on_drift == "recompute"
        acc: list[Tensor | None] = [None] * len(self.diff)
        bounds = [*sorted(stored), len(self.layers)]
        state, grad = y.detach(), grad_y
        with replay():
            for s in reversed(range(len(bounds) - 1)):
                a, b = bounds[s], bounds[s + 1]
                if recompute:  # keep the segment's top gradient intact for a second pass
                    protected.add(_ptr(grad))
                segment = _Segment(self, a, b, values, leaves, protected, report)
                try:
                    grad_a, local = segment.run(state, grad, stored[a].detach(), None)
                except DriftError:
                    if not recompute:
                        raise
                    states = self._forward_states(a, b, stored[a], values)
                    protected.update(map(_ptr, states.values()))
                    grad_a, local = segment.run(state, grad, stored[a].detach(), states)
                    report.recomputed.append((a, b))
                for j, g in local.items():
                    prev = acc[j]
                    acc[j] = g if prev is None else prev + g
                state, grad = stored[a].detach(), grad_a
        return grad, acc

    def _forward_states(
        self, a: int, b: int, x_a: Tensor, values: tuple[object, ...]
    ) -> dict[int, Tensor]:
        """Recompute the inputs of layers ``a .. b-1`` forward from the stored ``x_a``."""
        states = {a: x_a.detach()}
        h = states[a]
        with torch.no_grad():
            for i in range(a, b - 1):
                with frozen_stats(self.norms[i]):
                    h = self.layers[i](h, *values)
                states[i + 1] = h
        return states


class _Segment:
    """The reverse pass over layers ``b-1 .. a``, from the state above them."""

    def __init__(
        self,
        plan: Plan,
        a: int,
        b: int,
        values: tuple[object, ...],
        leaves: tuple[Tensor, ...],
        protected: set[int],
        report: ReverseDiagnostics,
    ) -> None:
        self.plan, self.a, self.b = plan, a, b
        self.values, self.leaves = values, leaves
        self.protected, self.report = protected, report

    def run(
        self,
        y_top: Tensor,
        grad_top: Tensor,
        x_bottom: Tensor,
        states: dict[int, Tensor] | None,
    ) -> tuple[Tensor, dict[int, Tensor]]:
        """Reverse the segment; ``states``: exact inputs recomputed forward (no checks then)."""
        plan, a, b = self.plan, self.a, self.b
        checking = plan.policy.active and states is None
        local: dict[int, Tensor] = {}
        state, grad = y_top, grad_top
        own_state, own_grad = False, _ptr(grad) not in self.protected
        for i in range(b - 1, a - 1, -1):
            if states is not None and i + 1 < b:
                state, own_state = states[i + 1], False
            bottom = i == a and plan.generic[i]
            x_known = states[i] if states is not None else (x_bottom if bottom else None)
            check_layer = checking and plan.policy.checks_layer(plan.layers[i].exact_inverse)
            step = ReverseContext(
                self.values,
                self.leaves,
                plan.tensors[i],
                plan.label(i),
                x_known,
                want_residual=check_layer or (checking and bottom),
                overwrite_state=own_state,
                overwrite_grad=own_grad,
            )
            with frozen_stats(plan.norms[i]):
                res = plan.layers[i].reverse_step(state, grad, step)
            own_state, own_grad = self._ownership(res)
            self._accumulate(local, res, step.label, own_state or own_grad)
            if checking:  # after the gradients are safe: the check may reuse an owned x_a
                self._check(i, res, x_known, x_bottom, check_layer, own_state)
            state, grad = res.x, res.grad_x
        return grad, local

    def _ownership(self, res: ReverseStep) -> tuple[bool, bool]:
        """Whether the next step may overwrite the rebuilt state and its gradient."""
        if shares_memory(res.x, res.grad_x):
            return False, False
        return _ptr(res.x) not in self.protected, _ptr(res.grad_x) not in self.protected

    def _accumulate(
        self, local: dict[int, Tensor], res: ReverseStep, label: str, overwritten: bool
    ) -> None:
        tensors = [t for t, _ in res.grads]
        grads = [g for _, g in res.grads]
        if overwritten:  # a gradient living in a buffer the next step overwrites: copy it
            grads = unalias(grads, [res.x, res.grad_x])
        for t, g in zip(tensors, grads):
            if g is None:
                continue
            j = self.plan.index.get(id(t))
            if j is None:
                raise RuntimeError(
                    f"ReversibleSequence: {label} returned a gradient for a tensor "
                    f"of shape {tuple(t.shape)} that was not among its learnable_tensors() "
                    "at forward time; do not change requires_grad or the layer between "
                    "forward and backward."
                )
            prev = local.get(j)
            local[j] = g if prev is None else prev + g

    def _check(
        self,
        i: int,
        res: ReverseStep,
        x_known: Tensor | None,
        x_bottom: Tensor,
        check_layer: bool,
        owned: bool,
    ) -> None:
        """Run the layer check (approximate layers, or all) and, at ``a``, the checkpoint check."""
        policy, name = self.plan.policy, self.plan.name(i)
        tol = policy.tolerance_for(res.x.dtype)
        used_stored = i == self.a and x_known is not None and res.x is x_known
        if check_layer and not used_stored and res.residual is not None:
            self.report.record(i, res.residual, tol)
            if not res.residual <= tol:
                cause = self.plan.cause(i, i)
                raise drift_error(i, name, res.residual, policy, res.x, cause=cause)
        if i != self.a:
            return
        if used_stored:  # generic step from the stored input: compare f(x_stored) with rebuilt y
            drift, where = (res.residual if res.residual is not None else 0.0), "output"
        else:
            # the rebuilt x_a is not used after this check (the pass goes on from the stored
            # x_a): an owned one takes the difference in place
            diff = res.x.sub_(x_bottom) if owned else res.x - x_bottom
            drift, where = relative_error(diff, x_bottom), "input"
        self.report.record(i, drift, tol)
        if not drift <= tol:
            cause = self.plan.cause(i, self.b - 1)
            raise drift_error(
                i, name, drift, policy, res.x, where=where, top=self.b - 1, cause=cause
            )
