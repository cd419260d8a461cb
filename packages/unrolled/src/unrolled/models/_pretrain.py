"""Pretraining the prox of a DEQ as a denoiser (Gilton et al.; LUSER Sec. 2.2 on DEQ4IP).

A deep equilibrium trained from random weights starts from a map whose fixed point can be far
from an image and whose iterations may not converge; Gilton et al. first train the network as a
Gaussian denoiser, then train the whole equilibrium. :func:`pretrain_denoiser` is that first
stage: it trains the DEQ's prox (what the map applies after its gradient step, with the
``contraction`` scaling when set) to map ``x + n`` to ``x`` on the targets of a dataset, by Adam on
the mean squared error, and leaves the step size alone.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .._validate import finite_number, positive_int
from ..nn import EquilibriumBatchNorm
from ._deq import DEQ, DEQStage

__all__ = ["pretrain_denoiser"]


def pretrain_denoiser(
    model: DEQ,
    dataset: object,
    steps: int = 200,
    batch_size: int = 4,
    noise: float = 0.05,
    lr: float = 1e-3,
    seed: int = 0,
) -> list[float]:
    """Train ``model``'s prox as a denoiser of ``dataset``'s targets; return the step losses.

    Parameters
    ----------
    model:
        A :class:`~unrolled.DEQ`.
    dataset:
        A dataset whose ``batch(indices)`` gives a :class:`~unrolled.Batch` (a
        :class:`~unrolled.TaskDataset`): its ``target`` images are the clean images.
    steps, batch_size, lr:
        Adam steps, images per step and learning rate.
    noise:
        Standard deviation of the white Gaussian noise added to the targets (per real channel).
    seed:
        Seeds the choice of images and the noise (a generator of its own).

    Returns
    -------
    list of float
        The mean squared error of every step (before its update).

    Notes
    -----
    The prox trains as a feed-forward network: its ``unrolled.nn.EquilibriumBatchNorm``
    layers act as plain training-mode BatchNorm (batch statistics, gradients through them,
    running statistics updated), and the fixed-point map then normalises by the running
    statistics they collected. The model is left in the mode it was in.
    """
    if not isinstance(model, DEQ):
        raise TypeError(f"pretrain_denoiser takes an unrolled.DEQ, got {type(model).__name__}")
    batch_of = getattr(dataset, "batch", None)
    if not callable(batch_of) or not hasattr(dataset, "__len__"):
        raise TypeError(
            "dataset must have batch(indices) and len() (an unrolled.TaskDataset), got "
            f"{type(dataset).__name__}"
        )
    positive_int("steps", steps)
    positive_int("batch_size", batch_size)
    finite_number("noise", noise, low=0, low_open=True)
    finite_number("lr", lr, low=0, low_open=True)
    stage = model.stages[0]
    if not isinstance(stage, DEQStage):
        raise TypeError(f"model.stages[0] must be a DEQStage, got {type(stage).__name__}")
    prox: nn.Module = stage.prox
    params = [p for p in prox.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    size = len(dataset)
    device = params[0].device if params else torch.device("cpu")
    was_training = model.training
    model.train()
    losses: list[float] = []
    try:
        for _ in range(steps):
            indices = torch.randint(size, (min(batch_size, size),), generator=generator)
            clean = model.adapter.to_net(batch_of(indices.tolist()).target)
            noisy = clean + noise * torch.randn(clean.shape, generator=generator).to(clean)
            clean, noisy = clean.to(device), noisy.to(device)
            with EquilibriumBatchNorm.collecting(prox):
                out = prox(noisy) * stage.prox_scale
            loss = (out - clean).square().mean()
            if not math.isfinite(float(loss.detach())):
                raise ValueError(
                    f"the denoising loss is {float(loss.detach())} at pretraining step "
                    f"{len(losses) + 1}: lower lr (got {lr})"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    finally:
        model.train(was_training)
    return losses
