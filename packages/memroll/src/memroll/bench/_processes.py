"""The benchmark's measured processes: one per configuration, or one per table.

On CPU every configuration runs in a fresh process: the peak resident set size (``VmHWM``) is a
property of the process, and memory freed by one configuration stays resident for the next (a
fresh process per configuration is the only clean measurement). On CUDA,
``torch.cuda.max_memory_allocated`` after ``torch.cuda.reset_peak_memory_stats`` is exact
within one process, while starting a process costs 10 to 20 s (CUDA context, data): there the
configurations of a table run in one process (:func:`memroll.bench.worker.run_many`), which
resets the peak statistics and empties the cache between them.

:func:`groups` chooses the processes, :func:`run_group` runs one and collects its results. A
process that dies (a crash, a kill for memory) loses only the configuration it was measuring:
that one is reported failed with the process's last error line, and the rest of its group runs
in a new process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

from ._specs import Job

__all__ = ["ISOLATIONS", "describe", "groups", "run_group"]

#: ``config``: a fresh process per configuration; ``table``: one process per table
ISOLATIONS = ("auto", "config", "table")


def groups(jobs: Sequence[Job], isolation: str) -> list[list[Job]]:
    """Return the jobs of each process: one job each (``config``) or one table each (``table``)."""
    if isolation == "config":
        return [[job] for job in jobs]
    if isolation != "table":
        raise ValueError(f"isolation must be 'config' or 'table', got {isolation!r}")
    out: dict[str, list[Job]] = {}
    for job in jobs:
        out.setdefault(job.table, []).append(job)
    return list(out.values())


def describe(job: Job) -> str:
    """One progress line: the job's labels and its headline figures (or its error)."""
    labels = ", ".join(f"{k}={v}" for k, v in job.labels.items())
    r = job.result
    if not job.ok:
        return f"[table {job.table}] {labels}: FAILED {r['error']}"
    parts = []
    if r.get("step_mb") is not None:
        parts.append(f"{r['step_mb']:.1f} MB")
    if r.get("time_s") is not None:
        parts.append(f"{r['time_s']:.3g} s/step")
    if "test" in r:
        parts.append(f"PSNR {r['test']['psnr']['mean']:.2f} dB")
    if "training" in r:
        parts.append(f"{r['training']['steps']} steps ({r['training']['stopped']})")
    return f"[table {job.table}] {labels}: {', '.join(parts)} ({r.get('process_s', 0):.0f} s)"


def _last_error(stderr: str, code: int) -> str:
    tail = [line for line in stderr.strip().splitlines() if line.strip()]
    return tail[-1][:300] if tail else f"the worker process exited with code {code}"


def _attempt(jobs: list[Job], env: dict[str, str], emit: Callable[[Job], None]) -> str:
    """Run ``jobs`` in one worker process; fill in the results it printed.

    Returns the process's last error line when it ended before every job had a result.
    """
    last = time.perf_counter()
    with (
        tempfile.TemporaryFile("w+") as errors,
        subprocess.Popen(
            [sys.executable, "-m", "memroll.bench.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            env=env,
        ) as proc,
    ):
        if proc.stdin is None or proc.stdout is None:  # both are pipes; this narrows the types
            raise RuntimeError("the worker process has no standard input or output pipe")
        proc.stdin.write(json.dumps([job.spec for job in jobs]))
        proc.stdin.close()
        for line in proc.stdout:
            try:
                result = json.loads(line)
            except json.JSONDecodeError:
                continue  # something else wrote to standard output
            if not isinstance(result, dict) or not isinstance(result.get("index"), int):
                continue
            job = jobs[result.pop("index")]
            now = time.perf_counter()
            result["process_s"] = now - last  # the first includes the process's start
            last = now
            job.result = result
            emit(job)
        code = proc.wait()
        errors.seek(0)
        message = _last_error(errors.read(), code)
    return "" if all(job.result for job in jobs) else message


def run_group(jobs: list[Job], env: dict[str, str], emit: Callable[[Job], None]) -> None:
    """Measure ``jobs`` in one worker process (more if a process dies; see the module docstring).

    ``emit`` is called with each job as its result arrives.
    """
    pending = list(jobs)
    while pending:
        start = time.perf_counter()
        message = _attempt(pending, env, emit)
        rest = [job for job in pending if not job.result]
        if not rest:
            return
        # the first job without a result is the one the process died on
        rest[0].result = {
            "error": f"the worker process ended while measuring this: {message}",
            "process_s": time.perf_counter() - start,
        }
        emit(rest[0])
        pending = rest[1:]
