"""``memroll configs [NAME]``: list the shipped configs, or print one."""

from __future__ import annotations

import argparse
from typing import Any

import unrolled

from .._console import say
from ..config import MODELS, config_path, load_config, shipped_configs

__all__ = ["register_parser"]


def register_parser(subparsers: Any) -> None:
    """Add ``configs`` to the ``memroll`` subcommands."""
    p = subparsers.add_parser("configs", help="list the shipped configs, or print one")
    p.add_argument("name", nargs="?", help="a shipped config's name")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print the config ``args.name``, or list them all."""
    if args.name is not None:
        print(config_path(args.name).read_text(), end="")
        return 0
    say("shipped configs (memroll train NAME; memroll configs NAME prints one):")
    for name, path in shipped_configs().items():
        config = load_config(path)
        first = config.description.strip().splitlines()[0] if config.description.strip() else ""
        say(f"  {name:<16} {config.model.name:<12} {config.task.name:<15} {first}")
    say(f"models: {', '.join(MODELS)}; tasks: {', '.join(unrolled.TASKS)}")
    return 0
