r"""The abstract core every physops operator shares: ``LinearOperator`` and its algebra.

A linear operator :math:`A : X \to Y` is an :class:`torch.nn.Module` whose ``forward`` computes
:math:`A x` and whose ``adjoint`` computes :math:`A^H y`, the operator with
:math:`\langle A x, y \rangle_Y = \langle x, A^H y \rangle_X` for the inner product
:math:`\langle u, v \rangle = \sum_i \overline{u_i} v_i`. From those two methods the base class
derives the normal operator :math:`A^H A` (subclasses specialise it where that is cheaper), the
adjoint as an operator (``A.H``), composition (``A @ B``), sums and differences (``A + B``,
``A - B``), scalar multiples (``2 * A``, ``mu * A`` for a 0-dim tensor ``mu``, learnable or not)
and the identity.

Shape convention
----------------
``in_shape`` and ``out_shape`` are the trailing, non-batch shapes of :math:`x` and :math:`y`, or
``None`` where the operator accepts any. Every leading dimension in front of them is a batch
dimension, so one operator applies to ``(batch, *in_shape)`` tensors, ``(*in_shape)`` tensors or
``(n, batch, *in_shape)`` tensors alike.

Under ``torch.autocast`` (mixed-precision training) every operator runs in full precision:
``forward``, ``adjoint`` and ``normal`` of every subclass switch autocast off and bring
half-precision inputs up to float32 / complex64 (:mod:`physops._precision`).

Tensors an operator needs (masks, coil maps, kernels) are registered as buffers, or as parameters
when the caller passes an :class:`torch.nn.Parameter`, so ``op.to(device)``, ``state_dict`` and
optimisers see them. They are cast to the input's precision when applied: an operator built with
``complex64`` maps applies to a ``complex128`` image in double precision and returns
``complex128``.
"""

from __future__ import annotations

import abc
import numbers
from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn

from physops._precision import in_full_precision

__all__ = ["Identity", "LinearOperator"]

Shape = tuple[int, ...]


def _as_shape(shape: Sequence[int] | None, name: str) -> Shape | None:
    if shape is None:
        return None
    try:
        out = tuple(int(s) for s in shape)
    except TypeError as err:  # not iterable, or entries that are not integers
        raise TypeError(
            f"{name} must be a sequence of ints or None, got {shape!r}: "
            "pass the trailing (non-batch) shape, for example (320, 256)."
        ) from err
    if any(s < 1 for s in out):
        raise ValueError(f"{name} must have positive entries, got {out}.")
    return out


def _check_scalar(scale: object) -> complex | Tensor:
    """Validate a scalar multiplier: a Python number or a 0-dim tensor (learnable or not)."""
    if isinstance(scale, Tensor):
        if scale.ndim != 0:
            raise TypeError(
                "a LinearOperator can only be multiplied by a scalar: a Python number or a 0-dim "
                f"tensor, got a tensor of shape {tuple(scale.shape)}. For an elementwise weight, "
                "write a LinearOperator subclass (or scale the input or output tensor)."
            )
        if not (scale.is_floating_point() or scale.is_complex()):
            raise TypeError(
                f"a scalar multiplier tensor must be floating or complex, got dtype {scale.dtype}: "
                "convert it with scale.float()."
            )
        return scale
    if isinstance(scale, bool) or not isinstance(scale, numbers.Complex):
        raise TypeError(
            "a LinearOperator can only be multiplied by a scalar (a Python number or a 0-dim "
            f"tensor), got {type(scale).__name__}. To compose two operators use A @ B."
        )
    return float(scale) if isinstance(scale, numbers.Real) else complex(scale)


