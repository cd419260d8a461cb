"""P-GLEAM over torch.distributed (gloo, CPU): the same parameters as single-process GLEAM."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from _greedy_helpers import (
    free_port,
    job_worker,
    make_stages,
    mse,
    output_fn_for,
    problem,
    run_ranks,
    stages_for,
)

from greedytrain import GreedyTrainer
from greedytrain.distributed import DistributedGreedyTrainer


def _single_process(config: dict) -> tuple[GreedyTrainer, list[list[float]]]:
    stages = stages_for(config["kind"], config["stages"])
    trainer = GreedyTrainer(
        stages, mse, modules=config["modules"], output_fn=output_fn_for(config["kind"])
    )
    losses = [
        trainer.train_step(*problem(config["kind"], config["batch"], 100 + step))
        for step in range(config["steps"])
    ]
    return trainer, losses


TWO_RANKS = [
    ("round robin", {"kind": "pgd", "stages": 4, "modules": 4, "batch": 2}),
    (
        "contiguous, broadcast, complex state",
        {
            "kind": "complex",
            "stages": 4,
            "modules": 4,
            "batch": 2,
            "placement": "contiguous",
            "data": "broadcast",
        },
    ),
    (
        "tuple state, unsynchronised losses",
        {"kind": "rim", "stages": 4, "modules": 4, "batch": 2, "sync_losses": False},
    ),
]
FOUR_RANKS = [
    ("4 positions", {"kind": "pgd", "stages": 4, "modules": 4, "batch": 2}),
    (
        "2 positions x 2 replicas",
        {"kind": "pgd", "stages": 4, "modules": 4, "batch": 4, "replicas": 2},
    ),
]
STEPS = 3


def _job(factory: pytest.TempPathFactory, world: int, configs: list, checks: bool) -> Path:
    """Start ``world`` gloo processes once for several scenarios (process start-up dominates)."""
    folder = factory.mktemp(f"ranks{world}")
    configs = [{**config, "steps": STEPS} for _, config in configs]
    failures = run_ranks(job_worker, world, (str(folder), configs, checks), folder, timeout=300)
    assert not failures, failures
    return folder


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _job(tmp_path_factory, 2, TWO_RANKS, checks=True)


@pytest.fixture(scope="module")
def four_ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _job(tmp_path_factory, 4, FOUR_RANKS, checks=False)


def _check_against_single_process(folder: Path, world: int, config: dict) -> None:
    config = {**config, "steps": STEPS}
    reference, ref_losses = _single_process(config)
    seen = set()
    for rank in range(world):
        result = torch.load(folder / f"result{rank}.pt")
        losses, want = torch.tensor(result["losses"]), torch.tensor(ref_losses)
        if not config.get("sync_losses", True):  # other ranks' modules read NaN
            others = [m for m in range(config["modules"]) if m not in result["modules"]]
            assert torch.isnan(losses[:, others]).all()
            want[:, others] = float("nan")
        torch.testing.assert_close(losses, want, rtol=1e-6, atol=1e-9, equal_nan=True)
        for m, params in result["params"].items():
            seen.add(m)
            for got, want in zip(params, reference.runners[m].parameters()):
                torch.testing.assert_close(got, want.detach(), rtol=0, atol=1e-6)
    assert seen == set(range(config["modules"]))
    # the job's checkpoint loads into a single-process trainer (shared format)
    resumed = GreedyTrainer(
        stages_for(config["kind"], config["stages"]), mse, modules=config["modules"]
    )
    assert resumed.load(folder / "checkpoint.pt", restore_rng=False) == {"steps": STEPS}
    assert resumed.step == STEPS
    for a, b in zip(resumed.runners.parameters(), reference.runners.parameters()):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=1e-6)


@pytest.mark.distributed
@pytest.mark.parametrize("index", range(len(TWO_RANKS)), ids=[n for n, _ in TWO_RANKS])
def test_two_ranks_equal_single_process_gleam(two_ranks: Path, index: int) -> None:
    _check_against_single_process(two_ranks / f"config{index}", 2, TWO_RANKS[index][1])


@pytest.mark.distributed
@pytest.mark.slow  # four processes on a 2-core machine: ~20 s or more under load
@pytest.mark.parametrize("index", range(len(FOUR_RANKS)), ids=[n for n, _ in FOUR_RANKS])
def test_four_ranks_equal_single_process_gleam(four_ranks: Path, index: int) -> None:
    _check_against_single_process(four_ranks / f"config{index}", 4, FOUR_RANKS[index][1])


@pytest.mark.distributed
def test_a_failing_rank_stops_the_job_and_is_named(two_ranks: Path) -> None:
    own = (two_ranks / "error1.txt").read_text()
    peer = (two_ranks / "error0.txt").read_text()
    assert own.startswith("rank 1 (pipeline position 1, replica 0, modules [1, 3]) failed")
    assert "step 1" in own
    assert "simulated failure" in own
    assert peer.startswith("rank 0 ")
    assert "rank 1 (pipeline position 1" in peer


@pytest.mark.distributed
def test_ranks_configured_differently_are_named(two_ranks: Path) -> None:
    for rank in range(2):
        message = (two_ranks / f"mismatch{rank}.txt").read_text()
        assert "every rank must build the trainer with the same arguments" in message
    assert "rank 1 was configured with" in (two_ranks / "mismatch0.txt").read_text()


TORCHRUN_SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    import torch.distributed as dist
    sys.path.insert(0, {helpers!r})
    from _greedy_helpers import make_batch, make_stages, mse
    from greedytrain.distributed import DistributedGreedyTrainer

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()

    def loss(prediction, target):
        if rank == 1 and trainer.step == 2:
            raise FloatingPointError("simulated failure")
        return mse(prediction, target)

    trainer = DistributedGreedyTrainer(make_stages(4), loss, modules=4)
    for step in range(4):
        x0, context, target = make_batch(seed=step)
        losses = trainer.train_step(x0, context, target)
        print(f"rank {{rank}} step {{step}} losses {{len(losses)}}", flush=True)
    """
)


