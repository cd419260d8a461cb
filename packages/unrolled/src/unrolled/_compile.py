"""``torch.compile`` of an unrolled model's learned networks (the priors), in place.

What is compiled and what is not:

* compiled: every *network* of the model, the largest submodules with parameters that are not
  part of its structure (stages, invertible layers, prior wrappers, module lists) and define a
  ``forward`` of their own: the priors of :func:`~unrolled.build_prior` (a coupling's or an
  invertible residual's function, ``ResidualCNN``, ``ResBlockProx``, ``DnCNN``), i-RIM's residual
  blocks, the RIM's GRU cells, the parts of LUSER's block;
* not compiled: the physics and everything with a data-dependent loop or a custom
  ``torch.autograd.Function`` (:func:`physops.cg`, the fixed-point solvers and
  :func:`fixedpoint.implicit`, :class:`revlayers.ReversibleSequence`, activation checkpointing):
  those entries are marked ``torch.compiler.disable``, so a whole model under ``torch.compile``
  breaks its graph there and runs them eagerly, each with its reason beside the decorator.

Each network's ``forward`` is compiled in place (an instance attribute bound to the module), so
its parameters, ``state_dict`` keys and hooks stay as they were: checkpoints, optimizers,
``DistributedDataParallel`` (which wraps the model after its networks were compiled), the
mixed-precision hooks (which run around the compiled forward) and every memory strategy see the
same model, and the reversible engine and checkpointing call the compiled networks in their
recomputations. A deep copy is bound to the copy. (:meth:`torch.nn.Module.compile` compiles
nothing for the ``torch.nn`` containers in torch 2.13: their frames are in dynamo's skip list.)
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn

from revlayers import InvertibleModule

from ._base import Stage, UnrolledModel
from .nn import PriorLayer

__all__ = ["compile_networks", "network_names"]

# modules whose children are walked rather than compiled as a whole
_STRUCTURE = (InvertibleModule, Stage, UnrolledModel, PriorLayer, nn.ModuleList, nn.ModuleDict)


def _is_network(module: nn.Module) -> bool:
    """Say whether ``module`` has parameters and a forward of its own and is no structure."""
    return (
        not isinstance(module, _STRUCTURE)
        and type(module).forward is not nn.Module.forward
        and any(True for _ in module.parameters())
    )


def _networks(module: nn.Module, prefix: str, out: dict[str, nn.Module]) -> None:
    for name, child in module.named_children():
        path = f"{prefix}{name}"
        if any(child is seen for seen in out.values()):
            continue  # a network shared by several stages is compiled once
        if _is_network(child):
            out[path] = child
        else:
            _networks(child, f"{path}.", out)


def network_names(model: nn.Module) -> list[str]:
    """Return the qualified names of the networks :func:`compile_networks` would compile."""
    found: dict[str, nn.Module] = {}
    _networks(model, "", found)
    return list(found)


def compile_networks(model: nn.Module, **options: Any) -> list[str]:
    """Compile every learned network of ``model`` in place and return their names.

    Parameters
    ----------
    model:
        An unrolled model (or any module: its networks are found as described in the module
        docstring).
    **options:
        Arguments of :func:`torch.compile` (``fullgraph``, ``backend``, ``mode``, ``dynamic``).
        ``fullgraph=True`` holds for every prior of :func:`~unrolled.build_prior` and i-RIM's
        blocks; networks with :class:`~unrolled.SpectralNorm` (DEQ, LUSER) break their graph
        where the power iteration checks whether the weight changed (a data-pointer
        comparison).

    Returns
    -------
    list of str
        The qualified names of the compiled modules (empty when the model has no network).
        Calling it again compiles nothing twice.
    """
    found: dict[str, nn.Module] = {}
    _networks(model, "", found)
    for net in found.values():
        if "forward" not in net.__dict__:  # not compiled yet
            compiled = torch.compile(_forward_for(net), **options)
            net.__dict__["forward"] = types.MethodType(compiled, net)
    return list(found)


def _forward(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """Run the class's forward of ``module`` (a frame of ours, for dynamo to trace)."""
    return type(module).forward(module, *args, **kwargs)


# dynamo keeps its compiled graphs per code object, at most 8 (torch's recompile_limit): networks
# of one class and parameter shapes share a copy of _forward's code (one graph for the identical
# priors of all unrolls), networks of other shapes get their own
_FORWARDS: dict[tuple[type, tuple[tuple[int, ...], ...]], types.FunctionType] = {}


def _forward_for(module: nn.Module) -> types.FunctionType:
    key = (type(module), tuple(tuple(p.shape) for p in module.parameters()))
    if key not in _FORWARDS:
        code = _forward.__code__.replace(co_name=f"_forward_{len(_FORWARDS)}")
        _FORWARDS[key] = types.FunctionType(code, _forward.__globals__, code.co_name)
    return _FORWARDS[key]
