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
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from ._tree import tree_leaves, tree_map

__all__ = ["Channel", "Wait", "broadcast_tree", "flatten_tree", "unflatten_tree", "unwire", "wire"]

# waits for an async torch.distributed request; the str says what it was for (error messages)
Wait = Callable[[Any, str], None]


class _TensorSlot(NamedTuple):
    shape: tuple[int, ...]
    dtype: torch.dtype


def _is_slot(node: Any) -> bool:
    return isinstance(node, _TensorSlot)


def _is_tensor(node: Any) -> bool:
    return isinstance(node, Tensor)


def flatten_tree(tree: Any) -> tuple[Any, list[Tensor]]:
    """Split ``tree`` into a picklable layout (tensors replaced by slots) and its tensors."""
    tensors = tree_leaves(tree)
    layout = tree_map(lambda t: _TensorSlot(tuple(t.shape), t.dtype), tree, _is_tensor)
    return layout, tensors


def unflatten_tree(layout: Any, tensors: list[Tensor]) -> Any:
    """Inverse of :func:`flatten_tree`."""
    queue = iter(tensors)
    return tree_map(lambda _: next(queue), layout, _is_slot)


def _slots(layout: Any) -> list[_TensorSlot]:
    found: list[_TensorSlot] = []
    tree_map(found.append, layout, _is_slot)
    return found


def wire(tensor: Tensor) -> Tensor:
    """Return the contiguous real tensor that carries ``tensor`` (a real view for complex ones)."""
    tensor = tensor.detach()
    if tensor.is_complex():
        tensor = torch.view_as_real(tensor.resolve_conj())
    return tensor.contiguous()


def _buffer(slot: _TensorSlot, device: torch.device) -> Tensor:
    if slot.dtype.is_complex:
        real = torch.empty((), dtype=slot.dtype).real.dtype
        return torch.empty((*slot.shape, 2), dtype=real, device=device)
    return torch.empty(slot.shape, dtype=slot.dtype, device=device)


def unwire(buffer: Tensor, slot: Any) -> Tensor:
    """Return the tensor ``buffer`` carries for ``slot`` (complex again where it was)."""
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
    """Sends and receives nested states to and from peer ranks, caching layouts per peer.

    Parameters
    ----------
    device
        Where received tensors are put.
    wait
        Waits for one async request (``wait(work, what)``); raises when a peer is gone.
    group
        The process group to communicate in (None: the default group).
    """

    def __init__(self, device: torch.device, wait: Wait, group: Any = None) -> None:
        self.device = device
        self.wait = wait
        self.group = group
        self._sent: dict[int, Any] = {}
        self._received: dict[int, Any] = {}

    def isend(self, tree: Any, dst: int) -> list[tuple[Any, Tensor]]:
        """Start sending ``tree`` to global rank ``dst``.

        Returns (work, tensor) pairs to keep alive until the works complete.
        """
        layout, tensors = flatten_tree(tree)
        same = self._sent.get(dst) == layout
        encoded = None if same else _encode(layout, self.device)
        header = torch.tensor([-1 if encoded is None else encoded.numel()], dtype=torch.int64)
        header = header.to(self.device)
        payload = [header, *([encoded] if encoded is not None else []), *map(wire, tensors)]
        self._sent[dst] = layout
        return [(dist.isend(tensor, dst, group=self.group), tensor) for tensor in payload]

    def _recv(self, buffer: Tensor, src: int, what: str) -> Tensor:
        self.wait(dist.irecv(buffer, src, group=self.group), what)
        return buffer

    def recv(self, src: int, what: str) -> Any:
        """Receive the next state sent by global rank ``src`` (waiting through ``wait``)."""
        header = self._recv(torch.empty(1, dtype=torch.int64, device=self.device), src, what)
        length = int(header.item())
        if length >= 0:
            raw = self._recv(torch.empty(length, dtype=torch.uint8, device=self.device), src, what)
            self._received[src] = pickle.loads(raw.cpu().numpy().tobytes())
        layout = self._received[src]
        tensors = [
            unwire(self._recv(_buffer(slot, self.device), src, what), slot)
            for slot in _slots(layout)
        ]
        return unflatten_tree(layout, tensors)


def broadcast_tree(
    tree: Any, src: int, group: Any, device: torch.device, is_source: bool, wait: Wait
) -> Any:
    """Broadcast ``tree`` from global rank ``src`` to every rank of ``group``."""
    what = f"receiving the mini-batch broadcast by rank {src}"

    def broadcast(tensor: Tensor) -> Tensor:
        wait(dist.broadcast(tensor, src, group=group, async_op=True), what)
        return tensor

    if is_source:
        layout, tensors = flatten_tree(tree)
        encoded = _encode(layout, device)
        broadcast(torch.tensor([encoded.numel()], dtype=torch.int64, device=device))
        broadcast(encoded)
        for tensor in tensors:
            broadcast(wire(tensor.to(device)))
        return tree
    header = broadcast(torch.empty(1, dtype=torch.int64, device=device))
    encoded = broadcast(torch.empty(int(header.item()), dtype=torch.uint8, device=device))
    layout = pickle.loads(encoded.cpu().numpy().tobytes())
    received = [unwire(broadcast(_buffer(slot, device)), slot) for slot in _slots(layout)]
    return unflatten_tree(layout, received)
