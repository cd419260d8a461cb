"""Nested states: tensors inside (possibly nested) tuples, lists and dicts.

greedytrain never looks inside a state or a context; it only needs to detach them, move them to a
device and compare their layout. A *tree* here is a tensor, a tuple / list / dict of trees, or any
other object (a leaf that is passed through unchanged: a float, an operator ``nn.Module``, None).
Named tuples and dict key order are preserved.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "describe_layout",
    "tree_detach",
    "tree_layout",
    "tree_leaves",
    "tree_map",
    "tree_map_tensors",
    "tree_to",
]


def _is_tensor(node: Any) -> bool:
    return isinstance(node, Tensor)


def tree_map(fn: Callable[[Any], Any], tree: Any, is_leaf: Callable[[Any], bool]) -> Any:
    """Apply ``fn`` to every node of ``tree`` for which ``is_leaf`` holds (checked first).

    Tuples (named tuples kept), lists and dicts are rebuilt around the mapped nodes; any other
    node is returned unchanged.
    """
    if is_leaf(tree):
        return fn(tree)
    if isinstance(tree, tuple):
        mapped = [tree_map(fn, item, is_leaf) for item in tree]
        if hasattr(tree, "_fields"):  # a named tuple
            return type(tree)(*mapped)
        return tuple(mapped)
    if isinstance(tree, list):
        return [tree_map(fn, item, is_leaf) for item in tree]
    if isinstance(tree, dict):
        return type(tree)((key, tree_map(fn, value, is_leaf)) for key, value in tree.items())
    return tree


def tree_map_tensors(fn: Callable[[Tensor], Any], tree: Any) -> Any:
    """Apply ``fn`` to every tensor of ``tree``; other leaves are returned unchanged."""
    return tree_map(fn, tree, _is_tensor)


def tree_leaves(tree: Any) -> list[Tensor]:
    """Return the tensors of ``tree`` in a fixed (depth-first, insertion) order."""
    leaves: list[Tensor] = []

    def visit(tensor: Tensor) -> Tensor:
        leaves.append(tensor)
        return tensor

    tree_map_tensors(visit, tree)
    return leaves


def tree_detach(tree: Any) -> Any:
    """``tree`` with every tensor detached from the autograd graph (the storage is shared)."""
    return tree_map_tensors(lambda tensor: tensor.detach(), tree)


def tree_to(tree: Any, device: torch.device) -> Any:
    """``tree`` with every tensor moved to ``device`` (tensors already there are not copied).

    Copies to a CUDA device are asynchronous (ordered on the streams); copies to the CPU are not,
    since a non-blocking device-to-host copy could be read before it lands.
    """
    non_blocking = device.type == "cuda"
    return tree_map_tensors(lambda tensor: tensor.to(device, non_blocking=non_blocking), tree)


def tree_layout(tree: Any) -> Any:
    """Describe ``tree`` comparably: its nesting with each tensor's shape.

    Two states with equal layouts have the same nesting and the same tensor shapes; dtypes are not
    compared (autocast may legitimately change them) and other leaves are described by type only.
    """
    if isinstance(tree, Tensor):
        return ("tensor", tuple(tree.shape))
    if isinstance(tree, tuple | list):
        return (type(tree).__name__, tuple(tree_layout(item) for item in tree))
    if isinstance(tree, dict):
        return ("dict", tuple((key, tree_layout(value)) for key, value in tree.items()))
    return ("leaf", type(tree).__name__)


def describe_layout(tree: Any) -> str:
    """Describe ``tree`` briefly (a readable :func:`tree_layout`), for error messages."""
    if isinstance(tree, Tensor):
        return f"tensor{tuple(tree.shape)}"
    if isinstance(tree, tuple | list):
        inner = ", ".join(describe_layout(item) for item in tree)
        return f"({inner})" if isinstance(tree, tuple) else f"[{inner}]"
    if isinstance(tree, dict):
        inner = ", ".join(f"{key!r}: {describe_layout(value)}" for key, value in tree.items())
        return "{" + inner + "}"
    return type(tree).__name__
