"""The invertible-module protocol, including the two hooks the reversible engine calls.

Every layer of a :class:`~revlayers.ReversibleSequence` is an :class:`InvertibleModule`:
``forward(x, *context) -> y`` and ``inverse(y, *context) -> x``. The engine calls two hooks
that layers may override for speed: :meth:`InvertibleModule.forward_step` (the forward pass
without a graph, allowed to overwrite an input the engine owns) and
:meth:`InvertibleModule.reverse_step` (given ``y`` and ``dL/dy``, return ``x``, ``dL/dx`` and
the gradients of the learnable tensors and the context). The generic reverse step inverts,
recomputes the layer with grad and backpropagates; couplings override it with the
one-forward-one-backward trick and write their results in place.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from ._reverse import ReverseContext, ReverseStep, reverse_generic

__all__ = [
    "InvertibleModule",
    "declared_tensors",
    "frozen_stats",
    "has_forward_hooks",
    "is_tracking_norm",
    "norm_layers",
    "replay",
    "replaying",
    "store_callable",
    "stored_callable",
]

_REPLAY = threading.local()


def replaying() -> bool:
    """Whether this thread is inside a reverse pass of :class:`~revlayers.ReversibleSequence`.

    While it is true, the engine is re-running layers (inverses, recomputations, segment
    replays) whose forward pass already ran once. A layer with state that its forward pass
    updates (a step counter, a power-iteration vector) must not update it again then: check
    ``revlayers.replaying()`` and skip the update. :class:`~revlayers.InvertibleResidual` does
    so for its spectral-norm estimates, and the engine itself restores the running statistics of
    batch/instance norms.

    Returns
    -------
    bool
        True inside a reverse pass (and inside :func:`~revlayers.check_inverse`).
    """
    return bool(getattr(_REPLAY, "active", False))


@contextmanager
def replay() -> Iterator[None]:
    """Mark this thread as replaying (see :func:`replaying`) for the duration of the block."""
    previous = replaying()
    _REPLAY.active = True
    try:
        yield
    finally:
        _REPLAY.active = previous


def is_tracking_norm(m: nn.Module) -> bool:
    """Whether ``m`` is a batch/instance norm that updates running statistics when called."""
    return (
        isinstance(m, nn.modules.batchnorm._NormBase)
        and m.training
        and m.track_running_stats
        and m.running_mean is not None
    )


def norm_layers(module: nn.Module) -> list[nn.Module]:
    """Batch/instance norms of ``module`` that update running statistics in its forward pass."""
    return [m for m in module.modules() if is_tracking_norm(m)]


@contextmanager
def frozen_stats(norms: list[nn.Module]) -> Iterator[None]:
    """Restore the running statistics of the norm layers ``norms`` on exit.

    The forward pass updated them once; inverses and recomputations must not update them again.
    """
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


def has_forward_hooks(module: nn.Module) -> bool:
    """Whether calling ``module`` runs forward hooks (its own or global ones).

    A layer's in-place :meth:`InvertibleModule.forward_step` bypasses ``__call__``; it falls
    back to the ordinary call when hooks are registered, so they still see every call.
    """
    from torch.nn.modules import module as torch_module

    global_hooks = (
        getattr(torch_module, "_global_forward_hooks", None),
        getattr(torch_module, "_global_forward_pre_hooks", None),
    )
    return bool(module._forward_hooks or module._forward_pre_hooks or any(global_hooks))


def declared_tensors(owner: str, items: Iterable[Tensor | nn.Module]) -> tuple[Tensor, ...]:
    """Collect the tensors of ``parameters=[...]``: tensors as given, modules' parameters."""
    if isinstance(items, (Tensor, nn.Module)):
        items = [items]
    try:
        seq = list(items)
    except TypeError:
        raise TypeError(
            f"{owner} expects parameters to be an iterable of tensors or nn.Modules, got "
            f"{type(items).__name__}."
        ) from None
    out: list[Tensor] = []
    for item in seq:
        if isinstance(item, nn.Module):
            out.extend(item.parameters())
        elif isinstance(item, Tensor):
            out.append(item)
        else:
            raise TypeError(
                f"{owner} expects parameters to hold tensors or nn.Modules, got an item of type "
                f"{type(item).__name__}."
            )
    return tuple(out)


