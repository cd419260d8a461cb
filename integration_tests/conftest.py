"""Fixtures of the integration tests (the helpers are in ``memroll_helpers``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from memroll_helpers import write_fastmri


@pytest.fixture(scope="session")
def fastmri_root(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A folder per challenge with ``train/``, ``val/`` and ``test/`` fastMRI files."""
    roots = {}
    for challenge in ("multicoil", "singlecoil"):
        root = tmp_path_factory.mktemp(f"fastmri_{challenge}")
        for split in ("train", "val", "test"):
            (root / split).mkdir()
            write_fastmri(root / split / f"{split}_a.h5", challenge, split=split)
        roots[challenge] = root
    return roots
