"""``memroll train CONFIG`` and ``memroll train --resume RUN_DIR``, alone or under torchrun.

Under ``torchrun --nproc-per-node=N -m memroll train ...`` every process runs this command: the
process group is initialised here (``gloo`` on CPU, ``nccl`` for a CUDA device), rank 0 names
the run folder and alone writes it and prints, and :func:`unrolled.train` trains data parallel
(``--strategy greedy``: P-GLEAM, modules spread over the ranks). A rank that fails stops the
others, which print the failure with its rank and exit with status 1.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from greedytrain.distributed import RankFailedError
from unrolled.training import connect

from .._console import CommandError
from ..config import RunConfig, config_path, load_config
from ..runs import (
    resume_config,
    resume_header,
    resume_point,
    split_overrides,
    train_config,
    with_fastmri,
)

__all__ = ["add_split_arguments", "register_parser"]


def add_split_arguments(p: argparse.ArgumentParser) -> None:
    """Add ``--split-by-file`` and ``--split-seed`` (a flat fastMRI folder's explicit split)."""
    p.add_argument(
        "--split-by-file",
        metavar="TRAIN,VAL,TEST",
        help="split a flat folder of fastMRI files by whole files, e.g. 0.8,0.1,0.1 (recorded "
        "in the run's config.toml as task.split_by_file)",
    )
    p.add_argument("--split-seed", type=int, help="the seed of --split-by-file's shuffle")


def register_parser(subparsers: Any) -> None:
    """Add ``train`` to the ``memroll`` subcommands."""
    p = subparsers.add_parser("train", help="train a model from a config file into a run folder")
    p.add_argument(
        "config", nargs="?", help="a TOML config file, or a shipped config's name (memroll configs)"
    )
    p.add_argument(
        "--strategy", choices=("backprop", "checkpoint", "reversible", "greedy", "implicit")
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set model.iterations=4 (repeatable)",
    )
    p.add_argument("--run-dir", help="the run folder (default runs/<name>-<strategy>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    p.add_argument("--fastmri", metavar="PATH", help="train on your fastMRI files (MRI configs)")
    add_split_arguments(p)
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: the config's train.device)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-eval", action="store_true", help="skip the test-split evaluation")
    p.set_defaults(handler=run)


def _default_run_dir(config: RunConfig, strategy: str) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.name}-{strategy}-{stamp}"


def run(args: argparse.Namespace) -> int:
    """Train a new run, or resume one."""
    overrides = list(args.set or []) + split_overrides(args.split_by_file, args.split_seed)
    if args.device is not None:
        overrides.append(f"train.device={json.dumps(args.device)}")
    if args.resume is not None:
        config, folder, strategy, header = _resumed(args, overrides)
    else:
        config, folder, strategy, header = _new(args, overrides)
    world = connect(config.train.device)
    try:
        if args.resume is None and args.run_dir is None:
            folder = world.agree(lambda: folder)  # rank 0's time stamp
        train_config(
            config,
            folder,
            strategy=strategy,
            resume=args.resume is not None,
            progress=not args.no_progress,
            evaluate_after=not args.no_eval,
            header=header,
            main=world.is_main,
        )
    except RankFailedError as error:
        print(f"memroll train: error: {error}", file=sys.stderr, flush=True)
        return 1
    finally:
        world.close()
    return 0


def _resumed(args: argparse.Namespace, overrides: list[str]) -> tuple[RunConfig, Path, None, str]:
    """Return the configuration, folder and header of ``--resume RUN_DIR``."""
    if args.config is not None:
        raise CommandError(
            "give either CONFIG (a new run) or --resume RUN_DIR (continue a run), not both"
        )
    folder = Path(args.resume)
    point = resume_point(folder)  # the checkpoint it resumes from (said when a fallback)
    config = resume_config(folder, overrides, args.fastmri, args.strategy, step=point.step)
    command = ["memroll", "train", "--resume", str(folder)]
    for option in ("set", "device", "fastmri", "strategy"):
        values = getattr(args, option)
        for value in values if isinstance(values, list) else [values]:
            if value is not None:
                command += [f"--{option}", str(value)]
    return config, folder, None, resume_header(point, shlex.join(command))


def _new(args: argparse.Namespace, overrides: list[str]) -> tuple[RunConfig, Path, str, str]:
    """Return the configuration, folder, strategy and header of a new run of ``CONFIG``."""
    if args.config is None:
        raise CommandError("give a CONFIG (a TOML file or a shipped config's name) or --resume")
    base = load_config(args.config)
    config = load_config(args.config, with_fastmri(overrides, args.fastmri, base))
    strategy = args.strategy or config.strategy.name
    folder = Path(args.run_dir) if args.run_dir else _default_run_dir(config, strategy)
    header = "\n".join(
        [
            f"the configuration of this run, as trained (from {config_path(args.config)}",
            *(f"  --set {s}" for s in overrides),
            f"  --strategy {strategy}); memroll train --resume {folder} continues it",
        ]
    )
    return config, folder, strategy, header
