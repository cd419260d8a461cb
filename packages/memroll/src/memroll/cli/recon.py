"""``memroll recon RUN_DIR INPUT.h5 OUTPUT.h5``: reconstruct a fastMRI-format file."""

from __future__ import annotations

import argparse
from typing import Any

from ..runs import reconstruct_file

__all__ = ["register_parser"]


def register_parser(subparsers: Any) -> None:
    """Add ``recon`` to the ``memroll`` subcommands."""
    p = subparsers.add_parser("recon", help="reconstruct a fastMRI-format .h5 file")
    p.add_argument("run_dir", help="a run folder of memroll train (an MRI task)")
    p.add_argument("input", help="a fastMRI .h5 file (fully sampled, or with its own mask)")
    p.add_argument("output", help="the .h5 file to write (key 'reconstruction')")
    p.add_argument("--weights", choices=("best", "last"), default="best")
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="crop every slice to N x N (default: the file's reconstruction size)",
    )
    p.add_argument("--device", help="default cpu")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Reconstruct the file (:func:`memroll.runs.reconstruct_file`)."""
    reconstruct_file(
        args.run_dir,
        args.input,
        args.output,
        weights=args.weights,
        image_size=args.image_size,
        device=args.device or "cpu",
        progress=not args.no_progress,
    )
    return 0
