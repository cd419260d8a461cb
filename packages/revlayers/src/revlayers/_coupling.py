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
from typing import Literal, cast

import torch
from torch import Tensor, nn

from ._base import InvertibleModule, _Context, _grad, _relative, _Reversed, _unique

__all__ = ["AdditiveCoupling", "AffineCoupling"]

_UPDATES = ("second", "first")


class _Coupling(InvertibleModule):
    """Shared split/join logic and the fused reverse step of couplings."""

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
        if split is not None and (
            not isinstance(split, int) or isinstance(split, bool) or split < 1
        ):
            raise ValueError(
                f"{name} expects split to be a positive int (channels of the first part) or None "
                f"(half of the non-pass-through channels), got {split!r}."
            )
        if not isinstance(pass_through, int) or isinstance(pass_through, bool) or pass_through < 0:
            raise ValueError(
                f"{name} expects pass_through to be an int >= 0 (channels copied unchanged), got "
                f"{pass_through!r}."
            )
        if not isinstance(dim, int) or isinstance(dim, bool):
            raise TypeError(f"{name} expects dim to be an int, got {type(dim).__name__}.")
        if update not in _UPDATES:
            raise ValueError(
                f"{name} expects update to be one of {list(_UPDATES)} (which part g updates), "
                f"got {update!r}."
            )
        if isinstance(g, nn.Module):
            self.g = g
        else:
            self._g_fn = g
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

    def _label(self) -> str:
        g = self._g
        return f"{type(self).__name__}({getattr(g, '__name__', type(g).__name__)})"

    # -- split and join -------------------------------------------------------------------------
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

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        parts = torch.split(x, self._sizes(x), dim=self.dim)
        rest = parts[2] if len(parts) == 3 else None
        if self.update == "second":
            return parts[0], parts[1], rest
        return parts[1], parts[0], rest

    def _join(self, cond: Tensor, upd: Tensor, rest: Tensor | None) -> Tensor:
        parts = [cond, upd] if self.update == "second" else [upd, cond]
        if rest is not None:
            parts.append(rest)
        return torch.cat(parts, dim=self.dim)

    @property
    def _g(self) -> Callable[..., object]:
        fn = self.__dict__.get("_g_fn")
        return fn if fn is not None else cast(Callable[..., object], self._modules["g"])

    def _call_g(self, x1: Tensor, context: tuple[object, ...]) -> object:
        return self._g(x1, *context) if self.pass_context else self._g(x1)

    # -- the coupling law (subclasses) ----------------------------------------------------------
    def _couple(self, x2: Tensor, gout: object) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _uncouple(self, y2: Tensor, gout: object) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- InvertibleModule -----------------------------------------------------------------------
    def forward(self, x: Tensor, *context: object) -> Tensor:
        cond, upd, rest = self._split(x)
        return self._join(cond, self._couple(upd, self._call_g(cond, context)), rest)

    def inverse(self, y: Tensor, *context: object) -> Tensor:
        cond, upd, rest = self._split(y)
        return self._join(cond, self._uncouple(upd, self._call_g(cond, context)), rest)

    def _reverse(
        self,
        y: Tensor,
        grad_y: Tensor,
        context: _Context,
        x_known: Tensor | None,
        want_residual: bool,
    ) -> _Reversed:
        # One forward and one backward of g: g reads only y1 = x1, so evaluating it on the
        # output gives the inverse and, with the same graph, every gradient.
        cond, upd_y, rest = self._split(y.detach())
        g_cond, g_upd, g_rest = self._split(grad_y)
        h = cond.detach().requires_grad_()
        tensors = self.learnable_tensors()
        with torch.enable_grad():
            gout = self._call_g(h, context.values)
        with torch.no_grad():
            upd_x = self._uncouple(upd_y, _detach(gout))
        with torch.enable_grad():
            upd_xr = upd_x.detach().requires_grad_()
            out = self._couple(upd_xr, gout)
        wrt = _unique([upd_xr, h, *context.leaves, *tensors])
        grads = _grad([out], wrt, [g_upd], context.label)
        grad_upd = grads[0] if grads[0] is not None else torch.zeros_like(upd_x)
        grad_cond = g_cond if grads[1] is None else g_cond + grads[1]
        residual = _relative(out.detach() - upd_y, y) if want_residual else None
        return _Reversed(
            x=self._join(cond, upd_x, rest),
            grad_x=self._join(grad_cond, grad_upd, g_rest),
            grads=list(zip(wrt[2:], grads[2:])),
            residual=residual,
        )


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
        split: int | None = None,
        pass_through: int = 0,
        dim: int = 1,
        update: Literal["second", "first"] = "second",
        pass_context: bool = True,
    ) -> None:
        super().__init__(
            g,
            split=split,
            pass_through=pass_through,
            dim=dim,
            update=update,
            pass_context=pass_context,
        )
        if isinstance(clamp, bool) or not isinstance(clamp, (int, float)) or not clamp > 0:
            raise ValueError(f"AffineCoupling expects clamp to be a number > 0, got {clamp!r}.")
        self.clamp = float(clamp)

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
        """The bounded log-scale ``clamp * tanh(s / clamp)`` applied to the raw output ``s``."""
        return self.clamp * torch.tanh(s / self.clamp)

    def _couple(self, x2: Tensor, gout: object) -> Tensor:
        s, t = self._scale_shift(gout, x2)
        return x2 * torch.exp(self.log_scale(s)) + t

    def _uncouple(self, y2: Tensor, gout: object) -> Tensor:
        s, t = self._scale_shift(gout, y2)
        return (y2 - t) * torch.exp(-self.log_scale(s))
