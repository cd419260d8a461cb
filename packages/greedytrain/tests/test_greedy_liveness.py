"""A rank that dies or hangs stops the other ranks of a P-GLEAM job, which name it (issue 12)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _greedy_helpers import dead_rank_worker, run_ranks

PEER_TIMEOUT = 4.0  # seconds without a heartbeat before a rank is declared gone


@pytest.mark.distributed
@pytest.mark.parametrize(
    ("how", "limit"),
    [
        # gloo sees the killed process's connection close; the heartbeat names the rank at once
        ("SIGKILL", 4.0),
        # a stopped process keeps its connections open: only the missing heartbeat shows it
        ("SIGSTOP", PEER_TIMEOUT + 4.0),
    ],
)
def test_a_dead_or_hung_rank_stops_rank_0_within_a_timeout(
    tmp_path: Path, how: str, limit: float
) -> None:
    failures = run_ranks(
        dead_rank_worker, 2, (str(tmp_path), how, PEER_TIMEOUT), tmp_path, timeout=90, wait_for=[0]
    )
    assert 0 not in failures, failures[0]
    went = json.loads((tmp_path / "rank1.json").read_text())["time"]
    seen = json.loads((tmp_path / "rank0.json").read_text())
    assert seen["error"].startswith(
        "rank 0 stopped while receiving the input of module 2 from rank 1"
    )
    assert "rank 1 is gone" in seen["error"]
    if how == "SIGSTOP":
        assert "sent no heartbeat" in seen["error"]
    assert 0 < seen["time"] - went < limit
