"""unrolled.train on two gloo processes equals one process: DDP for every strategy, P-GLEAM for
greedy (with and without data-parallel replicas), the run folder written by rank 0, resume
restoring every rank, and a failing or killed rank named by the others."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _unrolled_distributed import (
    SCENARIOS,
    dataset,
    job,
    model,
    params,
    run_job,
    train_options,
    train_scenario,
)

import unrolled

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One job of two ranks running every scenario (starting processes is the slow part)."""
    out = tmp_path_factory.mktemp("ranks2")
    crashed = run_job(job, out, wait_for=(0,))  # rank 1 kills itself in the last scenario
    assert not crashed, crashed
    return out


def _load(out: Path, name: str, rank: int) -> dict:
    error = out / f"{name}-error{rank}.txt"
    assert not error.exists(), error.read_text()
    return torch.load(out / f"{name}{rank}.pt")


def _relative(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    flat_got = torch.cat([g.flatten() for g in got])
    flat_want = torch.cat([w.flatten() for w in want])
    return float((flat_got - flat_want).norm() / flat_want.norm())


# tolerances: float reduction order only (DDP averages two half-batch gradients)
TOLERANCE = {"float64": 1e-5, "float32": 1e-4}


@pytest.mark.parametrize("name", [n for n in SCENARIOS if not n.startswith("bf16")])
def test_two_ranks_equal_one_process(two_ranks: Path, name: str) -> None:
    reference, result = train_scenario(name, ranked=False)
    dtype = SCENARIOS[name][1]
    tolerance = 1e-6 if SCENARIOS[name][2] == "greedy" else TOLERANCE[dtype]
    for rank in range(2):
        got = _load(two_ranks, name, rank)
        assert _relative(got["params"], params(reference)) < tolerance
        assert got["losses"] == pytest.approx(result.losses, rel=tolerance)
    assert _relative(params(reference), params(model(SCENARIOS[name][0], dtype))) > 1e-3


@pytest.mark.parametrize("name", ["bf16-backprop", "bf16-greedy"])
def test_mixed_precision_on_two_ranks(two_ranks: Path, name: str) -> None:
    """bf16 rounds differently on half batches: the runs agree to bf16's resolution."""
    reference, _ = train_scenario(name, ranked=False)
    for rank in range(2):
        assert _relative(_load(two_ranks, name, rank)["params"], params(reference)) < 1e-2
    ranks = [_load(two_ranks, name, r)["params"] for r in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*ranks))  # the replicas stay identical


def test_rank_zero_writes_the_run_folder(two_ranks: Path) -> None:
    run = two_ranks / "run"
    names = sorted(p.name for p in run.iterdir())
    # the run's files and nothing else (the previous checkpoint is kept beside the newest)
    expected = ["best.pt", "checkpoint.prev.pt", "checkpoint.pt", "log.csv", "train_result.json"]
    assert names == [*expected, "val.csv"]
    summary = json.loads((run / "train_result.json").read_text())
    assert (summary["world_size"], summary["backend"]) == (2, "gloo")
    # validation split over the ranks (5 samples: loads 3 and 2) equals one process's
    reference = model("modl", "float64")
    result = unrolled.train(
        reference, dataset(), dataset("val"), val_every=2, val_samples=5, val_batch_size=2,
        **train_options({}),
    )  # fmt: skip
    for rank in range(2):
        got = _load(two_ranks, "run-folder", rank)
        assert got["world"] == 2
        assert [v["step"] for v in got["val"]] == [v["step"] for v in result.val_history]
        for ours, theirs in zip(got["val"], result.val_history):
            for metric in ("psnr", "ssim", "nrmse"):
                assert ours[metric] == pytest.approx(theirs[metric], rel=1e-6)
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=False)
    assert len(checkpoint["rng_ranks"]) == 2


def test_resume_on_two_ranks_is_bit_identical(two_ranks: Path) -> None:
    assert "Stop: stopped after step 3" in (two_ranks / "resume-killed-error0.txt").read_text()
    for rank in range(2):
        straight = _load(two_ranks, "resume-straight", rank)
        resumed = _load(two_ranks, "resume-resume", rank)
        assert resumed["from"] == 2
        assert resumed["losses"] == straight["losses"]
        assert all(torch.equal(a, b) for a, b in zip(resumed["params"], straight["params"]))


def test_a_failing_rank_stops_the_other_with_its_name(two_ranks: Path) -> None:
    own = (two_ranks / "failure-error1.txt").read_text()
    peer = (two_ranks / "failure-error0.txt").read_text()
    assert own == "FloatingPointError: simulated failure of rank 1"
    assert peer.startswith("RankFailedError: rank 0 stopped during the training step at step 3")
    assert "rank 1 failed in the callback at step 2: FloatingPointError: simulated failure" in peer


def test_a_killed_rank_is_named(two_ranks: Path) -> None:
    report = json.loads((two_ranks / "dead0.json").read_text())
    assert report["error"].startswith("RankFailedError: rank 0 stopped ")
    assert "rank 1 is gone: its heartbeat stopped" in report["error"]
    killed_at = float((two_ranks / "killed-at.txt").read_text())
    assert report["time"] - killed_at < 30  # noticed within seconds, not the group's timeout


def test_batch_must_split_over_the_ranks(two_ranks: Path) -> None:
    for rank in range(2):
        error = (two_ranks / f"bad-batch-error{rank}.txt").read_text()
        assert error == (
            "ValueError: batch_size=3 is the global batch, split evenly over 2 processes: use a "
            "multiple of 2"
        )
