"""revlayers test setup: one intra-op thread per test.

The tests use tiny tensors, for which torch's thread pool costs more than it gains, and on a
shared 2-core machine OpenMP threads spin against other jobs (a 12-layer example took 20 s with
2 threads under load and well under a second with 1). The previous setting is restored after
each test, so other packages' tests in the same session are unaffected.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
