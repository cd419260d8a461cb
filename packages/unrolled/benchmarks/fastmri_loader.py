"""Slices per second of a ``DataLoader`` over multi-coil fastMRI files (unrolled README table).

Writes brain-like fastMRI files (16 coils, k-space 640 x 320 with the readout oversampled twice,
recon matrix 320 x 320, the embedded brain with birdcage coils) into a temporary folder, then
measures, with one torch thread per process:

* ``per item ESPIRiT``: what 0.1 did for every item of every epoch (read the slice, crop,
  ESPIRiT of that slice alone, SENSE-1), a few slices;
* ``first epoch, no cache``: the task estimating each volume's maps on first use (all slices of
  a volume batched) and storing them, then reading them;
* ``from cache``: ``--items`` slices drawn at random from the cached volumes, batch size 1 and
  ``--batch-size``, ``num_workers`` 0 and 2, without and with ``THP_MEM_ALLOC_ENABLE=1``
  (torch then backs large CPU tensors with transparent huge pages: far fewer page faults when a
  batch of 16-coil slices is stacked), each configuration in a fresh process, timed from the
  first batch on (as over a long epoch, worker start-up left out), the configurations
  interleaved (round robin) ``--repeats`` times; the median and the range of the repeats, and
  slices per CPU second of all the processes (what the loader does with a core to itself).

The load average of the machine is printed with the figures (others may share it). Usage:
``python fastmri_loader.py [--volumes 2] [--slices 8] [--batch-size 4] [--items 64]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

import physops
import unrolled

HEADER = (
    '<?xml version="1.0" encoding="utf-8"?>'
    '<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"><encoding>'
    "<encodedSpace><matrixSize><x>{ex}</x><y>{n}</y><z>1</z></matrixSize></encodedSpace>"
    "<reconSpace><matrixSize><x>{n}</x><y>{n}</y><z>1</z></matrixSize></reconSpace>"
    "<encodingLimits><kspace_encoding_step_1><minimum>0</minimum><maximum>{m}</maximum>"
    "<center>{c}</center></kspace_encoding_step_1></encodingLimits></encoding></ismrmrdHeader>"
)


def write_files(folder: Path, volumes: int, slices: int, coils: int, size: int) -> None:
    import h5py

    anatomy = physops.real_anatomy_images("train", image_size=size)
    maps = physops.birdcage_maps((2 * size, size), coils)
    for v in range(volumes):
        path = folder / "train" / f"brain_{v:03d}.h5"
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(path, "w") as f:
            header = HEADER.format(ex=2 * size, n=size, m=size - 1, c=size // 2)
            f.create_dataset("ismrmrd_header", data=np.bytes_(header.encode()))
            kspace = f.create_dataset("kspace", (slices, coils, 2 * size, size), np.complex64)
            for s in range(slices):
                image = anatomy[(v * slices + s) % len(anatomy)].to(torch.complex64)
                padded = torch.nn.functional.pad(image, (0, 0, size // 2, size // 2))
                kspace[s] = physops.fftc(maps * padded).numpy()


def per_item_espirit(root: Path, items: int, size: int) -> float:
    """Slices per second of 0.1's item: read, crop, ESPIRiT of the slice, SENSE-1."""
    source = physops.FastMRISliceDataset(root / "train", "multicoil")
    calibration = round(size * 0.08)
    start = time.perf_counter()
    for index in range(items):
        kspace = source[index]["kspace"]
        images = unrolled.fastmri_center_crop(physops.ifftc(kspace), (size, size))
        full = physops.fftc(images)
        kernel = max(2, min(6, calibration // 2))  # the task's kernel for this box
        maps = physops.espirit_maps(full, calibration=calibration, kernel_size=kernel)
        physops.sense1(images, maps)
    return items / (time.perf_counter() - start)


def epoch(
    data: unrolled.TaskDataset,
    batch_size: int,
    workers: int,
    items: int | None = None,
    steady: bool = True,
) -> tuple[float, float]:
    """Slices per second of a ``DataLoader`` over ``data`` (``items`` random slices, else all).

    Returns slices per wall-clock second and per CPU second (all processes: what the loader
    would do with a core to itself). ``steady``: timed from the first batch on (worker start-up
    left out, as over a long epoch); the workers' CPU time then still includes their start-up.
    """
    generator = torch.Generator().manual_seed(0)
    sampler = RandomSampler(
        data, replacement=items is not None, num_samples=items, generator=generator
    )
    loader = DataLoader(
        data,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=data.collate,
    )
    start, cpu = time.perf_counter(), _cpu_seconds()
    count, first = 0, True
    for batch in loader:
        if steady and first:  # the clocks start when the first batch is there
            start, cpu, first = time.perf_counter(), _cpu_seconds(), False
            continue
        count += batch.y.shape[0]
    wall = time.perf_counter() - start
    del loader  # its workers exit, so that their CPU time is counted
    return count / wall, count / (_cpu_seconds() - cpu)


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its finished children (the loader's workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(root: Path, batch: int, workers: int, items: int) -> None:
    """One configuration in this (fresh) process: print its slices per second as JSON."""
    torch.set_num_threads(1)
    data = unrolled.make_dataset("multicoil_mri", "train", root=str(root))
    wall, cpu = epoch(data, batch, workers, items)
    print(json.dumps({"wall": wall, "cpu": cpu}))


def _fresh(root: Path, batch: int, workers: int, items: int, thp: bool) -> tuple[float, float]:
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if thp:
        env["THP_MEM_ALLOC_ENABLE"] = "1"
    command = [sys.executable, __file__, "--measure", str(root), "--batch-size", str(batch)]
    command += ["--workers", str(workers), "--items", str(items)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["wall"], result["cpu"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=2)
    parser.add_argument("--slices", type=int, default=8, help="slices per volume")
    parser.add_argument("--coils", type=int, default=16)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--items", type=int, default=64, help="slices drawn per cached epoch")
    parser.add_argument("--espirit-items", type=int, default=2, help="0: leave it out")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure is not None:
        measure(args.measure, args.batch_size, args.workers, args.items)
        return
    torch.set_num_threads(1)
    figures: dict[str, object] = {"load_average_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="fastmri_loader_") as tmp:
        root = Path(tmp)
        write_files(root, args.volumes, args.slices, args.coils, args.size)
        if args.espirit_items:
            figures["per_item_espirit"] = per_item_espirit(root, args.espirit_items, args.size)
        data = unrolled.make_dataset("multicoil_mri", "train", root=str(root), acceleration=4.0)
        figures["first_epoch_no_cache"] = epoch(data, args.batch_size, 0, steady=False)[0]
        configs = [
            (thp, batch, workers)
            for thp in (False, True)
            for batch in (1, args.batch_size)
            for workers in (0, 2)
        ]
        runs: dict[tuple[bool, int, int], list[tuple[float, float]]] = {c: [] for c in configs}
        for _ in range(args.repeats):
            for thp, batch, workers in configs:  # round robin: each sees the same load
                runs[thp, batch, workers].append(_fresh(root, batch, workers, args.items, thp))
        for (thp, batch, workers), values in runs.items():
            walls, cpus = [v[0] for v in values], [v[1] for v in values]
            name = f"from_cache_batch_{batch}_workers_{workers}" + ("_thp" if thp else "")
            figures[name] = {
                "median": statistics.median(walls),
                "min": min(walls),
                "max": max(walls),
                "per_cpu_second": statistics.median(cpus),
            }
    figures["load_average_after"] = os.getloadavg()
    figures["setup"] = vars(args) | {"out": None, "measure": None, "torch_threads": 1}
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
