"""``memroll train``, ``eval``, ``train --resume`` and ``recon`` on one run, as a user chains
them; a training killed with SIGKILL resumes to exactly the run that was never stopped."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from memroll_helpers import memroll, memroll_command, tiny, write_fastmri

h5py = pytest.importorskip("h5py")


def _steps(run: Path) -> list[int]:
    with open(run / "log.csv", newline="") as handle:
        return [int(row["step"]) for row in csv.DictReader(handle)]


@pytest.mark.parametrize(
    ("name", "challenge"), [("gleam_modl_2d", "multicoil"), ("irim_2d", "singlecoil")]
)
def test_train_eval_resume_recon(name, challenge, tmp_path):
    run = tmp_path / "run"
    memroll("train", name, *tiny(name), "--run-dir", run, "--no-progress")

    shown = memroll("eval", run, "--split", "val").stdout
    assert "mean (std)" in shown
    report = json.loads((run / "metrics_val.json").read_text())
    assert report["split"] == "val"
    assert len(report["per_sample"]) == report["samples"] == 1
    assert (run / "recon_val.png").is_file()

    memroll("train", "--resume", run, "--set", "train.steps=4", "--no-progress")
    result = json.loads((run / "train_result.json").read_text())
    assert (result["steps"], result["resumed_from"]) == (4, 2)
    assert _steps(run) == [1, 2, 3, 4]

    source, output = tmp_path / "scan.h5", tmp_path / "scan_recon.h5"
    write_fastmri(source, challenge, slices=3)
    said = memroll("recon", run, source, output, "--no-progress").stdout
    assert "reconstructed 3 slices of scan.h5" in said
    with h5py.File(output, "r") as f:
        recon = np.asarray(f["reconstruction"])
        assert f.attrs["memroll_config"] == name
        assert bool(f.attrs["retrospective_undersampling"])
    assert recon.shape == (3, 16, 16)
    assert recon.dtype == np.float32
    assert np.isfinite(recon).all()


def test_recon_of_a_file_with_its_own_mask(tmp_path):
    """fastMRI's test files are undersampled already (a ``mask``, no target): recon keeps the
    file's sampling."""
    run = tmp_path / "run"
    memroll("train", "gleam_modl_2d", *tiny("gleam_modl_2d"), "--run-dir", run, "--no-eval")
    source, output = tmp_path / "test_file.h5", tmp_path / "out.h5"
    write_fastmri(source, "multicoil", mask=True)
    said = memroll("recon", run, source, output, "--image-size", "16").stdout
    assert "with the file's own mask" in said
    with h5py.File(output, "r") as f:
        assert f["reconstruction"].shape == (2, 16, 16)
        assert not bool(f.attrs["retrospective_undersampling"])


def test_recon_refuses_a_file_of_the_other_challenge(tmp_path):
    run = tmp_path / "run"
    memroll("train", "gleam_modl_2d", *tiny("gleam_modl_2d"), "--run-dir", run, "--no-eval")
    source = tmp_path / "single.h5"
    write_fastmri(source, "singlecoil")
    done = memroll("recon", run, source, tmp_path / "out.h5", expect=2)
    assert "challenge='multicoil' expects 4 dims" in done.stderr


# --------------------------------------------------------------------------------------------
# a killed training
# --------------------------------------------------------------------------------------------
KILL = ("train.steps=60", "train.checkpoint_every=5", "train.val_every=10", "train.log_every=1")


def _rows(path: Path) -> int:
    try:
        return max(0, path.read_bytes().count(b"\n") - 1)
    except OSError:
        return 0


def test_killed_training_resumes_to_the_uninterrupted_run(tmp_path):
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    args = ["train", "demo", *tiny("demo", *KILL), "--no-progress", "--no-eval"]
    process = subprocess.Popen(
        [*memroll_command(), "--threads", "1", *args, "--run-dir", str(killed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    try:
        # kill it past its first checkpoint (step 5), between two checkpoints
        while _rows(killed / "log.csv") < 7 and process.poll() is None:
            if time.monotonic() > deadline:
                pytest.fail("the training did not reach step 7 in 240 s")
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    stopped = torch.load(killed / "checkpoint.pt", weights_only=True)["step"]
    assert 5 <= stopped < 60

    memroll("train", "--resume", killed, "--no-progress", "--no-eval")
    memroll(*args, "--run-dir", whole)

    a = torch.load(killed / "checkpoint.pt", weights_only=True)
    b = torch.load(whole / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 60
    for key in b["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert [r["loss"] for r in a["history"]] == [r["loss"] for r in b["history"]]
    assert a["best"] == b["best"]
    best_a = torch.load(killed / "best.pt", weights_only=True)["model"]
    best_b = torch.load(whole / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_b)
    assert _steps(killed) == list(range(1, 61))
