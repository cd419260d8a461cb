"""Additive (NICE/RevNet) and affine (Real NVP, bounded scale) coupling layers.

The state ``x`` is split along ``dim`` into a conditioning part ``x1``, an updated part
``x2`` and optional pass-through channels ``x3`` (the last ``pass_through`` channels):

=================  ==============================  =================================
part               forward                         inverse
=================  ==============================  =================================
``x1`` (cond.)     ``y1 = x1``                     ``x1 = y1``
``x2`` (updated)   ``y2 = x2 + g(x1, *c)``         ``x2 = y2 - g(y1, *c)``  (additive)
                   ``y2 = x2 * e^{s~} + t``        ``x2 = (y2 - t) * e^{-s~}`` (affine)
``x3`` (pass)      ``y3 = x3``                     ``x3 = y3``
=================  ==============================  =================================

with ``(s, t) = g(x1, *c)`` and the bounded log-scale ``s~ = clamp * tanh(s / clamp)``.
Because ``g`` reads only the untouched part, one forward and one backward of ``g`` per layer
give both the inverse and every gradient during the reverse pass (i-RIM's reference trick).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, TypedDict

import torch
from torch import Tensor

from ._base import InvertibleModule, has_forward_hooks, store_callable, stored_callable
from ._reverse import (
    ReverseContext,
    ReverseStep,
    grad_with_audit,
    relative_error,
    unalias,
    unique,
)
from ._validate import finite_number, integer, nonnegative_int, one_of, positive_int

if TYPE_CHECKING:  # typing.Unpack is Python >= 3.11; only the type checker needs it
    from typing_extensions import Unpack

__all__ = ["AdditiveCoupling", "AffineCoupling", "CouplingOptions"]

_UPDATES = ("second", "first")


class CouplingOptions(TypedDict, total=False):
    """The keyword options every coupling takes (see :class:`AdditiveCoupling`)."""

    split: int | None
    pass_through: int
    dim: int
    update: Literal["second", "first"]
    pass_context: bool


class _Coupling(InvertibleModule):
    """Shared split logic and the fused, in-place reverse step of couplings."""

    def __init__(
        self,
        g: Callable[..., object],
        *,
        split: int | None = None,
        pass_through: int = 0,
        dim: int = 1,
        update: Literal["second", "first"] = "second",
        pass_context: bool = True,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if not callable(g):
            raise TypeError(
                f"{name} expects g to be a callable (an nn.Module or function) mapping x1 to the "
                f"coupling output, got {type(g).__name__}."
            )
        if split is not None:
            expected = (
                "to be a positive int (channels of the first part) or None (half of the "
                "non-pass-through channels)"
            )
            positive_int(name, "split", split, expected=expected)
        copied = "to be an int >= 0 (channels copied unchanged)"
        nonnegative_int(name, "pass_through", pass_through, expected=copied)
        integer(name, "dim", dim)
        one_of(
            name,
            "update",
            update,
            _UPDATES,
            expected=f"to be one of {list(_UPDATES)} (which part g updates)",
        )
        store_callable(self, "g", g)
        self.split = split
        self.pass_through = pass_through
        self.dim = dim
        self.update = update
        self.pass_context = pass_context

    def extra_repr(self) -> str:
        return (
            f"split={self.split}, pass_through={self.pass_through}, dim={self.dim}, "
            f"update={self.update!r}, pass_context={self.pass_context}"
        )

    def layer_name(self) -> str:
        """Name the class and the coupling function, e.g. ``AdditiveCoupling(SmallNet)``."""
        g = stored_callable(self, "g")
        return f"{type(self).__name__}({getattr(g, '__name__', type(g).__name__)})"

    # -- split ------------------------------------------------------------------------------
    def _sizes(self, x: Tensor) -> list[int]:
        name = type(self).__name__
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} expects a tensor state, got {type(x).__name__}.")
        if not -x.dim() <= self.dim < x.dim():
            raise ValueError(
                f"{name}(dim={self.dim}) cannot split a state of shape {tuple(x.shape)}: pass a "
                f"state with a channel dimension {self.dim} or change dim."
            )
        channels = x.shape[self.dim]
        rest = channels - self.pass_through
        first = self.split if self.split is not None else rest // 2
        if not 0 < first < rest:
            raise ValueError(
                f"{name}(split={self.split}, pass_through={self.pass_through}) needs "
                f"0 < split < channels - pass_through, but the state has {channels} channels "
                f"along dim {self.dim} (shape {tuple(x.shape)}): choose split and pass_through "
                "so that both coupling parts have at least one channel."
            )
        sizes = [first, rest - first]
        if self.pass_through:
            sizes.append(self.pass_through)
        return sizes

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return views of the conditioning and the updated part of ``x``."""
        parts = torch.split(x, self._sizes(x), dim=self.dim)
        return (parts[0], parts[1]) if self.update == "second" else (parts[1], parts[0])

    def _coupled(
        self, x: Tensor, context: tuple[object, ...], law: Callable[..., Tensor]
    ) -> Tensor:
        """``x`` with its updated part replaced by ``law(upd, g(cond))`` (a new tensor)."""
        cond, upd = self._split(x)
        new = law(upd, self._call_g(cond, context))
        sizes = self._sizes(x)
        first, second = (cond, new) if self.update == "second" else (new, cond)
        parts = [first, second]
        if self.pass_through:
            parts.append(x.narrow(self.dim, sizes[0] + sizes[1], sizes[2]))
        return torch.cat(parts, dim=self.dim)

    def _call_g(self, x1: Tensor, context: tuple[object, ...]) -> object:
        g = stored_callable(self, "g")
        return g(x1, *context) if self.pass_context else g(x1)

    # -- the coupling law (subclasses) ------------------------------------------------------
    def _couple(self, x2: Tensor, gout: object) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _uncouple(self, y2: Tensor, gout: object) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _couple_(self, x2: Tensor, gout: object) -> None:
        """Write the coupling law into ``x2`` (no graph)."""
        x2.copy_(self._couple(x2, gout))

    def _reverse_law(
        self, upd: Tensor, g_upd: Tensor, h: Tensor, gout: object, step: ReverseContext
    ) -> tuple[list[Tensor | None], float | None]:
        """Turn ``upd`` (y2) into x2 and ``g_upd`` into dL/dx2 in place; gradients of the rest.

        Returns the gradients of ``[h, *step.leaves, *tensors]`` (in that order, as
        :func:`~revlayers._reverse.unique` leaves them) and the residual if asked for.
        """
        upd_x = self._uncouple(upd, _detach(gout)).detach().requires_grad_()
        with torch.enable_grad():
            out = self._couple(upd_x, gout)
        wrt = unique([upd_x, h, *step.leaves, *step.tensors_of(self)])
        grads = unalias(grad_with_audit([out], wrt, [g_upd], step.label), [g_upd])
        residual = relative_error(out.detach() - upd, upd) if step.want_residual else None
        upd.copy_(upd_x.detach())
        if grads[0] is not None:
            g_upd.copy_(grads[0])
        return grads[1:], residual

    # -- InvertibleModule -------------------------------------------------------------------
    def forward(self, x: Tensor, *context: object) -> Tensor:
        """``y`` with ``y1 = x1`` and ``y2`` given by the coupling law."""
        return self._coupled(x, context, self._couple)

    def inverse(self, y: Tensor, *context: object) -> Tensor:
        """``x`` with ``x1 = y1`` and ``x2`` recovered from ``y2`` and ``g(y1)``."""
        return self._coupled(y, context, self._uncouple)

    def forward_step(self, x: Tensor, context: tuple[object, ...], overwrite: bool) -> Tensor:
        """Run the forward pass, written into ``x`` when the engine owns it (no copy of ``x1``)."""
        if torch.is_grad_enabled() or has_forward_hooks(self):
            return self(x, *context)
        y = x if overwrite else x.clone()  # one copy instead of a new half and a concatenation
        cond, upd = self._split(y)
        self._couple_(upd, self._call_g(cond, context))
        return y

    def reverse_step(self, y: Tensor, grad_y: Tensor, step: ReverseContext) -> ReverseStep:
        """One forward and one backward of ``g``, results written into ``y`` and ``grad_y``.

        ``g`` reads only ``y1 = x1``, so evaluating it on the output gives the inverse and, with
        the same graph, every gradient (i-RIM's trick). Where the engine owns ``y`` and
        ``grad_y`` the rebuilt input and its gradient overwrite them (no concatenation).
        """
        x = y if step.overwrite_state else y.detach().clone()
        grad_x = grad_y if step.overwrite_grad else grad_y.clone()
        cond, upd = self._split(x)
        g_cond, g_upd = self._split(grad_x)
        h = cond.detach().requires_grad_()
        with torch.enable_grad():
            gout = self._call_g(h, step.values)
        grads, residual = self._reverse_law(upd, g_upd, h, gout, step)
        if grads[0] is not None:
            g_cond.add_(grads[0])
        others = unique([h, *step.leaves, *step.tensors_of(self)])[1:]
        return ReverseStep(x, grad_x, list(zip(others, grads[1:])), residual)


