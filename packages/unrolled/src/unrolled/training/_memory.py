"""Peak-memory and timing probes used by training runs and benchmarks.

CPU: the peak resident set size of this process (``VmHWM``), after resetting it by writing ``5``
to ``/proc/self/clear_refs`` (Linux). Set ``MALLOC_MMAP_THRESHOLD_=65536`` in the environment of
a measured process so freed tensors leave the RSS; measure in a fresh process per configuration,
since a process inherits nothing of its parent's peak only when it resets its own.
CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

__all__ = ["MemoryProbe", "median", "timed"]


def _read_status(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclass
class MemoryProbe:
    """Measures peak memory from :meth:`reset` to :meth:`peak` on one device.

    ``peak()`` returns bytes: the process's peak RSS on CPU (``None`` where ``/proc`` is
    missing), ``torch.cuda.max_memory_allocated`` on CUDA.
    """

    device: torch.device

    @property
    def kind(self) -> str:
        return "cuda_max_allocated" if self.device.type == "cuda" else "cpu_peak_rss"

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass

    def peak(self) -> int | None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device))
        return _read_status("VmHWM")

    def current(self) -> int | None:
        if self.device.type == "cuda":
            return int(torch.cuda.memory_allocated(self.device))
        return _read_status("VmRSS")


def median(values: list[float]) -> float:
    """Median of a non-empty list (``nan`` when empty)."""
    if not values:
        return float("nan")
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else 0.5 * (s[mid - 1] + s[mid])


@contextmanager
def timed(device: torch.device, out: list[float]) -> Iterator[None]:
    """Append the wall time of the block to ``out`` (synchronising CUDA around it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    out.append(time.perf_counter() - start)
