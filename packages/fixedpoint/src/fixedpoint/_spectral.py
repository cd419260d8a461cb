"""Power-iteration estimate of the spectral radius of a map's Jacobian at a point."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from ._precision import in_full_precision
from ._state import State, StateSpec, check_state, components, rebuild, sample_norm
from ._validate import positive_int, tensor_params


class VJP(Protocol):
    """``u -> J^H u``, optionally with a graph (for double backward)."""

    def __call__(self, u: tuple[Tensor, ...], create_graph: bool = False) -> tuple[Tensor, ...]: ...


def vjp_function(outputs: tuple[Tensor, ...], inputs: tuple[Tensor, ...]) -> VJP:
    """``u -> J^H u`` for the graph from ``inputs`` to ``outputs`` (kept for repeated use).

    ``J^H u`` is PyTorch's vector-Jacobian product (for a complex-linear map ``A z`` it is
    ``A^H u``). Outputs that do not depend on the inputs contribute zero.
    """
    pairs = [i for i, o in enumerate(outputs) if o.requires_grad]
    outs = [outputs[i] for i in pairs]

    def vjp(u: tuple[Tensor, ...], create_graph: bool = False) -> tuple[Tensor, ...]:
        if not outs:
            return tuple(torch.zeros_like(t) for t in inputs)
        grads = torch.autograd.grad(
            outs,
            inputs,
            [u[i] for i in pairs],
            retain_graph=True,
            create_graph=create_graph,
            allow_unused=True,
        )
        return tuple(
            torch.zeros_like(t) if d is None else d for d, t in zip(grads, inputs, strict=True)
        )

    return vjp


@in_full_precision
def spectral_radius(
    f: Callable[..., State],
    z: State,
    *params: Tensor,
    iterations: int = 20,
    create_graph: bool = False,
    seed: int = 0,
) -> Tensor:
    r"""Estimate the spectral radius of :math:`J = \partial f / \partial z` at ``z``, per sample.

    Normalised power iteration on the vector-Jacobian product :math:`u \mapsto J^H u` (the
    spectrum of :math:`J^H` is the conjugate of :math:`J`'s, so the radius is the same):

    .. math::

        u_{k+1} = \frac{J^H u_k}{\|J^H u_k\|}, \qquad \hat\rho = \|J^H u_K\|, \quad \|u_K\| = 1.

    :math:`\hat\rho` converges to :math:`\rho(J)` at the rate :math:`|\lambda_2 / \lambda_1|` when
    one eigenvalue dominates in modulus; for a symmetric (Hermitian) :math:`J` it is then the
    spectral norm. It never exceeds :math:`\|J\|_2`, and for a non-normal :math:`J` it can exceed
    :math:`\rho(J)` after few iterations. For maps that are only real-differentiable
    (complex states through real networks) :math:`J` is the real-linear Jacobian.

    Parameters
    ----------
    f : callable
        Called as ``f(z, *params)``; returns a state shaped like ``z``.
    z : Tensor or tuple of Tensor
        The point, ``(batch, *shape)`` per tensor (typically a fixed point). Treated as a
        constant (no gradient flows to it).
    *params : Tensor
        Extra arguments of ``f``.
    iterations : int
        Power-iteration steps (>= 1), one vector-Jacobian product each.
    create_graph : bool
        Make the estimate differentiable with respect to ``params``, the parameters of ``f`` and
        the tensors it closes over (a Jacobian regulariser such as
        ``loss + gamma * spectral_radius(f, z_star, create_graph=True).relu_(...)``): the last
        product is taken with a graph (double backward; ``f`` must support it).
    seed : int
        Seed of the start vector, drawn from a private generator (the global RNG is untouched).

    Returns
    -------
    Tensor, shape (batch,), real
        The estimate for every sample (assumes the samples do not interact in ``f``).

    Examples
    --------
    >>> import torch, fixedpoint
    >>> A = torch.diag(torch.tensor([0.9, -0.5, 0.1]))
    >>> rho = fixedpoint.spectral_radius(lambda z: z @ A, torch.zeros(2, 3), iterations=50)
    >>> torch.allclose(rho, torch.tensor([0.9, 0.9]))
    True
    """
    positive_int("iterations", iterations)
    parts = check_state(z, "z")
    tensor_params(params)
    spec = StateSpec(z, complex_view=True)
    leaves = tuple(t.detach().requires_grad_() for t in parts)
    with torch.enable_grad():
        out = f(rebuild(z, leaves), *params)
    spec.check_output(out, "f")
    vjp = vjp_function(components(out), leaves)
    gen = torch.Generator(device=parts[0].device).manual_seed(seed)
    u = tuple(torch.randn(t.shape, generator=gen, dtype=t.dtype, device=t.device) for t in parts)
    u = _normalise(u, sample_norm(u))
    norm = sample_norm(u)
    for k in range(iterations):
        last = k == iterations - 1
        w = vjp(u, create_graph and last)
        norm = sample_norm(w)
        if not last:
            u = _normalise(tuple(t.detach() for t in w), norm.detach())
    return norm if create_graph else norm.detach()


def _normalise(u: tuple[Tensor, ...], norm: Tensor) -> tuple[Tensor, ...]:
    scale = 1 / norm.clamp_min(torch.finfo(norm.dtype).tiny)
    return tuple(t * scale.view(-1, *([1] * (t.dim() - 1))) for t in u)
