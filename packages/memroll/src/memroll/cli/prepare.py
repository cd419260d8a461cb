"""``memroll prepare DIR``: estimate the coil maps of multi-coil fastMRI files once, ahead.

Every volume's maps (all its slices batched; ``--device cuda`` runs ESPIRiT on the GPU) go into
the coil-map cache that training, ``memroll eval`` and ``memroll recon`` read: ``.coil_maps/``
beside each file, or ``--cache DIR``. An entry is recomputed only when its file changes (name,
size, modification time). Give the task options the training uses (``--image-size``,
``--acceleration``, ``--center-fraction``, ``--calibration``), so that it finds the entries.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import unrolled

from .._console import CommandError, check_device, input_errors, say

__all__ = ["register_parser"]


def register_parser(subparsers: Any) -> None:
    """Add ``prepare`` to the ``memroll`` subcommands."""
    p = subparsers.add_parser(
        "prepare",
        help="estimate the coil maps of fastMRI files once (a cache the training reads)",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    p.add_argument("root", metavar="DIR", help="a fastMRI folder (searched recursively) or file")
    p.add_argument("--cache", metavar="DIR", help="the cache folder (default: beside each file)")
    p.add_argument(
        "--method",
        choices=unrolled.tasks.MAP_METHODS,
        default="espirit",
        help="torch ESPIRiT (batched, any device; default), sigpy's ESPIRiT or JSENSE (CPU)",
    )
    p.add_argument("--device", default="cpu", help="where torch ESPIRiT runs (cpu, cuda, ...)")
    p.add_argument("--image-size", type=int, help="the task's image_size (default: recon matrix)")
    p.add_argument("--acceleration", type=float, default=4.0, help="the task's (default 4)")
    p.add_argument("--center-fraction", type=float, help="the task's (default from R)")
    p.add_argument(
        "--calibration", type=int, help="ESPIRiT's box (default: the fully sampled centre)"
    )
    p.add_argument("--slices-per-batch", type=int, help="default: what fits in memory")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Fill the cache (:func:`unrolled.prepare_coil_maps`) and say what was done."""
    check_device(args.device)
    if not Path(args.root).exists():
        raise CommandError(f"{args.root!r} does not exist: pass a fastMRI .h5 file or folder")
    with input_errors():  # the user's options, before any work
        unrolled.tasks.MapSettings(
            method=args.method, image_size=args.image_size, calibration=args.calibration
        )
    start = time.perf_counter()
    done = unrolled.prepare_coil_maps(
        args.root,
        args.cache,
        method=args.method,
        device=args.device,
        image_size=args.image_size,
        calibration=args.calibration,
        acceleration=args.acceleration,
        center_fraction=args.center_fraction,
        slices_per_batch=args.slices_per_batch,
        progress=not args.no_progress,
    )
    computed = [v for v in done if v.computed]
    slices = sum(v.slices for v in computed)
    seconds = sum(v.seconds for v in computed)
    per_slice = f", {seconds / slices:.2f} s per slice" if slices else ""
    say(
        f"coil maps of {len(done)} volumes ({sum(v.slices for v in done)} slices, "
        f"{args.method} on {args.device}): {len(computed)} computed in {seconds:.1f} s"
        f"{per_slice}, {len(done) - len(computed)} already up to date"
    )
    folders = sorted({str(v.entry.parent) for v in done})
    say(f"cache: {folders[0]}" + (f" (and {len(folders) - 1} more)" if len(folders) > 1 else ""))
    say(f"(prepare took {time.perf_counter() - start:.1f} s)")
    return 0