class InvertibleModule(nn.Module):
    """Base class of every layer a :class:`~revlayers.ReversibleSequence` accepts.

    Subclasses implement ``forward(x, *context) -> y`` and ``inverse(y, *context) -> x`` with
    ``inverse(forward(x, *c), *c) == x``. ``context`` holds tensors (or other objects) that the
    layer reads but does not change, such as measurements or a data-consistency gradient.

    Attributes
    ----------
    exact_inverse : bool
        ``True`` (default) when ``inverse`` undoes ``forward`` up to rounding (couplings,
        orthogonal mixings, algebraic inverses). Set it to ``False`` for a layer whose inverse is
        only approximate (a CG or fixed-point solve stopped at a tolerance): with
        ``check_drift="auto"`` the engine then checks that layer's reconstruction at every
        reverse step (:class:`~revlayers.InvertibleResidual` sets it).

    Notes
    -----
    *The gradient rule.* During backpropagation without stored activations the engine computes
    gradients for exactly these tensors: the input ``x``, every context tensor that requires
    grad (and the parameters of ``nn.Module`` context items), and each layer's
    :meth:`learnable_tensors`: its ``parameters()`` that require grad plus tensors declared with
    ``parameters=`` on :class:`~revlayers.Invertible` and :class:`~revlayers.InvertibleResidual`.
    A tensor that a layer closes over, that requires grad and that is none of these would lose
    its gradient; the engine detects this while it recomputes the layer and raises
    ``ValueError``.

    *The engine's hooks* (:meth:`forward_step`, :meth:`reverse_step`) have correct defaults;
    override them only for a cheaper exact scheme, as the couplings do.
    """

    exact_inverse: bool = True
    _extra_tensors: tuple[Tensor, ...] = ()

    def forward(self, x: Tensor, *context: object) -> Tensor:  # pragma: no cover - abstract
        """Map the state ``x`` to ``y`` (subclasses implement it)."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward(x, *context)")

    def inverse(self, y: Tensor, *context: object) -> Tensor:  # pragma: no cover - abstract
        """Map ``y`` back to ``x`` (subclasses implement it)."""
        raise NotImplementedError(f"{type(self).__name__} must implement inverse(y, *context)")

    def learnable_tensors(self) -> list[Tensor]:
        """Tensors of this layer that receive gradients from the reverse pass.

        Its ``parameters()`` that require grad, then tensors declared (but not registered) by
        this layer or by invertible sub-layers, each once.

        Returns
        -------
        list of Tensor
            The tensors, without repeats.
        """
        params: list[Tensor] = []
        extra: list[Tensor] = []
        for m in self.modules():  # one walk: parameters first, then declared tensors
            params.extend(m.parameters(recurse=False))
            if isinstance(m, InvertibleModule):
                extra.extend(m.declared)
        seen: set[int] = set()
        out: list[Tensor] = []
        for t in (*params, *extra):
            if t.requires_grad and id(t) not in seen:
                seen.add(id(t))
                out.append(t)
        return out

    @property
    def declared(self) -> tuple[Tensor, ...]:
        """Tensors declared with ``parameters=[...]`` (not registered; their owner keeps them)."""
        return self._extra_tensors

    def declare(self, parameters: Iterable[Tensor | nn.Module]) -> None:
        """Declare tensors (or modules' parameters) that this layer reads and that need gradients.

        Parameters
        ----------
        parameters : iterable of Tensor or nn.Module
            Replaces the declared tensors.
        """
        self._extra_tensors = declared_tensors(type(self).__name__, parameters)

    def layer_name(self) -> str:
        """Describe the layer in error messages (its class, or the wrapped function's name).

        Returns
        -------
        str
            E.g. ``"AdditiveCoupling(IRIMResidual)"``.
        """
        return type(self).__name__

    def forward_step(self, x: Tensor, context: tuple[object, ...], overwrite: bool) -> Tensor:
        """Engine hook: this layer's forward in the engine's forward pass (no graph).

        Parameters
        ----------
        x : Tensor
            The state.
        context : tuple
            The context arguments.
        overwrite : bool
            ``x`` belongs to the engine and nothing reads it afterwards: the layer may write its
            output into ``x``'s memory and return ``x``.

        Returns
        -------
        Tensor
            ``self(x, *context)`` (the default ignores ``overwrite``).
        """
        return self(x, *context)

    def reverse_step(self, y: Tensor, grad_y: Tensor, step: ReverseContext) -> ReverseStep:
        """Engine hook: rebuild the input from ``y`` and backpropagate ``grad_y`` through the layer.

        The default runs ``inverse`` (unless ``step.x_known`` is given), recomputes ``forward``
        with grad and calls :func:`torch.autograd.grad` once over the input, the context leaves
        and the learnable tensors. Layers with a cheaper exact scheme override it.

        Parameters
        ----------
        y : Tensor
            The layer's output in the forward pass, as rebuilt by the reverse pass.
        grad_y : Tensor
            ``dL/dy``.
        step : ReverseContext
            Context values and leaves, the learnable tensors, what the engine allows and asks.

        Returns
        -------
        ReverseStep
            ``x``, ``dL/dx``, the other gradients and, if asked, the residual.
        """
        return reverse_generic(self, y, grad_y, step)


def store_callable(module: nn.Module, name: str, fn: Callable[..., object]) -> None:
    """Keep ``fn`` on ``module``: an ``nn.Module`` as submodule ``name``, else a plain attribute."""
    if isinstance(fn, nn.Module):
        module.add_module(name, fn)
    else:
        module.__dict__[f"_{name}_fn"] = fn


def stored_callable(module: nn.Module, name: str) -> Callable[..., object]:
    """Return the callable :func:`store_callable` kept under ``name``."""
    fn = module.__dict__.get(f"_{name}_fn")
    return fn if fn is not None else getattr(module, name)
