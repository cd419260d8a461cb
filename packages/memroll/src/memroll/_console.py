"""What every part of the application shares: its one input-error class and its printing."""

from __future__ import annotations

__all__ = ["CommandError", "megabytes", "say"]


class CommandError(ValueError):
    """A problem with the command's input, reported as one line and exit status 2."""


def say(*parts: object) -> None:
    """Print a line of the command's output now (flushed: progress shows while it runs)."""
    print(*parts, flush=True)


def megabytes(value: float | None) -> str:
    """Bytes as ``"12.3 MB"`` (``"n/a"`` for ``None``)."""
    return "n/a" if value is None else f"{value / 1e6:.1f} MB"
