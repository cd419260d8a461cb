"""Shared pytest setup for every memroll package and the integration tests.

pytest loads this file for any test under the repository root, so each package's tests get the
same markers, warning policy and ``device`` fixture without importing a sibling package.

* ``gpu``-marked tests are skipped cleanly when CUDA is not available.
* The ``device`` fixture runs a test on ``cpu`` and, marked ``gpu``, on ``cuda``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device (gpu marker); none is available")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request: pytest.FixtureRequest) -> torch.device:
    """The device a test runs on: ``cpu`` always, ``cuda`` when one is present."""
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _seed_and_threads() -> Iterator[None]:
    """Every test starts from the same global RNG state, so failures reproduce, and runs on one
    intra-op thread: the tests use tiny tensors, for which thread start-up dominates (up to 100x
    slower with 2 threads on a loaded 2-core machine)."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
