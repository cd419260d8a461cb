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
    failing_worker,
    free_port,
    gleam_worker,
    make_stages,
    mismatch_worker,
    mse,
    problem,
    run_ranks,
    stages_for,
)

from greedytrain import GreedyTrainer
from greedytrain.distributed import DistributedGreedyTrainer


def _single_process(config: dict) -> tuple[GreedyTrainer, list[list[float]]]:
    stages = stages_for(config["kind"], config["stages"])
    trainer = GreedyTrainer(stages, mse, modules=config["modules"])
    losses = [
        trainer.train_step(*problem(config["kind"], config["batch"], 100 + step))
        for step in range(config["steps"])
    ]
    return trainer, losses


CONFIGS = [
    pytest.param(
        2, {"kind": "pgd", "stages": 4, "modules": 4, "batch": 2}, id="2 ranks, round robin"
    ),
    pytest.param(
        2,
        {
            "kind": "complex",
            "stages": 4,
            "modules": 4,
            "batch": 2,
            "placement": "contiguous",
            "data": "broadcast",
        },
        id="2 ranks, contiguous, broadcast, complex state",
    ),
    # four processes on a 2-core machine take ~20 s to start and finish: marked slow
    pytest.param(
        4,
        {"kind": "pgd", "stages": 4, "modules": 4, "batch": 2},
        marks=pytest.mark.slow,
        id="4 ranks, 4 positions",
    ),
    pytest.param(
        4,
        {"kind": "pgd", "stages": 4, "modules": 4, "batch": 4, "replicas": 2},
        marks=pytest.mark.slow,
        id="4 ranks, 2 positions x 2 replicas",
    ),
]


@pytest.mark.distributed
@pytest.mark.parametrize(("world", "config"), CONFIGS)
def test_parameters_equal_single_process_gleam(world: int, config: dict, tmp_path: Path) -> None:
    config = {**config, "steps": 3}
    failures = run_ranks(gleam_worker, world, (str(tmp_path), config), tmp_path)
    assert not failures, failures
    reference, ref_losses = _single_process(config)
    seen = set()
    for rank in range(world):
        result = torch.load(tmp_path / f"result{rank}.pt")
        torch.testing.assert_close(
            torch.tensor(result["losses"]), torch.tensor(ref_losses), rtol=1e-6, atol=1e-9
        )
        for m, params in result["params"].items():
            seen.add(m)
            for got, want in zip(params, reference.runners[m].parameters()):
                torch.testing.assert_close(got, want.detach(), rtol=0, atol=1e-6)
    assert seen == set(range(config["modules"]))
    # the job's checkpoint loads into a single-process trainer (shared format)
    resumed = GreedyTrainer(
        stages_for(config["kind"], config["stages"]), mse, modules=config["modules"]
    )
    assert resumed.load(tmp_path / "checkpoint.pt", restore_rng=False) == {"steps": 3}
    assert resumed.step == 3
    for a, b in zip(resumed.runners.parameters(), reference.runners.parameters()):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=1e-6)


@pytest.mark.distributed
def test_a_failing_rank_stops_the_job_and_is_named(tmp_path: Path) -> None:
    failures = run_ranks(failing_worker, 2, (str(tmp_path),), tmp_path, timeout=120)
    assert not failures, failures
    own = (tmp_path / "error1.txt").read_text()
    peer = (tmp_path / "error0.txt").read_text()
    assert own.startswith("rank 1 (pipeline position 1, replica 0, modules [1, 3]) failed")
    assert "step 1" in own
    assert "simulated failure" in own
    assert peer.startswith("rank 0 ")
    assert "rank 1 (pipeline position 1" in peer


@pytest.mark.distributed
def test_ranks_configured_differently_are_named(tmp_path: Path) -> None:
    run_ranks(mismatch_worker, 2, (str(tmp_path),), tmp_path, timeout=120)
    for rank in range(2):
        assert (
            "every rank must build the trainer with the same arguments"
            in (tmp_path / f"error{rank}.txt").read_text()
        )
    assert "rank 1 was configured with" in (tmp_path / "error0.txt").read_text()


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
