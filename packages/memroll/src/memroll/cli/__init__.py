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
the command line back.

Errors end the command with exit status 2 and one line naming the problem: the input (an
unknown config key, a bad value, a missing file, a device that is not there: a
:class:`~memroll._console.CommandError`, raised before any work or file is written), a run file
that cannot be used (:class:`unrolled.RunFileError`: empty, corrupt, another format version,
or a pickle that would need Python's full unpickler), a training whose loss diverged
(``FloatingPointError``), and the ``OSError`` s the command can name (a full disk, a read-only
file system, no permission, ...; :data:`~memroll._console.OS_ERRORS`). Anything else is a bug
and shows its traceback; ``MEMROLL_TRACEBACK=1`` shows the traceback of the one-line errors too.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import NoReturn

import torch

import unrolled

from .._console import CommandError, check_device, os_error_line
from . import bench, configs, demo, eval, prepare, recon, train

__all__ = ["build_parser", "main"]

SUBCOMMANDS = (train, eval, recon, prepare, bench, demo, configs)
# the named conditions of the libraries, reported as one line (their messages say what to do)
REPORTED = (CommandError, unrolled.RunFileError, FloatingPointError)


class _Parser(argparse.ArgumentParser):
    """``argparse`` with its errors as one line (the usage is one ``--help`` away)."""

    def error(self, message: str) -> NoReturn:
        """Print ``PROG: error: MESSAGE (PROG --help ...)`` to stderr and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message} ({self.prog} --help shows the usage)\n")


def _version() -> str:
    # the package is imported before any of its modules; reading its version from sys.modules
    # imports nothing (DESIGN.md: no module imports its own package's __init__)
    return str(getattr(sys.modules.get("memroll"), "__version__", "unknown"))


def build_parser() -> argparse.ArgumentParser:
    """Return the ``memroll`` argument parser, with every subcommand registered."""
    parser = _Parser(
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
        if args.command in ("train", "eval", "recon") and args.device is not None:
            check_device(args.device)  # before any work or file
        status = int(args.handler(args))
    except KeyboardInterrupt:
        print("memroll: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`memroll configs | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except REPORTED as err:
        return _failed(args.command, err, str(err))
    except OSError as err:
        line = os_error_line(err)
        if line is None:
            raise
        return _failed(args.command, err, line)
    if args.command in ("train", "eval", "recon"):
        print(f"({args.command} took {time.perf_counter() - start:.1f} s)", flush=True)
    return status


def _failed(command: str, err: BaseException, line: str) -> int:
    """Report ``err`` as one line on stderr and return exit status 2.

    With ``MEMROLL_TRACEBACK=1`` it raises ``err`` instead, with its traceback.
    """
    if os.environ.get("MEMROLL_TRACEBACK"):
        raise err
    text = " ".join(line.split())  # one line, whatever the message held
    print(f"memroll {command}: error: {text}", file=sys.stderr)
    return 2
