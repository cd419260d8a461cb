"""What every part of the application shares: its input-error class, its checks and printing.

The command line reports a :class:`CommandError` (and the libraries' named conditions: a run
file that cannot be used, a diverged training, an ``OSError`` of :data:`OS_ERRORS`) as one line
and exit status 2; anything else is a bug and shows its traceback. Code that turns the user's
input into objects (configs, tasks, models, input files) runs inside :func:`input_errors`, which
reports the libraries' ``ValueError`` and ``TypeError`` there as the user's input error.
"""

from __future__ import annotations

import contextlib
import errno
import sys
from collections.abc import Iterator

import torch

__all__ = [
    "OS_ERRORS",
    "CommandError",
    "check_device",
    "input_errors",
    "megabytes",
    "note",
    "os_error_line",
    "say",
]


class CommandError(ValueError):
    """A problem with the command's input, reported as one line and exit status 2."""


def say(*parts: object) -> None:
    """Print a line of the command's output now (flushed: progress shows while it runs)."""
    print(*parts, flush=True)


def note(text: str) -> None:
    """Print a line to stderr: something the user should know (a fallback), not an error."""
    print(f"memroll: {text}", file=sys.stderr, flush=True)


def megabytes(value: float | None) -> str:
    """Bytes as ``"12.3 MB"`` (``"n/a"`` for ``None``)."""
    return "n/a" if value is None else f"{value / 1e6:.1f} MB"


@contextlib.contextmanager
def input_errors() -> Iterator[None]:
    """Report what goes wrong while the user's input is turned into objects as input errors.

    A ``ValueError``, ``TypeError``, ``ImportError`` (a missing optional dependency) or an
    ``OSError`` without ``errno`` (h5py's "file signature not found") raised in the block becomes a
    :class:`CommandError` with the same message. Use it only around code that reads and checks the
    input (configs, tasks, models, files), never around the work itself.
    """
    try:
        yield
    except CommandError:
        raise
    except (ValueError, TypeError, ImportError) as err:
        raise CommandError(str(err)) from err
    except OSError as err:
        if err.errno is not None:
            raise
        raise CommandError(str(err)) from err


def check_device(name: str, where: str = "--device") -> torch.device:
    """Return the torch device ``name``, or raise :class:`CommandError` when it is not here.

    Checked before any work or file: ``cuda`` without CUDA, ``cuda:3`` on a machine with fewer
    devices, and names torch does not know.
    """
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise CommandError(
            f"{where} {name!r} is not a torch device: use cpu, cuda or cuda:N"
        ) from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise CommandError(f"{where} {name!r}: memroll runs on cpu or cuda devices")
    if not torch.cuda.is_available():
        raise CommandError(
            f"{where} {name!r} needs CUDA, which this machine or this torch ({torch.__version__}) "
            "does not have: use --device cpu"
        )
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise CommandError(
            f"{where} {name!r} names CUDA device {device.index}, but this machine has {count} "
            f"(cuda:0 to cuda:{count - 1})"
        )
    return device


#: The ``OSError`` numbers the command line reports as one line, with what to do.
OS_ERRORS = {
    errno.ENOSPC: "free some space, or write somewhere else",
    errno.EDQUOT: "your disk quota is used up: free some space, or write somewhere else",
    errno.EFBIG: "the file is larger than this file system allows: write somewhere else",
    errno.EROFS: "that file system is read-only: choose a folder on a writable one",
    errno.EACCES: "you have no permission there: choose another path, or change its permissions",
    errno.EPERM: "the operation is not permitted there: choose another path",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "the path is a folder, where a file was expected",
    errno.EEXIST: "something is in the way at that path",
    errno.ENAMETOOLONG: "use a shorter path",
    errno.ELOOP: "the path has a loop of symbolic links",
    errno.EIO: "the disk reported an input/output error: check it",
}


def os_error_line(err: OSError) -> str | None:
    """Return the line that reports ``err`` (``None``: its errno is not in :data:`OS_ERRORS`)."""
    hint = OS_ERRORS.get(err.errno) if err.errno is not None else None
    if hint is None:
        return None
    text = err.strerror or str(err)
    if err.filename is not None:
        text += f": {str(err.filename)!r}"
        if err.filename2 is not None:
            text += f" -> {str(err.filename2)!r}"
    return f"{text} ({hint})"
