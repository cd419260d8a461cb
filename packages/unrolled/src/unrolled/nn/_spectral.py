"""Spectral normalisation that runs its power iteration once per change of the weight.

The normalisation is the one of Miyato et al. as ``torch.nn.utils.parametrizations.spectral_norm``
computes it, except for *when* the power iteration runs: torch's runs once per access of the
weight in training mode, so a fixed-point solver that evaluates the same layer fifty times would
see fifty different weights, and a checkpointed or implicit backward pass that evaluates it again
would differentiate yet another one. Ours runs once per change of the weight (after an optimizer
step, a load, a move), so within a training step every evaluation uses the same normalised
weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

__all__ = ["SpectralNorm", "spectral_norm"]


class SpectralNorm(nn.Module):
    r"""The parametrisation :math:`W \mapsto W / \sigma(W)` of spectral normalisation.

    :math:`\sigma(W) = u^\top W_{\mathrm{mat}} v` with :math:`W_{\mathrm{mat}}` the weight
    reshaped to ``(out_channels, -1)`` and :math:`(u, v)` the singular-vector estimates of the
    power iteration (Miyato et al. 2018), kept as buffers. In training mode one power iteration
    runs when the weight has changed since the last one (``init_iterations`` at construction), so
    the map is a fixed function of the weight between optimizer steps: what a fixed-point solver,
    an implicit backward pass and activation checkpointing all need. In evaluation mode
    :math:`(u, v)` never change.

    Parameters
    ----------
    weight:
        The weight to normalise (for the shapes of the buffers and their first estimate).
    power_iterations:
        Power iterations per change of the weight in training mode (torch's default: 1).
    init_iterations:
        Power iterations at construction (torch's: 15).
    eps:
        Floor of the norms in the normalisations.
    """

    _u: Tensor
    _v: Tensor

    def __init__(
        self,
        weight: Tensor,
        power_iterations: int = 1,
        init_iterations: int = 15,
        eps: float = 1e-12,
    ):
        super().__init__()
        if weight.ndim < 2:
            raise ValueError(
                f"SpectralNorm normalises weights of 2 or more dimensions, got shape "
                f"{tuple(weight.shape)}"
            )
        mat = weight.detach().flatten(1)
        self.power_iterations = power_iterations
        self.eps = eps
        self.register_buffer(
            "_u", F.normalize(mat.new_empty(mat.shape[0]).normal_(), dim=0, eps=eps)
        )
        self.register_buffer(
            "_v", F.normalize(mat.new_empty(mat.shape[1]).normal_(), dim=0, eps=eps)
        )
        # (storage, version counter) of the weight the estimates belong to; Tensor._version
        # counts in-place changes (optimizer steps, load_state_dict), a new storage (.to, .double,
        # .data = ...) changes the pointer
        self._seen: tuple[int, int] | None = None
        self._power(mat, init_iterations)

    @torch.no_grad()
    def _power(self, mat: Tensor, iterations: int) -> None:
        for _ in range(iterations):
            self._v.copy_(F.normalize(mat.mT @ self._u, dim=0, eps=self.eps))
            self._u.copy_(F.normalize(mat @ self._v, dim=0, eps=self.eps))

    # torch.compile runs this eagerly (a graph break): the once-per-change test reads the weight's
    # data pointer and version counter, which dynamo cannot compare in a graph
    @torch.compiler.disable
    def forward(self, weight: Tensor) -> Tensor:
        mat = weight.flatten(1)
        if self.training:
            key = (weight.data_ptr(), weight._version)
            if key != self._seen:
                self._power(mat.detach(), self.power_iterations)
                self._seen = key
        # clones: the graph must not see a later in-place update of the estimates
        sigma = torch.vdot(self._u.clone(), mat @ self._v.clone())
        return weight / sigma


def spectral_norm(module: nn.Module, name: str = "weight") -> nn.Module:
    """Register :class:`SpectralNorm` on ``module.<name>``.

    A ``torch.nn.utils.parametrize`` parametrisation: the raw weight becomes
    ``parametrizations.<name>.original``.
    """
    parametrize.register_parametrization(module, name, SpectralNorm(getattr(module, name)))
    return module