class LinearOperator(nn.Module, metaclass=abc.ABCMeta):
    """A linear map :math:`A` with its adjoint, as a differentiable :class:`torch.nn.Module`.

    Subclasses implement :meth:`forward` (:math:`y = A x`) and :meth:`adjoint`
    (:math:`x = A^H y`); they may override :meth:`normal` (:math:`A^H A x`) where a cheaper
    formula exists. Everything else (``.H``, ``@``, ``+``, ``-``, scalar ``*``, ``/``) comes from
    this class.

    Parameters
    ----------
    in_shape, out_shape
        Trailing (non-batch) shapes of the input :math:`x` and output :math:`y`; ``None`` where
        the operator accepts any shape.

    Notes
    -----
    ``A @ B`` composes two operators (apply ``B`` first); ``A @ x`` with a tensor ``x`` applies
    ``A``. ``A.H`` is created once and cached *unregistered*: registering it as a submodule would
    create the cycle ``A -> A.H -> A`` that breaks ``state_dict``, ``modules()`` and ``.to()``.
    ``A.H.H`` is ``A`` itself.

    Examples
    --------
    >>> import torch, physops
    >>> class Diag(physops.LinearOperator):
    ...     def __init__(self, d):
    ...         super().__init__(in_shape=d.shape, out_shape=d.shape)
    ...         self.register_buffer("d", d)
    ...     def forward(self, x):
    ...         return self.d * x
    ...     def adjoint(self, y):
    ...         return self.d.conj() * y
    >>> A = Diag(torch.tensor([1.0, 2.0]))
    >>> (3 * A.H @ A)(torch.ones(2))
    tensor([ 3., 12.])
    """

    def __init_subclass__(cls, **kwargs: object) -> None:
        # Physics stays in full precision under mixed-precision training (physops._precision):
        # every subclass's own forward, adjoint and normal run without autocast.
        super().__init_subclass__(**kwargs)
        for name in ("forward", "adjoint", "normal"):
            if name in cls.__dict__:
                setattr(cls, name, in_full_precision(cls.__dict__[name]))

    def __init__(
        self, in_shape: Sequence[int] | None = None, out_shape: Sequence[int] | None = None
    ) -> None:
        super().__init__()
        self.in_shape: Shape | None = _as_shape(in_shape, "in_shape")
        self.out_shape: Shape | None = _as_shape(out_shape, "out_shape")

    # -- what subclasses provide -------------------------------------------------------------
    @abc.abstractmethod
    def forward(self, x: Tensor) -> Tensor:
        """Apply the operator :math:`y = A x`: ``(*batch, *in_shape) -> (*batch, *out_shape)``."""

    @abc.abstractmethod
    def adjoint(self, y: Tensor) -> Tensor:
        """Apply the adjoint :math:`x = A^H y`: ``(*batch, *out_shape) -> (*batch, *in_shape)``."""

    def normal(self, x: Tensor) -> Tensor:
        """Apply the normal operator :math:`A^H A x` (subclasses specialise it where cheaper)."""
        return self.adjoint(self.forward(x))

    # -- derived operators -----------------------------------------------------------------
    @property
    def H(self) -> LinearOperator:
        """The adjoint :math:`A^H` as an operator (created once, cached, not a submodule)."""
        cached = self.__dict__.get("_adjoint_operator")
        if cached is None:
            cached = AdjointOperator(self)
            # object.__setattr__ bypasses nn.Module.__setattr__, which would register the cache as
            # a submodule and make the module graph cyclic (A -> A.H -> A).
            object.__setattr__(self, "_adjoint_operator", cached)
        return cached

    def __matmul__(self, other: LinearOperator | Tensor) -> LinearOperator | Tensor:
        if isinstance(other, LinearOperator):
            return ComposedOperator(self, other)
        if isinstance(other, Tensor):
            return self(other)
        return NotImplemented

    def __add__(self, other: object) -> LinearOperator:
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return SumOperator(self, other)

    def __sub__(self, other: object) -> LinearOperator:
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return SumOperator(self, ScaledOperator(other, -1.0))

    def __neg__(self) -> LinearOperator:
        return ScaledOperator(self, -1.0)

    def __mul__(self, scale: object) -> LinearOperator:
        if isinstance(scale, LinearOperator):
            raise TypeError(
                "'*' between two LinearOperators is ambiguous: use A @ B for the composition."
            )
        return ScaledOperator(self, scale)

    def __rmul__(self, scale: object) -> LinearOperator:
        return self.__mul__(scale)

    def __truediv__(self, scale: object) -> LinearOperator:
        value = _check_scalar(scale)
        return ScaledOperator(self, 1.0 / value)

    # nn.Module defines __call__ with a loose signature; keep the typed one for users and mypy.
    def __call__(self, x: Tensor) -> Tensor:
        return super().__call__(x)

    def extra_repr(self) -> str:
        return f"in_shape={self.in_shape}, out_shape={self.out_shape}"


