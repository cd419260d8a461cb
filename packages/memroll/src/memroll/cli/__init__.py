"""The ``memroll`` command line: the root parser and :func:`main`.

==============================================  ================================================
command                                         what it does
==============================================  ================================================
``memroll train CONFIG [--strategy S]           trains the configuration's model on its task
[--set key=value ...] [--run-dir DIR]``         (a TOML file, or a shipped config's name) into a
                                                run folder, then scores it on the test split
``memroll train --resume RUN_DIR``              continues a run from its last checkpoint
                                                (bit-identical to a run that never stopped)
``memroll eval RUN_DIR [--split test]``         PSNR, SSIM, nRMSE per sample and mean (std),
                                                against the zero-filled (adjoint) input, and a
                                                figure
``memroll recon RUN_DIR INPUT... OUTPUT``       reconstructs fastMRI files (fastMRI's
[--evaluate]                                    submission layout), scores them by fastMRI's
                                                metrics
``memroll prepare DIR [--cache DIR]``           estimates the coil maps of fastMRI files once
``memroll bench ...``                           the benchmark (papers' tables in miniature)
``memroll demo``                                every memory strategy on one small MoDL
``memroll configs [NAME]``                      lists the shipped configs, or prints one
==============================================  ================================================

Each subcommand is a module of this package with ``register_parser(subparsers)``; the work is
done by :mod:`memroll.runs`, :mod:`memroll.demo` and :mod:`memroll.bench`, which never import
the command line back. Errors in the input (an unknown config key, a bad value, a missing file)
end the command with exit status 2 and one line naming the problem; ``MEMROLL_TRACEBACK=1``
shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

import torch

from . import bench, configs, demo, eval, prepare, recon, train

__all__ = ["build_parser", "main"]

SUBCOMMANDS = (train, eval, recon, prepare, bench, demo, configs)


def _version() -> str:
    # the package is imported before any of its modules; reading its version from sys.modules
    # imports nothing (DESIGN.md: no module imports its own package's __init__)
    return str(getattr(sys.modules.get("memroll"), "__version__", "unknown"))


def build_parser() -> argparse.ArgumentParser:
    """Return the ``memroll`` argument parser, with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="memroll",
        description="Train physics-based unrolled networks with memory-saving strategies.",
    )
    parser.add_argument("--version", action="version", version=f"memroll {_version()}")
    parser.add_argument(
        "--threads",
        dest="torch_threads",  # `memroll bench` has a --threads of its own
        type=int,
        default=None,
        help="torch intra-op threads of this process (default: torch's choice)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in SUBCOMMANDS:
        module.register_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``memroll`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.torch_threads is not None:
        if args.torch_threads < 1:
            parser.error(f"--threads must be a positive integer, got {args.torch_threads}")
        torch.set_num_threads(args.torch_threads)
    start = time.perf_counter()
    try:
        status = int(args.handler(args))
    except KeyboardInterrupt:
        print("memroll: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`memroll configs | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (ValueError, TypeError, FileNotFoundError, ImportError, FloatingPointError) as err:
        if os.environ.get("MEMROLL_TRACEBACK"):
            raise
        print(f"memroll {args.command}: error: {err}", file=sys.stderr)
        return 2
    if args.command in ("train", "eval", "recon"):
        print(f"({args.command} took {time.perf_counter() - start:.1f} s)", flush=True)
    return status
