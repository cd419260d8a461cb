"""``memroll eval RUN_DIR``: score a run on a split, with a figure."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..runs import evaluate_run, split_overrides
from .train import add_split_arguments

__all__ = ["register_parser"]


def register_parser(subparsers: Any) -> None:
    """Add ``eval`` to the ``memroll`` subcommands."""
    p = subparsers.add_parser("eval", help="score a run on its test split, with a figure")
    p.add_argument("run_dir", help="a run folder of memroll train")
    p.add_argument("--split", choices=("train", "val", "test"), help="default: the config's")
    p.add_argument("--weights", choices=("best", "last"), help="best.pt (default) or checkpoint.pt")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--fastmri", metavar="PATH", help="score on your fastMRI files (MRI runs)")
    add_split_arguments(p)
    p.add_argument("--cache", metavar="DIR", help="fastMRI files: the coil-map cache folder")
    p.add_argument("--device", help="default cpu")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Score the run (:func:`memroll.runs.evaluate_run`)."""
    evaluate_run(
        Path(args.run_dir),
        split=args.split,
        weights=args.weights,
        overrides=[
            *(args.set or []),
            *split_overrides(args.split_by_file, args.split_seed),
            *([f"task.maps_cache={json.dumps(args.cache)}"] if args.cache else []),
        ],
        fastmri=args.fastmri,
        device=args.device or "cpu",
    )
    return 0