class Identity(LinearOperator):
    """The identity :math:`I x = x` (real or complex, any shape).

    Parameters
    ----------
    shape
        Trailing shape it acts on, or ``None`` (the default) for any shape.

    Examples
    --------
    With a learnable weight ``mu`` (a 0-dim tensor), MoDL's system matrix is
    ``A.H @ A + mu * Identity()``.
    """

    def __init__(self, shape: Sequence[int] | None = None) -> None:
        super().__init__(in_shape=shape, out_shape=shape)

    def forward(self, x: Tensor) -> Tensor:
        return x

    def adjoint(self, y: Tensor) -> Tensor:
        return y

    def normal(self, x: Tensor) -> Tensor:
        return x

    @property
    def H(self) -> LinearOperator:
        return self


def _compatible(inner: Shape | None, outer: Shape | None) -> bool:
    return inner is None or outer is None or inner == outer


class AdjointOperator(LinearOperator):
    """:math:`A^H` for an operator ``A``; build it with ``A.H`` rather than directly."""

    def __init__(self, op: LinearOperator) -> None:
        super().__init__(in_shape=op.out_shape, out_shape=op.in_shape)
        self.op = op

    def forward(self, x: Tensor) -> Tensor:
        return self.op.adjoint(x)

    def adjoint(self, y: Tensor) -> Tensor:
        return self.op.forward(y)

    def normal(self, x: Tensor) -> Tensor:
        return self.op.forward(self.op.adjoint(x))

    @property
    def H(self) -> LinearOperator:
        return self.op

    def extra_repr(self) -> str:
        return ""


class ComposedOperator(LinearOperator):
    """:math:`A B` (apply ``B`` first); build it with ``A @ B``."""

    def __init__(self, outer: LinearOperator, inner: LinearOperator) -> None:
        if not _compatible(inner.out_shape, outer.in_shape):
            raise ValueError(
                f"cannot compose: the inner operator's out_shape {inner.out_shape} differs from "
                f"the outer operator's in_shape {outer.in_shape} (A @ B applies B first, so B's "
                "output must be A's input)."
            )
        super().__init__(in_shape=inner.in_shape, out_shape=outer.out_shape)
        self.outer = outer
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        return self.outer(self.inner(x))

    def adjoint(self, y: Tensor) -> Tensor:
        return self.inner.adjoint(self.outer.adjoint(y))

    def normal(self, x: Tensor) -> Tensor:
        # (AB)^H (AB) = B^H (A^H A) B: uses the outer operator's specialised normal.
        return self.inner.adjoint(self.outer.normal(self.inner(x)))

    def extra_repr(self) -> str:
        return ""


class SumOperator(LinearOperator):
    """:math:`A + B`; build it with ``A + B`` (and ``A - B``)."""

    def __init__(self, first: LinearOperator, second: LinearOperator) -> None:
        if not (
            _compatible(first.in_shape, second.in_shape)
            and _compatible(first.out_shape, second.out_shape)
        ):
            raise ValueError(
                "cannot add operators with different shapes: "
                f"{first.in_shape} -> {first.out_shape} and {second.in_shape} -> "
                f"{second.out_shape}. Both must map the same input shape to the same output shape."
            )
        super().__init__(
            in_shape=first.in_shape if first.in_shape is not None else second.in_shape,
            out_shape=first.out_shape if first.out_shape is not None else second.out_shape,
        )
        self.first = first
        self.second = second

    def forward(self, x: Tensor) -> Tensor:
        return self.first(x) + self.second(x)

    def adjoint(self, y: Tensor) -> Tensor:
        return self.first.adjoint(y) + self.second.adjoint(y)

    def extra_repr(self) -> str:
        return ""


