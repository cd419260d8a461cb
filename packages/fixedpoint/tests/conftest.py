"""Test setup of the fixedpoint package (the shared markers and fixtures come from the root)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_intra_op_thread() -> Iterator[None]:
    """Run each test with one intra-op thread, restoring the setting afterwards.

    The tests use tiny tensors, for which intra-op threads bring no speed, only synchronisation:
    on a loaded machine (our CI runners are shared 2-core boxes) every OpenMP region of a batched
    2x5x5 Cholesky factorisation then waits for the busy core, which measured 20 ms instead of
    2 us and made the suite ten times slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
