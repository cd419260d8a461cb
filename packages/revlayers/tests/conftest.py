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


# every float32-precision setting of torch >= 2.9, parents before children: restoring a parent
# may reset its children, so the children are restored after it
_PRECISION_PATHS = (
    "",
    "cuda.matmul",
    "cudnn",
    "cudnn.conv",
    "cudnn.rnn",
    "mkldnn",
    "mkldnn.matmul",
    "mkldnn.conv",
    "mkldnn.rnn",
)


def _backend(path: str) -> object:
    obj: object = torch.backends
    for part in filter(None, path.split(".")):
        obj = getattr(obj, part)
    return obj


@pytest.fixture
def tf32_settings() -> Iterator[None]:
    """Let a test change the float32 precision settings; restore them exactly afterwards."""
    if getattr(torch.backends.cuda.matmul, "fp32_precision", None) is None:
        pytest.skip("this torch has no fp32_precision settings (torch < 2.9)")
    saved = [(p, _backend(p).fp32_precision) for p in _PRECISION_PATHS]
    try:
        yield
    finally:
        for path, value in saved:
            _backend(path).fp32_precision = value