def _detach(value: object) -> object:
    if isinstance(value, Tensor):
        return value.detach()
    if isinstance(value, (tuple, list)):
        return type(value)(_detach(v) for v in value)
    return value


class AdditiveCoupling(_Coupling):
    r"""Additive coupling (NICE, RevNet): ``y2 = x2 + g(x1, *context)``, the rest copied.

    Volume preserving and exactly invertible up to rounding; with :class:`ReversibleSequence`
    its reverse step costs one forward and one backward of ``g`` (no separate inverse).

    Parameters
    ----------
    g : callable
        ``g(x1, *context) -> tensor`` shaped like ``x2`` (an ``nn.Module`` is registered as a
        submodule, so its parameters train and receive gradients).
    split : int, optional
        Channels of the first part along ``dim``; default half of the non-pass-through channels.
    pass_through : int
        The last ``pass_through`` channels are copied unchanged and not read by ``g``.
    dim : int
        Channel dimension to split (default 1: ``(batch, channels, *spatial)``).
    update : {"second", "first"}
        Which part is updated from the other; alternate it in a stack (RevNet style) or put a
        :class:`HouseholderConv` between couplings.
    pass_context : bool
        Call ``g(x1, *context)`` (default) or ``g(x1)``.

    Shapes
    ------
    ==========  ====================================  ====================================
    tensor      shape                                 dtype
    ==========  ====================================  ====================================
    ``x``, y    ``(batch, C, *spatial)`` (any layout  real or complex
                with the channels along ``dim``)
    ``g(x1)``   ``x2``'s shape                        ``x``'s dtype
    ==========  ====================================  ====================================
    """

    def _couple(self, x2: Tensor, gout: object) -> Tensor:
        return x2 + self._check_shift(gout, x2)

    def _uncouple(self, y2: Tensor, gout: object) -> Tensor:
        return y2 - self._check_shift(gout, y2)

    def _couple_(self, x2: Tensor, gout: object) -> None:
        x2.add_(self._check_shift(gout, x2))

    def _reverse_law(
        self, upd: Tensor, g_upd: Tensor, h: Tensor, gout: object, step: ReverseContext
    ) -> tuple[list[Tensor | None], float | None]:
        # dL/dx2 = dL/dy2 and dL/d(shift) = dL/dy2: backpropagate g alone, subtract in place
        shift = self._check_shift(gout, upd)
        wrt = unique([h, *step.leaves, *step.tensors_of(self)])
        grads = grad_with_audit([shift], wrt, [g_upd], step.label)
        shift = shift.detach()
        residual = None
        if step.want_residual:
            x2 = upd - shift
            residual = relative_error(x2 + shift - upd, upd)
            upd.copy_(x2)
        else:
            upd.sub_(shift)
        return grads, residual

    def _check_shift(self, gout: object, like: Tensor) -> Tensor:
        if not isinstance(gout, Tensor):
            raise TypeError(
                "AdditiveCoupling expects g to return a tensor shaped like x2 "
                f"{tuple(like.shape)}, got {type(gout).__name__}."
            )
        if gout.shape != like.shape:
            raise ValueError(
                f"AdditiveCoupling expects g(x1) to have the shape of the updated part x2, "
                f"{tuple(like.shape)}, got {tuple(gout.shape)}: make g map "
                f"{like.shape[self.dim] if like.dim() > self.dim else '?'} output channels."
            )
        return gout


