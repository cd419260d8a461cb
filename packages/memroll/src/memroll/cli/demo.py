"""``memroll demo``: every memory strategy on one small MoDL (:mod:`memroll.demo`)."""

from __future__ import annotations

from typing import Any

from .. import demo

__all__ = ["register_parser"]


def register_parser(subparsers: Any) -> None:
    """Add ``demo`` to the ``memroll`` subcommands."""
    p = subparsers.add_parser("demo", help="every memory strategy on one small MoDL, compared")
    demo.add_arguments(p)
    p.set_defaults(handler=demo.run)