@pytest.mark.distributed
def test_torchrun_launch_and_failure_names_the_rank(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(TORCHRUN_SCRIPT.format(helpers=str(Path(__file__).parent)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node=2",
            f"--master-port={free_port()}",
            str(script),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "rank 0 step 1 losses 4" in output, output
    assert "rank 1 step 1 losses 4" in output, output
    assert (
        "rank 1 (pipeline position 1, replica 0, modules [1, 3]) failed during train_step at step 2"
        in output
    )


@pytest.fixture
def world_of_one(tmp_path: Path):
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group(
        "gloo", store=store, rank=0, world_size=1, timeout=datetime.timedelta(seconds=60)
    )
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


@pytest.mark.usefixtures("world_of_one")
def test_world_of_one_equals_gleam_and_checkpoints() -> None:
    config = {"kind": "pgd", "stages": 3, "modules": 3, "batch": 2, "steps": 2}
    trainer = DistributedGreedyTrainer(stages_for("pgd", 3), mse, modules=3)
    got = [trainer.train_step(*problem("pgd", 2, 100 + s)) for s in range(2)]
    _, want = _single_process(config)
    assert got == want
    assert trainer.local_modules == [0, 1, 2]
    assert "rank=0/1" in repr(trainer)


def test_needs_an_initialised_process_group() -> None:
    with pytest.raises(RuntimeError, match=r"call torch\.distributed\.init_process_group"):
        DistributedGreedyTrainer(make_stages(2), mse)


@pytest.mark.usefixtures("world_of_one")
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"replicas": 2}, ValueError, r"replicas=2 does not divide the world size 1"),
        ({"replicas": 0}, ValueError, r"replicas must be an int >= 1, got 0"),
        ({"replicas": 1.5}, TypeError, r"replicas must be an int >= 1, got 1\.5"),
        ({"peer_timeout": 0}, ValueError, r"peer_timeout must be a finite number > 0, got 0"),
        (
            {"placement": "zigzag"},
            ValueError,
            r"unknown placement 'zigzag'; valid names: 'round_robin', 'contiguous'",
        ),
        (
            {"data": "magic"},
            ValueError,
            r"unknown data mode 'magic'; valid names: 'per_rank', 'broadcast'",
        ),
        ({"devices": ["cpu"]}, TypeError, r"takes device= \(this rank's device\), not devices="),
        ({"context_fn": 3}, TypeError, r"context_fn must be callable"),
    ],
)
def test_bad_distributed_configuration(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        DistributedGreedyTrainer(make_stages(2), mse, **kwargs)


@pytest.mark.usefixtures("world_of_one")
def test_inference_is_not_distributed() -> None:
    trainer = DistributedGreedyTrainer(make_stages(2), mse)
    with pytest.raises(NotImplementedError, match="load\\(path\\) it and call predict"):
        trainer.predict(None, None)