class AffineCoupling(_Coupling):
    r"""Affine coupling with a bounded scale: ``y2 = x2 * exp(s~) + t``, ``(s, t) = g(x1, *c)``.

    The log-scale is soft-clamped, ``s~ = clamp * tanh(s / clamp)``, so the scale lies in
    ``[e^{-clamp}, e^{clamp}]``: the inverse ``x2 = (y2 - t) * exp(-s~)`` never divides by a
    vanishing number and never multiplies by an exploding one (i-RIM Sec. 2.2, cause 2).

    Parameters
    ----------
    g : callable
        ``g(x1, *context)`` returning either a tensor with twice ``x2``'s channels along ``dim``
        (split into ``s`` then ``t``) or a tuple ``(s, t)`` each shaped like ``x2``. ``s`` must
        be real; for complex states return the tuple form with a real ``s`` and a complex ``t``.
    clamp : float
        Bound of the log-scale (default 2: scales in ``[0.135, 7.39]``).
    split, pass_through, dim, update, pass_context
        As for :class:`AdditiveCoupling`.
    """

    def __init__(
        self,
        g: Callable[..., object],
        *,
        clamp: float = 2.0,
        **options: Unpack[CouplingOptions],
    ) -> None:
        super().__init__(g, **options)
        self.clamp = finite_number(
            "AffineCoupling", "clamp", clamp, low=0.0, expected="to be a number > 0"
        )

    def extra_repr(self) -> str:
        return f"clamp={self.clamp}, " + super().extra_repr()

    def _scale_shift(self, gout: object, like: Tensor) -> tuple[Tensor, Tensor]:
        if isinstance(gout, (tuple, list)) and len(gout) == 2:
            s, t = gout
        elif isinstance(gout, Tensor):
            if gout.dim() != like.dim() or gout.shape[self.dim] != 2 * like.shape[self.dim]:
                raise ValueError(
                    f"AffineCoupling expects g(x1) to return a tensor with twice the channels of "
                    f"x2 {tuple(like.shape)} along dim {self.dim} (log-scale, then shift), got "
                    f"{tuple(gout.shape)}; or return a tuple (s, t)."
                )
            s, t = torch.chunk(gout, 2, dim=self.dim)
        else:
            raise TypeError(
                "AffineCoupling expects g to return a tensor (log-scale and shift stacked along "
                f"dim) or a tuple (s, t), got {type(gout).__name__}."
            )
        if not isinstance(s, Tensor) or not isinstance(t, Tensor):
            raise TypeError("AffineCoupling expects g's (s, t) to be tensors.")
        if s.is_complex():
            raise TypeError(
                "AffineCoupling needs a real log-scale s, got a complex one: for complex states "
                "return the tuple (s, t) from g with a real s (e.g. s.real) and a complex t."
            )
        if s.shape != like.shape or t.shape != like.shape:
            raise ValueError(
                f"AffineCoupling expects s and t shaped like x2 {tuple(like.shape)}, got "
                f"{tuple(s.shape)} and {tuple(t.shape)}."
            )
        return s, t

    def log_scale(self, s: Tensor) -> Tensor:
        """Bound the raw log-scale ``s``: ``clamp * tanh(s / clamp)``."""
        return self.clamp * torch.tanh(s / self.clamp)

    def _couple(self, x2: Tensor, gout: object) -> Tensor:
        s, t = self._scale_shift(gout, x2)
        return x2 * torch.exp(self.log_scale(s)) + t

    def _uncouple(self, y2: Tensor, gout: object) -> Tensor:
        s, t = self._scale_shift(gout, y2)
        return (y2 - t) * torch.exp(-self.log_scale(s))

    def _couple_(self, x2: Tensor, gout: object) -> None:
        s, t = self._scale_shift(gout, x2)
        x2.mul_(torch.exp(self.log_scale(s))).add_(t)