class ScaledOperator(LinearOperator):
    r""":math:`s A` for a scalar :math:`s`; build it with ``s * A``.

    A 0-dim tensor ``s`` stays in the autograd graph: an :class:`torch.nn.Parameter` is registered
    as a parameter (so an optimiser of a model holding this operator updates it), any other tensor
    as a non-persistent buffer (so ``.to(device)`` moves it and ``state_dict`` stays clean). The
    adjoint multiplies by :math:`\bar{s}`.
    """

    def __init__(self, op: LinearOperator, scale: object) -> None:
        value = _check_scalar(scale)
        super().__init__(in_shape=op.in_shape, out_shape=op.out_shape)
        self.op = op
        self._number: complex | float | None = None
        if isinstance(value, nn.Parameter):
            self.scale = value
        elif isinstance(value, Tensor):
            self.register_buffer("scale", value, persistent=False)
        else:
            self._number = value

    def _factor(self, conj: bool) -> complex | float | Tensor:
        if self._number is not None:
            return self._number.conjugate() if conj else self._number
        scale = cast(Tensor, self.scale)
        return scale.conj() if conj and scale.is_complex() else scale

    def forward(self, x: Tensor) -> Tensor:
        return self._factor(conj=False) * self.op(x)

    def adjoint(self, y: Tensor) -> Tensor:
        return self._factor(conj=True) * self.op.adjoint(y)

    def normal(self, x: Tensor) -> Tensor:
        s = self._factor(conj=False)
        weight = abs(s) ** 2 if not isinstance(s, Tensor) else s.abs().square()
        return weight * self.op.normal(x)

    def extra_repr(self) -> str:
        return f"scale={self._number}" if self._number is not None else ""


def register_operand(module: nn.Module, name: str, tensor: Tensor) -> None:
    """Store a tensor an operator needs (mask, coil maps, kernel) on ``module``.

    An :class:`torch.nn.Parameter` is registered as a parameter, so it can be learned. Any other
    tensor becomes a buffer; a complex one is stored as its real view ``(..., 2)``
    (:func:`torch.view_as_real`), so ``module.to(torch.float64)`` or ``module.double()`` change its
    precision instead of discarding its imaginary part (which is what :meth:`torch.nn.Module.to`
    does to complex buffers). Read it back with :func:`operand`.
    """
    complex_views: set[str] = module.__dict__.setdefault("_complex_operands", set())
    if isinstance(tensor, nn.Parameter):
        module.register_parameter(name, tensor)
    elif tensor.is_complex():
        module.register_buffer(name, torch.view_as_real(tensor.resolve_conj()))
        complex_views.add(name)
    else:
        module.register_buffer(name, tensor)


def operand(module: nn.Module, name: str, like: Tensor) -> Tensor:
    """Return a tensor stored with :func:`register_operand`, cast to the precision of ``like``.

    Complex operands come back complex and real ones real, in the precision (single or double) of
    ``like``; booleans and integers (masks) come back as real floats of that precision. Raises a
    ValueError when ``like`` lives on another device.
    """
    tensor = cast(Tensor, getattr(module, name))
    if name in module.__dict__.get("_complex_operands", ()):
        tensor = torch.view_as_complex(tensor)
    if tensor.device != like.device:
        raise ValueError(
            f"{type(module).__name__}.{name} is on {tensor.device} but the input is on "
            f"{like.device}: move the operator with op.to({str(like.device)!r})."
        )
    base = like.dtype if (like.is_complex() or like.is_floating_point()) else torch.float32
    target = base.to_complex() if tensor.is_complex() else base.to_real()
    return tensor if tensor.dtype == target else tensor.to(target)


def ensure_operator(op: object, name: str = "op") -> LinearOperator:
    """Raise a TypeError naming what was received unless ``op`` is a LinearOperator."""
    if not isinstance(op, LinearOperator):
        raise TypeError(
            f"{name} must be a physops.LinearOperator, got {type(op).__name__}: subclass "
            "LinearOperator and implement forward(x) and adjoint(y)."
        )
    return op


def real_dtype(dtype: torch.dtype) -> torch.dtype:
    """Return the real dtype of the same precision: complex64 -> float32, complex128 -> float64."""
    return dtype.to_real()
