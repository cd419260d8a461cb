"""Point-to-point transfer and broadcast of nested states over torch.distributed.

A state (tensors in nested tuples / lists / dicts, plus any picklable non-tensor leaves) travels
as: an int64 header holding the length of its pickled *layout* (``-1``: same layout as the last
message on this channel), the layout bytes when they changed, then every tensor in order.
Complex tensors travel as real views ``(..., 2)`` (``torch.view_as_real``): point-to-point
complex transfers are not supported by every backend. Messages between two ranks arrive in the
order they were sent (both gloo and NCCL keep per-pair order), so no tags are needed.
"""

from __future__ import annotations

import pickle
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["Channel", "RankFailedError", "broadcast_tree", "flatten_tree", "unflatten_tree"]


class RankFailedError(RuntimeError):
    """A rank of a distributed greedy-training job failed; the message names the rank."""


class _TensorSlot(NamedTuple):
    shape: tuple[int, ...]
    dtype: torch.dtype


def flatten_tree(tree: Any) -> tuple[Any, list[Tensor]]:
    """Split ``tree`` into a picklable layout (tensors replaced by slots) and its tensors."""
    tensors: list[Tensor] = []

    def visit(node: Any) -> Any:
        if isinstance(node, Tensor):
            tensors.append(node)
            return _TensorSlot(tuple(node.shape), node.dtype)
        if isinstance(node, tuple):
            items = [visit(item) for item in node]
            return type(node)(*items) if hasattr(node, "_fields") else tuple(items)
        if isinstance(node, list):
            return [visit(item) for item in node]
        if isinstance(node, dict):
            return type(node)((key, visit(value)) for key, value in node.items())
        return node

    return visit(tree), tensors


def unflatten_tree(layout: Any, tensors: list[Tensor]) -> Any:
    """Inverse of :func:`flatten_tree`."""
    queue = iter(tensors)

    def visit(node: Any) -> Any:
        if isinstance(node, _TensorSlot):
            return next(queue)
        if isinstance(node, tuple):
            items = [visit(item) for item in node]
            return type(node)(*items) if hasattr(node, "_fields") else tuple(items)
        if isinstance(node, list):
            return [visit(item) for item in node]
        if isinstance(node, dict):
            return type(node)((key, visit(value)) for key, value in node.items())
        return node

    return visit(layout)


def _slots(layout: Any) -> list[_TensorSlot]:
    found: list[_TensorSlot] = []

    def visit(node: Any) -> None:
        if isinstance(node, _TensorSlot):
            found.append(node)
        elif isinstance(node, tuple | list):
            for item in node:
                visit(item)
        elif isinstance(node, dict):
            for value in node.values():
                visit(value)

    visit(layout)
    return found


def _wire(tensor: Tensor) -> Tensor:
    """The contiguous real tensor that carries ``tensor`` (a real view for complex ones)."""
    tensor = tensor.detach()
    if tensor.is_complex():
        tensor = torch.view_as_real(tensor.resolve_conj())
    return tensor.contiguous()


def _buffer(slot: _TensorSlot, device: torch.device) -> Tensor:
    if slot.dtype.is_complex:
        real = torch.empty((), dtype=slot.dtype).real.dtype
        return torch.empty((*slot.shape, 2), dtype=real, device=device)
    return torch.empty(slot.shape, dtype=slot.dtype, device=device)


def _unwire(buffer: Tensor, slot: _TensorSlot) -> Tensor:
    return torch.view_as_complex(buffer) if slot.dtype.is_complex else buffer


def _encode(layout: Any, device: torch.device) -> Tensor:
    try:
        raw = pickle.dumps(layout)
    except Exception as error:
        raise TypeError(
            f"a non-tensor leaf of the state or context cannot be pickled to send it to another "
            f"rank ({error}); load such objects on every rank (data='per_rank' or context_fn)"
        ) from error
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).to(device)


class Channel:
    """Sends and receives nested states to and from peer ranks, caching layouts per peer."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._sent: dict[int, Any] = {}
        self._received: dict[int, Any] = {}

    def isend(self, tree: Any, dst: int) -> list[tuple[Any, Tensor]]:
        """Start sending ``tree`` to global rank ``dst``; returns (work, tensor) pairs to keep
        alive until the works complete."""
        layout, tensors = flatten_tree(tree)
        works: list[tuple[Any, Tensor]] = []
        same = self._sent.get(dst) == layout
        encoded = None if same else _encode(layout, self.device)
        header = torch.tensor([-1 if encoded is None else encoded.numel()], dtype=torch.int64)
        header = header.to(self.device)
        payload = [header, *([encoded] if encoded is not None else []), *map(_wire, tensors)]
        for tensor in payload:
            works.append((dist.isend(tensor, dst), tensor))
        self._sent[dst] = layout
        return works

    def recv(self, src: int) -> Any:
        """Receive the next state sent by global rank ``src`` (blocking)."""
        header = torch.empty(1, dtype=torch.int64, device=self.device)
        dist.recv(header, src)
        length = int(header.item())
        if length >= 0:
            raw = torch.empty(length, dtype=torch.uint8, device=self.device)
            dist.recv(raw, src)
            self._received[src] = pickle.loads(raw.cpu().numpy().tobytes())
        layout = self._received[src]
        tensors = []
        for slot in _slots(layout):
            buffer = _buffer(slot, self.device)
            dist.recv(buffer, src)
            tensors.append(_unwire(buffer, slot))
        return unflatten_tree(layout, tensors)


def broadcast_tree(tree: Any, src: int, group: Any, device: torch.device, is_source: bool) -> Any:
    """Broadcast ``tree`` from global rank ``src`` to every rank of ``group``."""
    if is_source:
        layout, tensors = flatten_tree(tree)
        encoded = _encode(layout, device)
        header = torch.tensor([encoded.numel()], dtype=torch.int64, device=device)
    else:
        header = torch.empty(1, dtype=torch.int64, device=device)
    dist.broadcast(header, src, group=group)
    if not is_source:
        encoded = torch.empty(int(header.item()), dtype=torch.uint8, device=device)
    dist.broadcast(encoded, src, group=group)
    if is_source:
        for tensor in tensors:
            dist.broadcast(_wire(tensor.to(device)), src, group=group)
        return tree
    layout = pickle.loads(encoded.cpu().numpy().tobytes())
    received = []
    for slot in _slots(layout):
        buffer = _buffer(slot, device)
        dist.broadcast(buffer, src, group=group)
        received.append(_unwire(buffer, slot))
    return unflatten_tree(layout, received)
