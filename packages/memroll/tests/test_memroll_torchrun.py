"""``memroll train`` under torchrun: P-GLEAM over two gloo processes equals one process, the
modules over two devices of one process too, and rank 0 alone writes the run folder."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.distributed

SETS = [
    "task.image_size=16",
    "task.num_coils=4",
    "model.iterations=2",
    "model.features=4",
    "model.couplings=2",
    "train.steps=3",
    "train.batch_size=2",
    "train.val_samples=2",
]


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _memroll(run_dir: Path, *extra: str, processes: int = 1) -> subprocess.CompletedProcess:
    args = ["--threads", "1", "train", "demo", "--strategy", "greedy", "--run-dir", str(run_dir)]
    args += [a for s in SETS for a in ("--set", s)] + ["--no-eval", "--no-progress", *extra]
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", f"--nproc-per-node={processes}"]
        launcher += [f"--master-port={_port()}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [*launcher, "-m", "memroll", *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def _weights(run_dir: Path) -> torch.Tensor:
    model = torch.load(run_dir / "checkpoint.pt", weights_only=False)["model"]
    return torch.cat([v.flatten().double() for v in model.values() if v.is_floating_point()])


def test_greedy_on_two_processes_and_two_devices_equals_one(tmp_path: Path) -> None:
    _memroll(tmp_path / "one")
    done = _memroll(tmp_path / "ranks", processes=2)
    _memroll(tmp_path / "devices", "--set", 'strategy.greedy.devices=["cpu", "cpu"]')
    reference = _weights(tmp_path / "one")
    for run in ("ranks", "devices"):
        error = float((_weights(tmp_path / run) - reference).norm() / reference.norm())
        assert error < 1e-6, run
    summary = json.loads((tmp_path / "ranks" / "train_result.json").read_text())
    assert (summary["world_size"], summary["backend"]) == (2, "gloo")
    assert done.stdout.count("training demo:") == 1  # rank 0 alone prints ...
    names = sorted(p.name for p in (tmp_path / "ranks").iterdir())  # ... and writes
    assert names == sorted(p.name for p in (tmp_path / "one").iterdir())
