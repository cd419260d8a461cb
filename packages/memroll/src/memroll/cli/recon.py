"""``memroll recon RUN_DIR INPUT... OUTPUT``: reconstruct fastMRI-format files.

One file into ``OUTPUT.h5``, or several files and folders into the folder ``OUTPUT`` (one file
per input, named as the input): fastMRI's submission layout, ``reconstruction`` float32
``(slices, h, w)`` at the header's reconstruction matrix. ``--evaluate`` scores the files that
carry ``reconstruction_rss`` with fastMRI's metrics.
"""

from __future__ import annotations

import argparse
from typing import Any

from .._console import CommandError
from ..runs import reconstruct_files

__all__ = ["register_parser"]


def register_parser(subparsers: Any) -> None:
    """Add ``recon`` to the ``memroll`` subcommands."""
    p = subparsers.add_parser(
        "recon",
        help="reconstruct fastMRI-format .h5 files (fastMRI's submission layout)",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    p.add_argument("run_dir", help="a run folder of memroll train (an MRI task)")
    p.add_argument(
        "paths",
        nargs="+",
        metavar="INPUT... OUTPUT",
        help="fastMRI .h5 files or folders of them (fully sampled, or with their own mask), then "
        "the output: a .h5 file for one input, else a folder",
    )
    p.add_argument("--weights", choices=("best", "last"), default="best")
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="the model sees N x N crops (default: the file's reconstruction matrix)",
    )
    p.add_argument(
        "--evaluate",
        action="store_true",
        help="score files that carry reconstruction_rss by fastMRI's NMSE, PSNR, SSIM",
    )
    p.add_argument("--cache", metavar="DIR", help="the coil-map cache (default: beside the data)")
    p.add_argument("--device", help="default cpu")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Reconstruct the files (:func:`memroll.runs.reconstruct_files`)."""
    if len(args.paths) < 2:
        raise CommandError(
            "give the INPUT file(s) and the OUTPUT: memroll recon RUN_DIR IN.h5 OUT.h5, or "
            "memroll recon RUN_DIR IN_FOLDER... OUT_FOLDER"
        )
    *inputs, output = args.paths
    reconstruct_files(
        args.run_dir,
        inputs,
        output,
        weights=args.weights,
        image_size=args.image_size,
        device=args.device or "cpu",
        progress=not args.no_progress,
        evaluate=args.evaluate,
        cache=args.cache,
    )
    return 0
