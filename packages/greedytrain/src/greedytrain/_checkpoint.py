"""Checkpoint files that cannot run code, written atomically, and the RNG states they hold.

Every file greedytrain writes holds tensors and plain Python values only (numbers, strings,
``None``, dtypes, devices, and lists / tuples / dicts / sets of them), so it loads with
``torch.load(..., weights_only=True)``: PyTorch's restricted unpickler, which builds no other
object and calls no function. A file that needs Python's full unpickler (a crafted pickle whose
``__reduce__`` would run a command, or a checkpoint of greedytrain 0.1 that held NumPy arrays) is
refused with a message saying what it refers to; nothing in it runs.

Writes go to a temporary file in the target's folder, are flushed and fsynced, then renamed onto
the target (``os.replace``, atomic on POSIX and Windows), so a crash or a full disk leaves the
previous file intact and no temporary file behind.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import pickletools
import random
import re
import sys
import tempfile
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor, nn

__all__ = [
    "FORMAT",
    "VERSION",
    "atomic_save",
    "check_version",
    "checkpoint_header",
    "get_rng_state",
    "load_plain",
    "read_checkpoint",
    "set_rng_state",
    "unplain_part",
]

FORMAT = "memroll-greedytrain-checkpoint"
VERSION = 2  # 1: greedytrain 0.1 (RNG states as pickled objects); 2: tensors and plain types

# exact types: a subclass (numpy.float64 is a float, a named tuple is a tuple) pickles as a global
_LEAVES = {Tensor, nn.Parameter, bool, int, float, complex, str, bytes, type(None)}
_LEAVES |= {torch.dtype, torch.device}
_CONTAINERS = {list, tuple, set, frozenset, torch.Size}


def unplain_part(obj: Any, where: str = "the object") -> str | None:
    """Describe the first part of ``obj`` that ``torch.load(weights_only=True)`` would refuse.

    Returns None when every part is a tensor or a plain value (see the module notes), else a
    phrase such as ``"the object['extra']['rng'] is a numpy.ndarray"``.
    """
    kind = type(obj)
    if kind in _LEAVES:
        return None
    if kind in (dict, OrderedDict):
        for key, value in obj.items():
            found = unplain_part(key, f"a key of {where}") or unplain_part(
                value, f"{where}[{key!r}]"
            )
            if found:
                return found
        return None
    if kind in _CONTAINERS:
        for i, item in enumerate(obj):
            found = unplain_part(item, f"{where}[{i}]")
            if found:
                return found
        return None
    return f"{where} is a {kind.__module__}.{kind.__qualname__}"


class _CountingWriter:
    """A binary file wrapper that counts the bytes written through it."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.written = 0

    def write(self, data: Any) -> int:
        count = self.handle.write(data)
        self.written += count
        return count

    def flush(self) -> None:
        self.handle.flush()


def _write_failed(error: OSError, target: Path, written: int, stage: str) -> OSError:
    """Build the error to raise when writing ``target`` failed after ``written`` bytes."""
    reason = error.strerror or str(error)
    text = (
        f"{reason} while {stage} {str(target)!r} ({written} bytes written to the temporary file, "
        f"which was removed; the previous {target.name!r}, if any, is unchanged)"
    )
    if error.errno is None:
        return OSError(text)
    return OSError(error.errno, text)


