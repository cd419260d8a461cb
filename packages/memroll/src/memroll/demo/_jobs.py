"""The demo's training processes: one ``memroll train`` per strategy, a few at a time."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["LAUNCH_ORDER", "PROBE_STEPS", "Job", "logged_steps", "probe_overrides", "run_jobs"]

# longest first, so that with two jobs the pairs finish together (measured step times:
# checkpoint and reversible about 1.5x backprop and greedy)
LAUNCH_ORDER = ("checkpoint", "reversible", "backprop", "greedy")
# the steps of a memory probe: the peak is reached in the first step (activations, gradients and
# Adam's state all alive), and the third runs a validation
PROBE_STEPS = 3


def probe_overrides(steps: int) -> tuple[str, ...]:
    """``--set`` values that make a run of ``steps`` steps validate and checkpoint at its end."""
    keys = ("train.steps", "train.val_every", "train.checkpoint_every")
    return tuple(f"{key}={steps}" for key in keys)


@dataclass
class Job:
    """One ``memroll train`` process of the demo."""

    strategy: str
    run_dir: Path
    steps: int
    overrides: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    label: str = "train"

    def command(self, config_file: Path, device: str) -> list[str]:
        """Return the command line of this job (``python -m memroll train ...``, one thread)."""
        sets = [arg for value in self.overrides for arg in ("--set", value)]
        return [
            sys.executable,
            "-m",
            "memroll",
            "--threads",
            "1",
            "train",
            str(config_file),
            "--strategy",
            self.strategy,
            *sets,
            "--run-dir",
            str(self.run_dir),
            "--device",
            device,
            "--no-eval",
            "--no-progress",
        ]


def logged_steps(log: Path) -> int:
    """Complete rows of a run's ``log.csv`` (its header excluded) while the run writes it."""
    try:
        return max(0, log.read_bytes().count(b"\n") - 1)
    except OSError:
        return 0


Running = dict[Path, tuple[Job, "subprocess.Popen[bytes]", Any, float]]


def _start(job: Job, config_file: Path, device: str, running: Running) -> None:
    job.run_dir.mkdir(parents=True)
    out = open(job.run_dir / "train.out", "wb")  # noqa: SIM115 - closed when the job ends
    process = subprocess.Popen(
        job.command(config_file, device),
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, **job.env},
    )
    running[job.run_dir] = (job, process, out, time.perf_counter())


def _reap(running: Running, progress: dict[Path, int], walls: dict[Path, float]) -> None:
    """Record progress, and close the jobs that ended (raising when one failed)."""
    for key, (job, process, out, started) in list(running.items()):
        progress[key] = logged_steps(key / "log.csv")
        status = process.poll()
        if status is None:
            continue
        out.close()
        del running[key]
        walls[key] = time.perf_counter() - started
        if status != 0:
            tail = (key / "train.out").read_text(errors="replace")[-2000:]
            raise RuntimeError(
                f"{job.label} run of strategy {job.strategy!r} failed (exit status "
                f"{status}); the end of {key / 'train.out'}:\n{tail}"
            )


def run_jobs(jobs: list[Job], config_file: Path, device: str, workers: int) -> dict[Path, float]:
    """Run ``jobs`` in order, at most ``workers`` at a time.

    Each job is a fresh process with one thread writing its messages to ``<run_dir>/train.out``,
    all under one progress bar; returns each job's wall time by run folder. A failed job raises
    ``RuntimeError`` with the end of its output (the others are stopped).
    """
    from tqdm.auto import tqdm

    pending = list(jobs)
    running: Running = {}
    walls: dict[Path, float] = {}
    progress = {job.run_dir: 0 for job in jobs}
    bar = tqdm(total=sum(job.steps for job in jobs), desc="training", unit="step")
    last = ""
    try:
        while pending or running:
            while pending and len(running) < workers:
                _start(pending.pop(0), config_file, device, running)
            time.sleep(0.25)
            _reap(running, progress, walls)
            shown = ", ".join(
                f"{job.strategy} {job.label} {progress[k]}/{job.steps}"
                for k, (job, *_) in running.items()
            )
            if bar.n != sum(progress.values()) or shown != last:
                bar.n, last = sum(progress.values()), shown
                bar.set_postfix_str(shown, refresh=False)
                bar.refresh()
    finally:
        for _, process, out, _ in running.values():
            process.kill()
            process.wait()
            out.close()
        bar.close()
    return walls
