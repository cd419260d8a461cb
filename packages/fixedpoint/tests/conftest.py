"""Test setup of the fixedpoint package (markers, warning policy, seeding, one intra-op thread and
the ``device`` fixture come from the root ``conftest.py``; this file refines ``device``)."""

from __future__ import annotations

import pytest
import torch

_READY: set[torch.device] = set()


def _make_cuda_context_current_on_the_autograd_thread(device: torch.device) -> None:
    """Run one elementwise backward on ``device``, once per process.

    Autograd runs the backward of CUDA operations on a worker thread of its own (one per device).
    That thread selects the device without making its CUDA context current, so when the first
    kernel it runs is a cuBLAS call (the backward of a matmul, as in ``spectral_radius``'s first
    vector-Jacobian product), torch warns "Attempting to run cuBLAS, but there was no current CUDA
    context! Attempting to set the primary context..." (and then sets it: the results are right),
    and our warnings-are-errors policy fails the test. Whether it happens depended on which test
    file ran the first CUDA backward of the process (fixedpoint's tests alone failed, after other
    CUDA tests they passed). A plain kernel launched on that thread makes the primary context
    current there for the rest of the process, so the first cuBLAS call finds it.
    """
    if device in _READY:
        return
    x = torch.ones(2, device=device, requires_grad=True)
    (x * 2).sum().backward()  # MulBackward0 launches an elementwise kernel on the device thread
    torch.cuda.synchronize(device)
    _READY.add(device)


@pytest.fixture
def device(device: torch.device) -> torch.device:
    """The root fixture's device; on CUDA, with the context current on autograd's device thread."""
    if device.type == "cuda":
        _make_cuda_context_current_on_the_autograd_thread(device)
    return device
