"""Wrap a user-supplied function pair ``(f, f_inverse)`` as an invertible layer."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import Tensor, nn

from ._base import InvertibleModule, store_callable, stored_callable
from ._validate import boolean

__all__ = ["Invertible"]


class Invertible(InvertibleModule):
    r"""An invertible layer from a function pair: ``y = f(x, *c)``, ``x = f_inverse(y, *c)``.

    Lets physics steps join a reversible chain, for example MoDL's data consistency
    ``f(x) = (A^H A + mu I)^{-1} (A^H y + mu x)`` (a CG solve) with the algebraic inverse
    ``f_inverse(z) = ((A^H A + mu I) z - A^H y) / mu``, or a gradient step
    ``f(x) = x - alpha A^H (A x - y)`` inverted by a fixed-point solver.

    Where the learnable tensors live (the gradient rule)
    ----------------------------------------------------
    * ``f`` or ``f_inverse`` that are ``nn.Module`` s are registered as submodules: their
      parameters train, move with ``.to()`` and are saved in ``state_dict``.
    * Tensors that plain functions close over and that need gradients (a learnable ``mu`` that
      is an ``nn.Parameter`` of another module, or a tensor computed from one) must be declared
      with ``parameters=[...]`` (tensors or modules, whose parameters are taken). They are not
      registered: their owner moves and saves them.
    * Tensors that change per batch (measurements ``y``, coil maps, masks) should be passed as
      context: ``seq(x, y, maps)`` calls ``f(x, y, maps)``.

    An undeclared closed-over tensor that requires grad is detected when the engine recomputes
    the layer (``ValueError``); it would otherwise silently get no gradient.

    ``f`` may contain its own ``torch.autograd.Function`` (an implicit CG backward): the engine
    recomputes ``f`` under ``torch.enable_grad`` and calls :func:`torch.autograd.grad`.

    Parameters
    ----------
    f, f_inverse : callable
        ``f(x, *context) -> y`` and ``f_inverse(y, *context) -> x`` (or without context when
        ``pass_context=False``); shapes of ``x`` and ``y`` must agree.
    parameters : iterable of tensors or modules
        Extra tensors that need gradients (see above).
    pass_context : bool
        Pass the context arguments on to ``f`` and ``f_inverse`` (default).
    name : str, optional
        Name used in error messages (default: ``f.__name__``).
    exact_inverse : bool
        ``True`` (default) when ``f_inverse`` undoes ``f`` up to rounding; ``False`` for an
        iterative inverse (CG, fixed point) stopped at a tolerance, whose reconstruction the
        engine then checks at every reverse step with ``check_drift="auto"``.
    """

    def __init__(
        self,
        f: Callable[..., Tensor],
        f_inverse: Callable[..., Tensor],
        *,
        parameters: Iterable[Tensor | nn.Module] = (),
        pass_context: bool = True,
        name: str | None = None,
        exact_inverse: bool = True,
    ) -> None:
        super().__init__()
        for arg, value in (("f", f), ("f_inverse", f_inverse)):
            if not callable(value):
                raise TypeError(
                    f"Invertible expects {arg} to be callable (a function or nn.Module), got "
                    f"{type(value).__name__}."
                )
        store_callable(self, "f", f)
        store_callable(self, "f_inverse", f_inverse)
        self.declare(parameters)
        self.pass_context = pass_context
        self.exact_inverse = boolean("Invertible", "exact_inverse", exact_inverse)
        self.name = name if name is not None else getattr(f, "__name__", type(f).__name__)

    def layer_name(self) -> str:
        """``Invertible(<name>)``."""
        return f"Invertible({self.name})"

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, declared_tensors={len(self.declared)}, "
            f"exact_inverse={self.exact_inverse}"
        )

    def _call(self, which: str, x: Tensor, context: tuple[object, ...]) -> Tensor:
        fn = stored_callable(self, which)
        return fn(x, *context) if self.pass_context else fn(x)  # type: ignore[return-value]

    def forward(self, x: Tensor, *context: object) -> Tensor:
        """``f(x, *context)``."""
        return self._call("f", x, context)

    def inverse(self, y: Tensor, *context: object) -> Tensor:
        """``f_inverse(y, *context)``."""
        return self._call("f_inverse", y, context)
