"""Backpropagation without stored activations: :class:`ReversibleSequence`.

The whole scheme (:mod:`revlayers._plan`) is one ``torch.autograd.Function`` whose inputs are
``x``, the context tensors and every learnable tensor, so autograd, optimizers and
``DistributedDataParallel`` see ordinary gradients. Each layer's reverse step is its
:meth:`~revlayers.InvertibleModule.reverse_step`: the generic one inverts and recomputes the layer
with grad; couplings run the coupling function forward and backward once, in place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ._base import InvertibleModule
from ._drift import DriftPolicy, ReverseDiagnostics
from ._plan import Plan
from ._reverse import shares_memory
from ._validate import positive_int

__all__ = ["ReversibleSequence"]


class _ReversibleFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, plan: Plan, x: Tensor, *diff: Tensor) -> Tensor:
        y, stored = plan.forward(x)
        if shares_memory(y, x):
            y = y.clone()
        ctx.plan = plan
        ctx.stored_indices = plan.stored_indices()
        ctx.save_for_backward(*stored, y)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:
        plan: Plan = ctx.plan
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
    check_drift : "auto", float or None
        Drift control of the backward pass (see "Drift control" below). ``"auto"`` (default):
        the cheap checks with a tolerance from the state's dtype (``1e-5`` in float32, ``1e-10``
        in float64; :func:`revlayers.auto_tolerance`). A float: every check at every layer with
        that relative tolerance. ``None``: no checks.
    on_drift : {"raise", "recompute"}, optional
        What a failed check does: raise :class:`DriftError` naming the layer and a likely cause,
        or discard the segment's gradients, recompute its states forward from its stored input
        (``k`` states of memory; the whole depth when ``checkpoint_every`` is None) and
        backpropagate through those exact states (gradients then equal backprop in that
        segment). Default (``None``): recompute with ``"auto"``, raise with a float tolerance.
    memory_saving : bool
        ``False`` runs plain backprop through the same layers (for comparisons and debugging).
    labels : sequence of str, optional
        One label per layer saying where it sits in the caller's model (``"unroll 3 of 10"``);
        messages and :class:`DriftError` name layers as ``"label: LayerClass"``.
    explain : callable, optional
        ``explain(first, last) -> str | None``: a likely cause, in words, of drift found while
        reversing layers ``last`` down to ``first`` (``first == last`` for a layer check). A
        model that knows its layers (a CG step with a small ``mu``, a solve that did not
        converge) puts its diagnosis in the :class:`DriftError` this way; ``None`` keeps the
        generic cause. Called only when a check fails.

    Attributes
    ----------
    diagnostics : ReverseDiagnostics
        What the last backward pass checked: ``checks``, ``max_drift``, ``worst_layer``,
        ``tolerance`` and the ``recomputed`` segments (``recomputed_segments`` counts them), so
        that a recomputation is never invisible.

    Notes
    -----
    *Drift control.* Two checks compare what the reverse pass rebuilt with what the forward pass
    computed. *Checkpoint check*: at each stored state (the input, and every ``k``-th state with
    ``checkpoint_every=k``) the rebuilt state must match the stored one; this costs one
    subtraction per stored state and catches errors that grew along the reverse pass and
    inverses that are off. *Layer check*: the rebuilt input, passed through its layer, must
    reproduce the state it was rebuilt from; ``"auto"`` runs it only at layers whose inverse is
    approximate (``exact_inverse=False``: :class:`InvertibleResidual`, CG or fixed-point
    inverses), where the reverse step computes that forward anyway; a float tolerance runs it
    at every layer (for couplings that costs an extra pass over the state). With exact layers
    ``"auto"`` costs about nothing (README: within noise of ``None``).

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
        check_drift: float | Literal["auto"] | None = "auto",
        *,
        on_drift: Literal["raise", "recompute"] | None = None,
        memory_saving: bool = True,
        labels: Sequence[str] | None = None,
        explain: Callable[[int, int], str | None] | None = None,
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
        if checkpoint_every is not None:
            positive_int(
                "ReversibleSequence",
                "checkpoint_every",
                checkpoint_every,
                expected="to be an int >= 1 (store every k-th state) or None",
            )
        policy = DriftPolicy.from_arguments(check_drift, on_drift)
        if labels is not None:
            labels = [str(label) for label in labels]
            if len(labels) != len(items):
                raise ValueError(
                    f"ReversibleSequence expects one label per layer, got {len(labels)} labels "
                    f"for {len(items)} layers."
                )
        if explain is not None and not callable(explain):
            raise TypeError(
                "ReversibleSequence expects explain to be a callable explain(first, last) -> "
                f"str | None, got {type(explain).__name__}."
            )
        self.labels = labels
        self.explain = explain
        self.layers = nn.ModuleList(items)
        self.checkpoint_every = checkpoint_every
        self.check_drift: float | str | None = (
            policy.tolerance if policy.mode == "all" else check_drift
        )
        self.on_drift = on_drift
        self.exact_inverse = all(layer.exact_inverse for layer in items)
        self.diagnostics = ReverseDiagnostics()
        self.memory_saving = bool(memory_saving)

    def extra_repr(self) -> str:
        return (
            f"checkpoint_every={self.checkpoint_every}, check_drift={self.check_drift!r}, "
            f"on_drift={self.on_drift!r}, memory_saving={self.memory_saving}"
        )

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[InvertibleModule]:
        return iter(self.layers)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> InvertibleModule:
        return self.layers[index]  # type: ignore[return-value]

    # torch.compile runs the engine eagerly (a graph break): its autograd.Function holds a Python
    # plan and its backward rebuilds inputs and calls autograd.grad layer by layer (compiled
    # layers inside still run compiled)
    @torch.compiler.disable
    def forward(self, x: Tensor, *context: object) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(
                f"ReversibleSequence expects the state x to be a tensor, got {type(x).__name__}; "
                "pass context objects after it: seq(x, *context)."
            )
        if self.memory_saving and torch.is_grad_enabled():
            policy = DriftPolicy.from_arguments(self.check_drift, self.on_drift)
            plan = Plan(
                self,
                list(self),
                context,
                self.checkpoint_every,
                policy,
                labels=self.labels,
                explain=self.explain,
            )
            if x.requires_grad or plan.diff:
                plan.prepare()
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
