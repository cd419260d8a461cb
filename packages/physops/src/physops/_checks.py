r"""Property checks for any :class:`~physops.LinearOperator`, users' own included.

* :func:`check_adjoint`: :math:`\langle A x, y \rangle = \langle x, A^H y \rangle` for random
  :math:`x, y`, and ``normal(x) == adjoint(forward(x))``.
* :func:`check_gradients`: float64 :func:`torch.autograd.gradcheck` of ``forward``, ``adjoint`` and
  ``normal`` with respect to the input and to the operator's learnable parameters.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.autograd.gradcheck import GradcheckError
from torch.func import functional_call

from physops._linop import LinearOperator, ensure_operator

__all__ = ["check_adjoint", "check_gradients"]


def _random_like(
    shape: torch.Size, dtype: torch.dtype, device: torch.device, g: torch.Generator
) -> Tensor:
    return torch.randn(shape, dtype=dtype, generator=g).to(device)


def _check_like(x_like: object, who: str) -> Tensor:
    if not isinstance(x_like, Tensor) or not (x_like.is_floating_point() or x_like.is_complex()):
        got = f"dtype {x_like.dtype}" if isinstance(x_like, Tensor) else type(x_like).__name__
        raise TypeError(
            f"{who}: x_like must be a floating or complex tensor shaped like the operator's input "
            f"(its values are ignored), got {got}."
        )
    return x_like


def _default_tol(dtype: torch.dtype) -> float:
    return 1e-10 if dtype in (torch.float64, torch.complex128) else 1e-4


def _rel(a: Tensor, b: Tensor) -> float:
    scale = max(float(a.abs()), float(b.abs()), torch.finfo(torch.float64).tiny)
    return float((a - b).abs()) / scale


@torch.no_grad()
def check_adjoint(
    op: LinearOperator, x_like: Tensor, *, tol: float | None = None, seed: int = 0
) -> float:
    r"""Relative adjointness error of ``op`` on random inputs; raises when it exceeds ``tol``.

    .. math::

        e = \frac{|\langle A x, y \rangle - \langle x, A^H y \rangle|}
                 {\max(|\langle A x, y \rangle|, |\langle x, A^H y \rangle|)}

    for :math:`x` and :math:`y` standard normal (complex normal for complex dtypes) shaped like
    ``x_like`` and ``op(x)``. The operator runs in ``x_like``'s dtype; the inner products are
    accumulated in double precision. Also checks that ``op.normal(x)`` equals
    ``op.adjoint(op(x))`` to the same tolerance (a wrong specialised ``normal`` is caught).

    Parameters
    ----------
    op
        Any :class:`~physops.LinearOperator`.
    x_like
        A tensor with the input's shape, dtype and device (values ignored); include a batch
        dimension where the operator expects one.
    tol
        Largest acceptable error; default ``1e-4`` in single and ``1e-10`` in double precision.
    seed
        Seed of the random :math:`x` and :math:`y` (a private generator).

    Returns
    -------
    float
        The adjointness error :math:`e`.

    Raises
    ------
    AssertionError
        With the measured figure, when :math:`e` or the ``normal`` mismatch exceeds ``tol``.
    """
    op = ensure_operator(op, "check_adjoint: op")
    x_like = _check_like(x_like, "check_adjoint")
    tol = _default_tol(x_like.dtype) if tol is None else tol
    g = torch.Generator().manual_seed(seed)
    x = _random_like(x_like.shape, x_like.dtype, x_like.device, g)
    ax = op(x)
    y = _random_like(ax.shape, ax.dtype, ax.device, g)
    aty = op.adjoint(y)
    if aty.shape != x.shape:
        raise AssertionError(
            f"check_adjoint: {type(op).__name__}.adjoint returned shape {tuple(aty.shape)} for an "
            f"input of shape {tuple(x.shape)}: the adjoint must map back to the input's shape."
        )
    wide = torch.complex128 if (ax.is_complex() or x.is_complex()) else torch.float64
    lhs = torch.sum(ax.to(wide).conj() * y.to(wide))
    rhs = torch.sum(x.to(wide).conj() * aty.to(wide))
    error = _rel(lhs, rhs)
    if not error <= tol:
        raise AssertionError(
            f"check_adjoint: {type(op).__name__} fails <Ax, y> = <x, A^H y>: relative error "
            f"{error:.3e} > tol {tol:.1e} (<Ax, y> = {complex(lhs):.6g}, <x, A^H y> = "
            f"{complex(rhs):.6g}, input {tuple(x.shape)} {x.dtype})."
        )
    normal = op.normal(x)
    reference = op.adjoint(ax)
    mismatch = float(torch.linalg.vector_norm((normal - reference).to(wide))) / max(
        float(torch.linalg.vector_norm(reference.to(wide))), torch.finfo(torch.float64).tiny
    )
    if not mismatch <= max(tol, 10 * torch.finfo(x.real.dtype).eps):
        raise AssertionError(
            f"check_adjoint: {type(op).__name__}.normal(x) differs from adjoint(forward(x)) by a "
            f"relative {mismatch:.3e} > tol {tol:.1e}: fix the specialised normal()."
        )
    return error


def check_gradients(
    op: LinearOperator,
    x_like: Tensor,
    *,
    parameters: bool = True,
    fast_mode: bool = False,
    seed: int = 0,
) -> bool:
    """Float64 :func:`torch.autograd.gradcheck` of ``op.forward``, ``op.adjoint`` and ``op.normal``.

    Each is checked against finite differences with respect to its input and (with
    ``parameters=True``) to every parameter of ``op`` that requires grad, all cast to double
    precision for the check (``complex128`` for complex ones). Operators that cast their buffers
    to the input's precision (every physops operator) need no conversion. Keep ``x_like`` small:
    the slow mode costs two operator applications per real input element.

    Parameters
    ----------
    op
        Any :class:`~physops.LinearOperator`.
    x_like
        A tensor with the input's shape (values ignored); real or complex as the operator expects.
    parameters
        Also check the gradients of ``op``'s learnable parameters.
    fast_mode
        gradcheck's fast mode (random projections of the Jacobian; cheaper for larger inputs).
    seed
        Seed of the random inputs.

    Returns
    -------
    bool
        ``True``.

    Raises
    ------
    AssertionError
        Naming the method (``forward``, ``adjoint`` or ``normal``) whose gradients are wrong, with
        gradcheck's report.
    """
    op = ensure_operator(op, "check_gradients: op")
    x_like = _check_like(x_like, "check_gradients")
    wide = torch.complex128 if x_like.is_complex() else torch.float64
    g = torch.Generator().manual_seed(seed)
    x = _random_like(x_like.shape, wide, x_like.device, g)
    with torch.no_grad():
        out = op(x)
    y = _random_like(out.shape, out.dtype, out.device, g)
    learnable = dict(op.named_parameters()) if parameters else {}
    names = [n for n, p in learnable.items() if p.requires_grad]
    params = [
        learnable[n].detach().to(torch.complex128 if learnable[n].is_complex() else torch.float64)
        for n in names
    ]

    def method(name: str) -> Callable[..., Tensor]:
        wrapper = _MethodCall(op, name)

        def apply(inp: Tensor, *values: Tensor) -> Tensor:
            swapped = {f"op.{n}": v for n, v in zip(names, values)}
            return functional_call(wrapper, swapped, (inp,), strict=False)

        return apply

    for name, inp in (("forward", x), ("adjoint", y), ("normal", x)):
        inputs = (inp.clone().requires_grad_(), *(p.clone().requires_grad_() for p in params))
        try:
            torch.autograd.gradcheck(method(name), inputs, fast_mode=fast_mode)
        except GradcheckError as err:
            raise AssertionError(
                f"check_gradients: gradients of {type(op).__name__}.{name} disagree with finite "
                f"differences in float64 (inputs: {name} input {tuple(inp.shape)}"
                f"{', parameters ' + ', '.join(names) if names else ''}):\n{err}"
            ) from err
    return True


class _MethodCall(torch.nn.Module):
    """``op.<name>`` as ``forward``, so :func:`torch.func.functional_call` can swap parameters."""

    def __init__(self, op: LinearOperator, name: str) -> None:
        super().__init__()
        self.op = op
        self.name = name

    def forward(self, inp: Tensor) -> Tensor:
        return getattr(self.op, self.name)(inp)
