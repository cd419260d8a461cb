"""Runs killed with SIGKILL resume bit-identically, and the run files survive damage.

A greedy, a reversible and a checkpoint run of a tiny config are each killed at 5 random steps
(seeded; the steps, the delay after each and the checkpoint each resume read are recorded in the
test's properties) and resumed after every kill; the final weights (bitwise), the best model,
the losses and the logs equal those of a run that never stopped. Then the newest checkpoint is
damaged and resume falls back to the previous one and says so; a damaged ``best.pt`` makes
``eval`` fall back to the checkpoint's weights and say so.
"""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from memroll_helpers import memroll, memroll_command, tiny

SEED = 2026
STEPS = 14
KILLS = 5
SETS = (
    f"train.steps={STEPS}",
    "train.checkpoint_every=2",
    "train.val_every=4",
    "train.log_every=1",
    "train.val_samples=2",
)
STRATEGIES = ("greedy", "reversible", "checkpoint")


def _args(strategy: str, run: Path) -> list[str]:
    return [
        "train", "demo", *tiny("demo", *SETS), "--strategy", strategy, "--run-dir", str(run),
        "--no-progress", "--no-eval",
    ]  # fmt: skip


def _log(run: Path) -> tuple[int | None, int]:
    """The log's inode (None: no log yet) and its number of rows."""
    try:
        with open(run / "log.csv", "rb") as handle:
            return os.fstat(handle.fileno()).st_ino, max(0, handle.read().count(b"\n") - 1)
    except OSError:
        return None, 0


def _kill_at(command: list[str], run: Path, step: int, delay: float) -> None:
    """Start ``command``, and SIGKILL it ``delay`` s after its log reaches ``step`` rows."""
    before, _ = _log(run)  # a resumed run rewrites the log (a new inode) before it goes on
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    try:
        while process.poll() is None:
            inode, rows = _log(run)
            if (inode != before or before is None) and inode is not None and rows >= step:
                time.sleep(delay)
                process.send_signal(signal.SIGKILL)
                break
            if time.monotonic() > deadline:
                pytest.fail(f"{' '.join(command)} did not reach step {step} in 300 s")
            time.sleep(0.002)
    finally:
        process.wait()
        assert process.stderr is not None
        stderr = process.stderr.read().decode()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL, f"ended before the kill at {step}: {stderr}"


def _resume_step(run: Path) -> int:
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        try:
            return int(torch.load(run / name, weights_only=True)["step"])
        except Exception:  # a checkpoint the kill tore: the other one counts
            continue
    return 0


def _killed_run(strategy: str, root: Path) -> tuple[Path, list[dict[str, float]]]:
    """Kill the run at 5 seeded random steps, resume it after each; return its folder and the
    record of every kill."""
    rng = random.Random(f"{SEED}-{strategy}")
    steps = sorted(rng.sample(range(3, STEPS), KILLS))
    run = root / f"{strategy}-killed"
    new = [*memroll_command(), "--threads", "1", *_args(strategy, run)]
    resume = [*memroll_command(), "--threads", "1", "train", "--resume", str(run), "--no-progress",
              "--no-eval"]  # fmt: skip
    record = []
    for i, step in enumerate(steps):
        delay = round(rng.uniform(0.0, 0.3), 3)
        _kill_at(new if i == 0 else resume, run, step, delay)
        resumes_from = _resume_step(run)
        record.append({"kill_after_step": step, "delay_s": delay, "resumes_from": resumes_from})
    memroll("train", "--resume", run, "--no-progress", "--no-eval")
    return run, record


def _straight_run(strategy: str, root: Path) -> Path:
    run = root / f"{strategy}-straight"
    memroll(*_args(strategy, run))
    return run


def _rows(path: Path, drop: tuple[str, ...] = ()) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(handle)]


@pytest.mark.slow
def test_runs_killed_at_random_steps_resume_bit_identically(tmp_path, record_property):
    with ThreadPoolExecutor(max_workers=len(STRATEGIES) * 2) as pool:
        killed = {s: pool.submit(_killed_run, s, tmp_path) for s in STRATEGIES}
        straight = {s: pool.submit(_straight_run, s, tmp_path) for s in STRATEGIES}
        results = {s: (killed[s].result(), straight[s].result()) for s in STRATEGIES}
    for strategy, ((run, record), whole) in results.items():
        record_property(f"kills_{strategy}", record)
        print(strategy, record)  # the seeded kills, in the test's output (-s)
        a = torch.load(run / "checkpoint.pt", weights_only=True)
        b = torch.load(whole / "checkpoint.pt", weights_only=True)
        assert a["step"] == b["step"] == STEPS
        assert a["model"].keys() == b["model"].keys()
        for key in b["model"]:
            assert torch.equal(a["model"][key], b["model"][key]), (strategy, key)
        assert [r["loss"] for r in a["history"]] == [r["loss"] for r in b["history"]]
        assert a["val_history"] == b["val_history"]
        best_a = torch.load(run / "best.pt", weights_only=True)["model"]
        best_b = torch.load(whole / "best.pt", weights_only=True)["model"]
        assert all(torch.equal(best_a[k], best_b[k]) for k in best_b), strategy
        assert _rows(run / "log.csv", ("time_s",)) == _rows(whole / "log.csv", ("time_s",))
        assert _rows(run / "val.csv") == _rows(whole / "val.csv")
        assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
        resumes = (run / "events.log").read_text().splitlines()
        assert len(resumes) == KILLS
        assert [int(r["resumes_from"]) for r in record] == [
            int(line.split("resumed at step ")[1].split()[0]) for line in resumes
        ]


@pytest.mark.slow
def test_resume_and_eval_fall_back_and_say_so(tmp_path):
    run = tmp_path / "run"
    memroll("train", "demo", *tiny("demo", "train.steps=4", "train.checkpoint_every=2"),
            "--run-dir", run, "--no-progress", "--no-eval")  # fmt: skip
    newest = run / "checkpoint.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 3])
    done = memroll("train", "--resume", run, "--set", "train.steps=6", "--no-progress", "--no-eval")
    said = [line for line in done.stderr.splitlines() if line.startswith("memroll:")]
    assert said == [
        "memroll: checkpoint.pt is truncated or corrupt: its zip archive ends early (the write "
        "that made it was cut short): resuming from checkpoint.prev.pt (step 2) instead"
    ]
    assert (
        "resumed at step 2 from checkpoint.prev.pt (checkpoint.pt is truncated"
        in (run / "events.log").read_text()
    )
    header = (run / "config.toml").read_text().split("\n\n")[0]
    assert header.startswith("# the configuration of this run, as trained (from")
    assert "# resumed " in header
    assert "at step 2 from checkpoint.prev.pt, checkpoint.pt is truncated" in header
    assert f"memroll train --resume {run} --set train.steps=6" in header

    (run / "best.pt").write_bytes(os.urandom(2000))
    done = memroll("eval", run)
    assert "weights checkpoint.pt (step 6)" in done.stdout
    assert [line for line in done.stderr.splitlines() if line.startswith("memroll:")] == [
        "memroll: best.pt is truncated or corrupt (torch.load: UnpicklingError: Weights only "
        "load failed): using checkpoint.pt (step 6)"
    ]
    assert "eval: best.pt is truncated or corrupt" in (run / "events.log").read_text()