def atomic_save(obj: Any, path: str | os.PathLike[str], *, weights_only: bool = True) -> Path:
    """Write ``torch.save(obj)`` to ``path`` atomically.

    The data go to a temporary file beside ``path``, which is flushed, fsynced and renamed onto
    ``path`` (``os.replace``); the folder is fsynced too. A crash at any moment leaves either the
    previous file or the new one, never a torn file; any failure removes the temporary file.

    Parameters
    ----------
    obj
        What to save: tensors and plain values (numbers, strings, None, dtypes, devices, lists,
        tuples, dicts, sets), so that ``torch.load(path, weights_only=True)`` reads it back
        without running code; with ``weights_only`` off, anything ``torch.save`` takes.
    path
        The file to write (its folder is created).
    weights_only
        Refuse (``TypeError``, naming the part) an ``obj`` that only Python's full unpickler
        could read back (the default since 0.2: files that people share must load without
        running code). Turn it off only for files you alone read back.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    TypeError
        With ``weights_only=True``, when ``obj`` holds something else than tensors and plain
        values; the message names it.
    OSError
        When writing fails (for example ``ENOSPC``, a full disk): the same ``errno``, with a
        message that says how many bytes were written before the failure.
    """
    target = Path(path)
    if weights_only:
        problem = unplain_part(obj)
        if problem is not None:
            raise TypeError(
                f"cannot write {str(target)!r}: {problem}; checkpoints hold only tensors and "
                "plain values (numbers, strings, None, lists, tuples, dicts) so that they load "
                "with torch.load(weights_only=True), without running code: convert it (e.g. a "
                "NumPy array with torch.from_numpy)"
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    writer: _CountingWriter | None = None
    stage = "writing"
    try:
        with os.fdopen(fd, "wb") as handle:
            writer = _CountingWriter(handle)
            torch.save(obj, writer)  # type: ignore[arg-type]
            handle.flush()
            stage = "syncing"
            os.fsync(handle.fileno())
        stage = "renaming the temporary file onto"
        os.replace(tmp_name, target)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        if isinstance(error, OSError):
            written = writer.written if writer is not None else 0
            raise _write_failed(error, target, written, stage) from error
        raise
    _sync_folder(target.parent)
    return target


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# ---------------------------------------------------------------------- reading
def _pickle_bytes(path: Path) -> bytes | None:
    """Read the pickle stream of a ``torch.save`` file (its ``data.pkl``) or of a plain pickle."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith("data.pkl")]
                return archive.read(names[0]) if names else None
        return path.read_bytes()
    except (OSError, zipfile.BadZipFile, KeyError):
        return None


# opcodes that push a string or an integer constant
_PUSHES = {
    "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "STRING", "BINSTRING",
    "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8",
}  # fmt: skip


def _scan(raw: bytes) -> tuple[list[str], list[Any]] | None:
    """List the globals a pickle refers to and the constants it pushes, without running it.

    Returns None when ``raw`` is not a pickle stream. ``pickletools.genops`` only decodes
    opcodes; nothing is imported, built or called.
    """
    found: list[str] = []
    values: list[Any] = []
    memo: dict[int, Any] = {}
    try:
        for op, arg, _ in pickletools.genops(raw):
            if op.name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL":
                strings = [v for v in values[-2:] if isinstance(v, str)]
                found.append(".".join(strings) if len(strings) == 2 else "<a global>")
            elif op.name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE") and values:
                memo[arg if isinstance(arg, int) else len(memo)] = values[-1]
            elif op.name in ("GET", "BINGET", "LONG_BINGET") and isinstance(arg, int):
                values.append(memo.get(arg))
            elif op.name in _PUSHES:
                values.append(arg)
    except Exception:  # any decoding error: not a pickle stream (truncated or random bytes)
        return None
    return found, values


def _greedytrain_version(values: list[Any]) -> int | None:
    """Find the format version of a greedytrain checkpoint in its pickled constants."""
    if FORMAT not in values:
        return None
    for i, value in enumerate(values[:-1]):
        if value == "version" and isinstance(values[i + 1], int):
            return int(values[i + 1])
    return None


def _unsafe_message(target: Path, error: Exception) -> str:
    """Why ``target`` was refused by the restricted unpickler, in one line."""
    raw = _pickle_bytes(target)
    scanned = _scan(raw) if raw is not None else None
    if scanned is None:
        return f"{str(target)!r} is not a checkpoint file: it is truncated or corrupt"
    names, values = scanned
    version = _greedytrain_version(values)
    if version is not None and version != VERSION:
        return (
            f"{str(target)!r} is a greedytrain checkpoint of format version {version}; this "
            f"greedytrain reads version {VERSION}, whose files load without Python's full "
            "unpickler. If you wrote the file yourself and trust it, load it with Python's full "
            "unpickler (torch.load with weights_only off), pass it to trainer.load_state_dict "
            "and save it again"
        )
    match = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    foreign = [match.group(1)] if match else []
    foreign += [n for n in names if not n.startswith(("torch", "collections.OrderedDict"))]
    refers = f"it refers to {', '.join(dict.fromkeys(foreign))}" if foreign else "it uses opcodes"
    return (
        f"{str(target)!r} was refused: {refers}, which only Python's full unpickler would "
        "build or call, and that could run code stored in the file. greedytrain reads only files "
        "of tensors and plain values (torch.load(weights_only=True)); nothing in this one was run"
    )


def load_plain(path: str | os.PathLike[str], what: str = "a checkpoint") -> Any:
    """Load a file of tensors and plain values onto the CPU without running code.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` with one line for a file
    that needs the full unpickler (naming what it refers to) or that is empty, truncated or
    corrupt.
    """
    target = Path(path)
    if not target.is_file():
        raise FileNotFoundError(f"no {what.removeprefix('a ')} at {str(target)!r}")
    try:
        with warnings.catch_warnings():
            # torch warns about plain pickles of protocol > 2 before it refuses or reads them
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            return torch.load(target, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(_unsafe_message(target, error)) from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as error:
        first = str(error).strip().split(". ")[0].splitlines()[0] if str(error).strip() else ""
        raise ValueError(
            f"{str(target)!r} cannot be read as {what}: it is empty, truncated or corrupt "
            f"({first or type(error).__name__}); use an earlier copy"
        ) from error


def checkpoint_header(module_sizes: list[int], step: int) -> dict[str, Any]:
    """Return the fields every greedytrain checkpoint starts with (format, version, layout)."""
    return {"format": FORMAT, "version": VERSION, "module_sizes": list(module_sizes), "step": step}


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a greedytrain checkpoint onto the CPU (without running code) and check its format."""
    target = Path(path)
    data = load_plain(target, "a checkpoint")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(
            f"{str(target)!r} is not a greedytrain checkpoint (written by GreedyTrainer.save or "
            "DistributedGreedyTrainer.save)"
        )
    check_version(data, repr(str(target)))
    return data


def check_version(data: dict[str, Any], where: str, accept: tuple[int, ...] = (VERSION,)) -> None:
    """Raise ``ValueError`` naming the version when ``data`` is not of a version in ``accept``."""
    version = data.get("version")
    if version not in accept:
        raise ValueError(
            f"{where} has checkpoint format version {version!r}; this greedytrain reads version "
            f"{VERSION}"
        )


# ---------------------------------------------------------------------- random generators
def get_rng_state() -> dict[str, Any]:
    """Return the global RNG states of torch (CPU, initialised CUDA), Python and NumPy.

    Everything is a tensor or a plain value, so the states go into weights-only files.
    """
    version, keys, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "keys": torch.tensor(keys), "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    numpy = sys.modules.get("numpy")  # only if the user's program uses NumPy at all
    if numpy is not None:
        # the legacy global generator is what user code seeded with np.random.seed
        kind, words, pos, has_gauss, cached = numpy.random.get_state()
        state["numpy"] = {
            "kind": str(kind),
            "keys": torch.from_numpy(words.astype("int64")),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned (or what greedytrain 0.1 stored)."""
    torch.set_rng_state(state["torch"])
    python = state["python"]
    if isinstance(python, dict):
        keys = tuple(int(k) for k in python["keys"].tolist())
        python = (python["version"], keys, python["gauss"])
    random.setstate(python)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy

        numpy_state = state["numpy"]
        if isinstance(numpy_state, dict):
            words = numpy_state["keys"].numpy().astype(numpy.uint32)
            numpy_state = (
                numpy_state["kind"],
                words,
                numpy_state["pos"],
                numpy_state["has_gauss"],
                numpy_state["cached_gaussian"],
            )
        numpy.random.set_state(numpy_state)  # noqa: NPY002
