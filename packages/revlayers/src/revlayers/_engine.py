"""Backpropagation without stored activations: :class:`ReversibleSequence`.

Forward (training, grad enabled): run the layers under ``no_grad`` and keep only the output,
the input (by reference) and, with ``checkpoint_every=k``, the input of every k-th layer.

Backward, one segment ``[a, b)`` between stored states at a time, from the last:

    state, grad = stored output (or stored x_b), dL/dy
    for i = b-1 .. a:
        x_i, dL/dx_i, dL/dtheta_i, dL/dcontext += layer_i._reverse(state, grad)
        state, grad = x_i, dL/dx_i
    continue with the stored x_a (exact), which bounds the drift to k layers (MEL Sec. 4)

``_reverse`` inverts and recomputes the layer with grad (generic) or, for couplings, runs the
coupling function forward and backward once. The whole scheme is one ``torch.autograd.Function``
whose inputs are ``x``, the context tensors and every learnable tensor, so autograd, optimizers
and ``DistributedDataParallel`` see ordinary gradients.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ._base import (
    InvertibleModule,
    _check_tensor_result,
    _Context,
    _frozen_stats,
    _relative,
    _replay,
    _Reversed,
)
from ._errors import DriftError

__all__ = ["ReversibleSequence"]

_ON_DRIFT = ("raise", "recompute")


def _label(index: int, layer: InvertibleModule) -> str:
    return f"layer {index} ({layer._label()})"


def _refuse_random_layers(layers: Iterable[InvertibleModule]) -> None:
    for i, layer in enumerate(layers):
        for name, m in layer.named_modules():
            random = (isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0) or isinstance(
                m, nn.RReLU
            )
            if random and m.training:
                where = f"submodule '{name}'" if name else "the layer itself"
                raise ValueError(
                    f"ReversibleSequence cannot train {_label(i, layer)}: {where} is "
                    f"{type(m).__name__}, which draws new random numbers on every call, so the "
                    "backward pass would recompute the layer with a different mask and return "
                    "wrong gradients (and a wrong inverse). Remove it, set p=0, or call .eval() on "
                    "that submodule."
                )


class _Plan:
    """Everything one forward call needs in its backward pass."""

    def __init__(self, seq: ReversibleSequence, context: tuple[object, ...]) -> None:
        self.layers: list[InvertibleModule] = list(seq.layers)  # type: ignore[arg-type]
        self.context = context
        self.checkpoint_every = seq.checkpoint_every
        self.check_drift = seq.check_drift
        self.on_drift = seq.on_drift
        self.diff: list[Tensor] = []
        self.index: dict[int, int] = {}
        for item in context:
            if isinstance(item, Tensor):
                if item.requires_grad:
                    self._add(item)
            elif isinstance(item, nn.Module):
                for p in item.parameters():
                    if p.requires_grad:
                        self._add(p)
        for layer in self.layers:
            for t in layer.learnable_tensors():
                self._add(t)

    def _add(self, t: Tensor) -> None:
        if id(t) not in self.index:
            self.index[id(t)] = len(self.diff)
            self.diff.append(t)

    def stored_indices(self) -> list[int]:
        k = self.checkpoint_every
        return [0] if k is None else list(range(0, len(self.layers), k))

    # -- forward --------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        keep = set(self.stored_indices())
        stored: list[Tensor] = []
        h = x
        for i, layer in enumerate(self.layers):
            if i in keep:
                stored.append(h)
            h = _check_tensor_result(layer(h, *self.context), _label(i, layer), "forward")
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
        values, leaves = self._context_leaves()
        acc: list[Tensor | None] = [None] * len(self.diff)
        bounds = [*sorted(stored), len(self.layers)]
        state, grad = y.detach(), grad_y
        with _replay():
            for s in reversed(range(len(bounds) - 1)):
                a, b = bounds[s], bounds[s + 1]
                try:
                    grad_a, local = self._segment(
                        a, b, state, grad, stored[a], values, leaves, None
                    )
                except DriftError:
                    if self.on_drift == "raise":
                        raise
                    replayed = self._forward_states(a, b, stored[a], values)
                    grad_a, local = self._segment(
                        a, b, state, grad, stored[a], values, leaves, replayed
                    )
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
                with _frozen_stats(self.layers[i]):
                    h = self.layers[i](h, *values)
                states[i + 1] = h
        return states

    def _segment(
        self,
        a: int,
        b: int,
        y_top: Tensor,
        grad_top: Tensor,
        x_bottom: Tensor,
        values: tuple[object, ...],
        leaves: tuple[Tensor, ...],
        states: dict[int, Tensor] | None,
    ) -> tuple[Tensor, dict[int, Tensor]]:
        tol = self.check_drift
        check = tol is not None and states is None
        local: dict[int, Tensor] = {}
        state, grad = y_top, grad_top
        x_bottom = x_bottom.detach()
        for i in range(b - 1, a - 1, -1):
            layer = self.layers[i]
            context = _Context(values, leaves, _label(i, layer))
            if states is not None:
                x_known: Tensor | None = states[i]
            else:
                x_known = x_bottom if i == a else None
            with _frozen_stats(layer):
                res = layer._reverse(state, grad, context, x_known, check)
            if check and tol is not None:
                _check(self, i, a, b, layer, res, x_known, x_bottom, tol)
            for t, g in res.grads:
                if g is None:
                    continue
                j = self.index.get(id(t))
                if j is None:
                    raise RuntimeError(
                        f"ReversibleSequence: {context.label} returned a gradient for a tensor "
                        f"of shape {tuple(t.shape)} that was not among its learnable_tensors() "
                        "at forward time; do not change requires_grad or the layer between "
                        "forward and backward."
                    )
                prev = local.get(j)
                local[j] = g if prev is None else prev + g
            state, grad = res.x, res.grad_x
        return grad, local


def _check(
    self: _Plan,
    i: int,
    a: int,
    b: int,
    layer: InvertibleModule,
    res: _Reversed,
    x_known: Tensor | None,
    x_bottom: Tensor,
    tol: float,
) -> None:
    """The two drift checks of one reverse step (see ``ReversibleSequence``)."""
    label = _label(i, layer)
    used_stored = i == a and x_known is not None and res.x is x_known
    if not used_stored and res.residual is not None and not res.residual <= tol:
        raise DriftError(
            f"ReversibleSequence: {label} does not reproduce the state it was rebuilt from: "
            f"||f(x_rebuilt) - y|| / ||y|| = {res.residual:.3g} > check_drift={tol:g}. Its inverse "
            "does not invert its forward (test the layer with revlayers.check_inverse) or its "
            "inverse solver stopped early. Fix the layer, or pass on_drift='recompute' to "
            "recompute the segment from its stored input.",
            layer_index=i,
            layer_name=layer._label(),
            kind="layer",
            drift=res.residual,
            tolerance=tol,
        )
    if i != a:
        return
    if used_stored:  # generic step from the stored input: compare f(x_stored) with the rebuilt y
        drift, where = (res.residual if res.residual is not None else 0.0), "output"
    else:
        drift, where = _relative(res.x - x_bottom, x_bottom), "input"
    if not drift <= tol:
        raise DriftError(
            f"ReversibleSequence: the {where} of {label} rebuilt by the reverse pass differs from "
            f"the one the stored state gives: relative error {drift:.3g} > check_drift={tol:g} "
            f"after reversing layers {b - 1}..{a}. Rounding errors grew along the reverse pass "
            "(MEL Sec. 4): store checkpoints more often (checkpoint_every=...), or pass "
            "on_drift='recompute'.",
            layer_index=i,
            layer_name=layer._label(),
            kind="checkpoint",
            drift=drift,
            tolerance=tol,
        )


class _ReversibleFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, plan: _Plan, x: Tensor, *diff: Tensor) -> Tensor:
        y, stored = plan.forward(x)
        if y.untyped_storage().data_ptr() == x.untyped_storage().data_ptr():
            y = y.clone()
        ctx.plan = plan
        ctx.stored_indices = plan.stored_indices()
        ctx.save_for_backward(*stored, y)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:
        plan: _Plan = ctx.plan
        saved = ctx.saved_tensors
        stored = dict(zip(ctx.stored_indices, saved[:-1]))
        grad_x, grads = plan.backward(stored, saved[-1], grad_y)
        return (None, grad_x, *grads)


class ReversibleSequence(InvertibleModule):
    r"""A chain of invertible layers trained with memory independent of its depth.

    ``forward(x, *context)`` applies ``layers[0]``, ..., ``layers[-1]``, each called as
    ``layer(state, *context)``. When autograd needs a graph (grad enabled and ``x``, a context
    tensor or a learnable tensor requires grad) the forward pass keeps no per-layer activations,
    only the output, a reference to the input, and with ``checkpoint_every=k`` the input of every
    k-th layer. The backward pass rebuilds each layer's input from its output, recomputes that
    layer alone and backpropagates (MEL Alg. 1). Gradients reach ``x``, every context tensor that
    requires grad (also complex ones, and parameters of ``nn.Module`` context items) and every
    layer's :meth:`~InvertibleModule.learnable_tensors`, and equal plain backprop up to the
    rounding of the inverses. Without a graph (``torch.no_grad``, inference) the layers simply
    run in order.

    Parameters
    ----------
    layers : iterable of InvertibleModule
        The layers, in order (weights may be shared or not).
    checkpoint_every : int, optional
        Store the input of every k-th layer in the forward pass (MEL's hybrid scheme, Sec. 4).
        The reverse pass then starts every segment of k layers from an exact state, so rounding
        errors accumulate over at most k inversions. Memory: ``ceil(depth / k)`` states.
    check_drift : float, optional
        Relative tolerance of two checks during the backward pass. *Layer check*: each rebuilt
        input, passed through its layer, must reproduce the state it was rebuilt from (catches
        non-invertible layers and inverse solvers that stopped early). *Checkpoint check*: at
        each stored state (the input, every k-th state) the rebuilt state must match the stored
        one (catches errors that grew along the reverse pass). Past the tolerance a
        :class:`DriftError` names the layer. ``None`` (default): no checks.
    on_drift : {"raise", "recompute"}
        With ``check_drift``: raise (default) or discard the segment's gradients, recompute its
        states forward from its stored input (``k`` states of memory; the whole depth when
        ``checkpoint_every`` is None) and backpropagate through those exact states.
    memory_saving : bool
        ``False`` runs plain backprop through the same layers (for comparisons and debugging).

    Notes
    -----
    * Stateful layers: running statistics of batch/instance norms are updated once, by the
      forward pass; the engine restores them after every recomputation. Layers that draw random
      numbers in training mode (``Dropout`` with ``p > 0``, ``RReLU``) are refused with a
      ``ValueError``. Layers with other state must skip updates while
      :func:`revlayers.replaying` is true.
    * In-place changes of the input or output after the forward pass are detected by autograd.
    * Only first derivatives: the backward pass is not itself differentiable.

    Shapes
    ------
    ``x``: what ``layers[0]`` accepts; ``y``: what ``layers[-1]`` returns (real or complex).
    """

    def __init__(
        self,
        layers: Iterable[InvertibleModule],
        checkpoint_every: int | None = None,
        check_drift: float | None = None,
        *,
        on_drift: Literal["raise", "recompute"] = "raise",
        memory_saving: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(layers, (nn.Module, Tensor)) and not isinstance(
            layers, (nn.ModuleList, nn.Sequential)
        ):
            raise TypeError(
                "ReversibleSequence expects an iterable of layers, got a single "
                f"{type(layers).__name__}: wrap it in a list, ReversibleSequence([layer])."
            )
        try:
            items = list(layers)
        except TypeError:
            raise TypeError(
                f"ReversibleSequence expects an iterable of InvertibleModule layers, got "
                f"{type(layers).__name__}."
            ) from None
        if not items:
            raise ValueError("ReversibleSequence expects at least one layer, got none.")
        for i, layer in enumerate(items):
            if not isinstance(layer, InvertibleModule):
                raise TypeError(
                    f"ReversibleSequence expects every layer to be a revlayers.InvertibleModule; "
                    f"layer {i} is {type(layer).__name__}. Wrap a function pair as "
                    "revlayers.Invertible(f, f_inverse), or subclass InvertibleModule and "
                    "implement forward and inverse."
                )
        if checkpoint_every is not None and (
            isinstance(checkpoint_every, bool)
            or not isinstance(checkpoint_every, int)
            or checkpoint_every < 1
        ):
            raise ValueError(
                f"ReversibleSequence expects checkpoint_every to be an int >= 1 (store every "
                f"k-th state) or None, got {checkpoint_every!r}."
            )
        if check_drift is not None and (
            isinstance(check_drift, bool)
            or not isinstance(check_drift, (int, float))
            or not (check_drift > 0 and math.isfinite(check_drift))
        ):
            raise ValueError(
                f"ReversibleSequence expects check_drift to be a finite relative tolerance > 0 "
                f"(e.g. 1e-4) or None, got {check_drift!r}."
            )
        if on_drift not in _ON_DRIFT:
            raise ValueError(
                f"ReversibleSequence expects on_drift to be one of {list(_ON_DRIFT)}, got "
                f"{on_drift!r}."
            )
        self.layers = nn.ModuleList(items)
        self.checkpoint_every = checkpoint_every
        self.check_drift = None if check_drift is None else float(check_drift)
        self.on_drift = on_drift
        self.memory_saving = bool(memory_saving)

    def extra_repr(self) -> str:
        return (
            f"checkpoint_every={self.checkpoint_every}, check_drift={self.check_drift}, "
            f"on_drift={self.on_drift!r}, memory_saving={self.memory_saving}"
        )

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[InvertibleModule]:
        return iter(self.layers)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> InvertibleModule:
        return self.layers[index]  # type: ignore[return-value]

    def forward(self, x: Tensor, *context: object) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(
                f"ReversibleSequence expects the state x to be a tensor, got {type(x).__name__}; "
                "pass context objects after it: seq(x, *context)."
            )
        if self.memory_saving and torch.is_grad_enabled():
            plan = _Plan(self, context)
            if x.requires_grad or plan.diff:
                _refuse_random_layers(plan.layers)
                out: Tensor = _ReversibleFunction.apply(plan, x, *plan.diff)
                return out
        for layer in self.layers:
            x = layer(x, *context)
        return x

    def inverse(self, y: Tensor, *context: object) -> Tensor:
        if not isinstance(y, Tensor):
            raise TypeError(f"ReversibleSequence.inverse expects a tensor, got {type(y).__name__}.")
        for layer in reversed(list(self)):
            y = layer.inverse(y, *context)
        return y
