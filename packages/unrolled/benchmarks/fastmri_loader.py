"""Slices per second of a ``DataLoader`` over multi-coil fastMRI files (unrolled README table).

Writes brain-like fastMRI files (16 coils, k-space 640 x 320 with the readout oversampled twice,
recon matrix 320 x 320, the embedded brain with birdcage coils) into a temporary folder, then
measures, with one torch thread per process:

* ``per item ESPIRiT``: what 0.1 did for every item of every epoch (read the slice, crop,
  ESPIRiT of that slice alone, SENSE-1), a few slices;
* ``first epoch, no cache``: the task estimating each volume's maps on first use (all slices of
  a volume batched) and storing them, then reading them;
* ``from cache``: ``--items`` slices drawn at random from the cached volumes, batch size 1 and
  ``--batch-size``, ``num_workers`` 0 and 2, timed from the first batch on (as over a long
  epoch, worker start-up left out), the configurations interleaved (round robin) ``--repeats``
  times; the median and the range of the repeats.

The load average of the machine is printed with the figures (others may share it). Usage:
``python fastmri_loader.py [--volumes 2] [--slices 8] [--batch-size 4] [--items 64]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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
) -> float:
    """Slices per second of a ``DataLoader`` over ``data`` (``items`` random slices, else all).

    ``steady``: timed from the first batch on (worker start-up left out, as over a long epoch).
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
    start = time.perf_counter()
    count, first = 0, True
    for batch in loader:
        if steady and first:  # the clock starts when the first batch is there
            start, first = time.perf_counter(), False
            continue
        count += batch.y.shape[0]
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=2)
    parser.add_argument("--slices", type=int, default=8, help="slices per volume")
    parser.add_argument("--coils", type=int, default=16)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--items", type=int, default=64, help="slices drawn per cached epoch")
    parser.add_argument("--espirit-items", type=int, default=2)
    parser.add_argument("--out", type=Path, help="also write the figures as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    figures: dict[str, object] = {"load_average_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="fastmri_loader_") as tmp:
        root = Path(tmp)
        write_files(root, args.volumes, args.slices, args.coils, args.size)
        figures["per_item_espirit"] = per_item_espirit(root, args.espirit_items, args.size)
        data = unrolled.make_dataset("multicoil_mri", "train", root=str(root), acceleration=4.0)
        figures["first_epoch_no_cache"] = epoch(data, args.batch_size, 0, steady=False)
        runs: dict[tuple[int, int], list[float]] = {
            (batch, workers): [] for batch in (1, args.batch_size) for workers in (0, 2)
        }
        for _ in range(args.repeats):
            for batch, workers in runs:  # round robin: every configuration sees the same load
                fresh = unrolled.make_dataset("multicoil_mri", "train", root=str(root))
                runs[batch, workers].append(epoch(fresh, batch, workers, args.items))
        for (batch, workers), values in runs.items():
            figures[f"from_cache_batch_{batch}_workers_{workers}"] = {
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
            }
    figures["load_average_after"] = os.getloadavg()
    figures["setup"] = vars(args) | {"out": None, "torch_threads": 1}
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
