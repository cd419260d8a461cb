"""``memroll bench``: the papers' tables in miniature (:mod:`memroll.bench`)."""

from __future__ import annotations

from typing import Any

from .. import bench

__all__ = ["register_parser"]


def register_parser(subparsers: Any) -> None:
    """Add ``bench`` to the ``memroll`` subcommands."""
    p = subparsers.add_parser("bench", help="the benchmark: the papers' tables in miniature")
    bench.add_arguments(p)
    p.set_defaults(handler=bench.run)
