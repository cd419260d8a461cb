"""Checkpoints: atomic writes, and a killed run resumes bit-identically."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _greedy_helpers import flat_parameters, make_batch, make_stages, mse

import greedytrain._checkpoint as checkpoint_module
from greedytrain import GreedyTrainer, atomic_save

HELPERS = str(Path(__file__).parent)


def _command(checkpoint: Path, out: Path, total: int, mode: str) -> list[str]:
    code = (
        f"import sys; sys.path.insert(0, {HELPERS!r}); from _greedy_helpers import resume_main; "
        f"resume_main({str(checkpoint)!r}, {str(out)!r}, {total}, {mode!r})"
    )
    return [sys.executable, "-c", code]


@pytest.mark.slow
def test_killed_run_resumes_bit_identically(tmp_path: Path) -> None:
    total = 6
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        _command(tmp_path / "a.pt", tmp_path / "a.out", total, "fresh"),
        check=True,
        timeout=120,
        env=env,
    )
    victim = subprocess.Popen(
        _command(tmp_path / "b.pt", tmp_path / "b.out", total, "victim"),
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert victim.stdout is not None
        for line in victim.stdout:
            if line.strip() == "saved 3":
                victim.send_signal(signal.SIGKILL)
                break
    finally:
        victim.kill()
        victim.wait(30)
        if victim.stdout is not None:
            victim.stdout.close()
    assert victim.returncode == -signal.SIGKILL
    assert not (tmp_path / "b.out").exists()  # it really died before finishing
    subprocess.run(
        _command(tmp_path / "b.pt", tmp_path / "b.out", total, "resume"),
        check=True,
        timeout=120,
        env=env,
    )
    straight, resumed = torch.load(tmp_path / "a.out"), torch.load(tmp_path / "b.out")
    assert torch.equal(straight["params"], resumed["params"])
    assert resumed["history"] == straight["history"]
    assert sorted(resumed["history"]) == list(range(total))


def test_state_dict_round_trip_continues_identically(tmp_path: Path) -> None:
    schedule = lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.9)  # noqa: E731
    a = GreedyTrainer(make_stages(4), mse, modules=2, scheduler_factory=schedule)
    a.train_step(*make_batch(seed=1))
    a.save(tmp_path / "ckpt.pt", extra={"epoch": 7})
    b = GreedyTrainer(copy.deepcopy(list(a.stages)), mse, modules=2, scheduler_factory=schedule)
    b.train_step(*make_batch(seed=5))  # diverge first: load must overwrite everything
    assert b.load(tmp_path / "ckpt.pt") == {"epoch": 7}
    assert b.step == 1
    for trainer in (a, b):
        torch.manual_seed(3)
        trainer.train_step(*make_batch(seed=2))
    assert torch.equal(flat_parameters(a.stages), flat_parameters(b.stages))
    assert [o.param_groups[0]["lr"] for o in a.optimizers] == [
        o.param_groups[0]["lr"] for o in b.optimizers
    ]


def test_a_crash_while_saving_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ckpt.pt"
    atomic_save({"version": "old"}, path)

    def torn_save(obj: object, handle) -> None:
        handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        GreedyTrainer(make_stages(2), mse).save(path)
    monkeypatch.undo()
    assert torch.load(path) == {"version": "old"}
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # no temporary file left behind


def test_rng_state_is_restored(tmp_path: Path) -> None:
    trainer = GreedyTrainer(make_stages(2), mse)
    trainer.save(tmp_path / "ckpt.pt")
    expected = torch.rand(3)
    torch.rand(5)
    trainer.load(tmp_path / "ckpt.pt")
    assert torch.equal(torch.rand(3), expected)


def test_loading_into_a_different_split_is_refused(tmp_path: Path) -> None:
    GreedyTrainer(make_stages(4), mse, modules=2).save(tmp_path / "ckpt.pt")
    other = GreedyTrainer(make_stages(4), mse, modules=4)
    with pytest.raises(
        ValueError, match=r"holds 2 modules of sizes \[2, 2\], but this trainer has 4"
    ):
        other.load(tmp_path / "ckpt.pt")


def test_a_foreign_file_is_refused(tmp_path: Path) -> None:
    torch.save({"model": 1}, tmp_path / "weights.pt")
    with pytest.raises(ValueError, match="is not a greedytrain checkpoint"):
        GreedyTrainer(make_stages(2), mse).load(tmp_path / "weights.pt")
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        GreedyTrainer(make_stages(2), mse).load(tmp_path / "missing.pt")
