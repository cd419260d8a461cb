"""Reading the files of a run (model files, checkpoints) without running code.

Every file unrolled writes (``best.pt``, ``checkpoint.pt``) holds tensors and plain Python values
only, and every file it reads is loaded with ``torch.load(..., weights_only=True)``: PyTorch's
restricted unpickler, which builds no other object and calls no other function. A file that needs
Python's full unpickler (a crafted pickle whose ``__reduce__`` would run a command, a checkpoint
of unrolled 0.1 that held NumPy arrays) is refused by ``unrolled.training.read_file`` with a
:class:`RunFileError` saying what it refers to; nothing in it runs. So is an empty, truncated or
corrupt file, a file of another kind, and a file of another format version (naming both).
"""

from __future__ import annotations

import errno
import io
import os
import pickletools
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "FILE_VERSIONS",
    "MODEL_FORMAT",
    "MODEL_VERSION",
    "RunFileError",
    "extra_buffers",
    "load_buffers",
    "load_model",
    "read_file",
]

MODEL_FORMAT = "memroll-unrolled-model"
#: 1: unrolled 0.1 and 0.2 (weights, non-persistent buffers, step, metrics: always plain).
MODEL_VERSION = 1
#: The format of a training checkpoint (:func:`unrolled.train`'s ``checkpoint.pt``).
CHECKPOINT_FORMAT = "memroll-unrolled-train"
#: 1: unrolled 0.1 (RNG states as Python and NumPy objects); 2: tensors and plain values only.
CHECKPOINT_VERSION = 2
#: The format version this unrolled reads and writes, per format.
FILE_VERSIONS = {MODEL_FORMAT: MODEL_VERSION, CHECKPOINT_FORMAT: CHECKPOINT_VERSION}
_KINDS = {MODEL_FORMAT: "model file", CHECKPOINT_FORMAT: "training checkpoint"}
# the weights-only unpickler reads these itself; anything else a pickle names is a foreign global
_SAFE_PREFIXES = ("torch.", "collections.OrderedDict", "builtins.")
_SCAN_LIMIT = 1 << 24  # bytes of a pickle scanned for the global it names


class RunFileError(ValueError):
    """A file of a run that cannot be used.

    It is empty, truncated or corrupt, not a file of unrolled, of another format version, or it
    needs Python's full unpickler (refused: it could run code).

    Attributes
    ----------
    path:
        The file.
    reason:
        Why, as a phrase that follows the file's name (``"is truncated or corrupt (...)"``).
    """

    def __init__(self, path: str | os.PathLike[str], reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{str(self.path)!r} {reason}")


def _pickle_bytes(path: Path) -> bytes:
    """Return the pickle ``torch.load`` reads first: a zip file's ``data.pkl``, else the file."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("data.pkl")]
            return archive.read(names[0])[:_SCAN_LIMIT] if names else b""
    with open(path, "rb") as handle:
        return handle.read(_SCAN_LIMIT)


def _foreign_global(path: str | os.PathLike[str]) -> str | None:
    """Return the first global (``module.name``) a file's pickle names that is not torch's own.

    The pickle is only parsed (:func:`pickletools.genops`), never run; ``None`` when it names none
    or cannot be parsed.
    """
    try:
        data = _pickle_bytes(Path(path))
    except (OSError, zipfile.BadZipFile, KeyError, RuntimeError):
        return None
    strings: list[str] = []
    try:
        for opcode, arg, _ in pickletools.genops(io.BytesIO(data)):
            if opcode.name in ("GLOBAL", "INST"):
                found = str(arg).replace(" ", ".")
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                found = f"{strings[-2]}.{strings[-1]}"
            else:
                if isinstance(arg, str):
                    strings.append(arg)
                continue
            if not found.startswith(_SAFE_PREFIXES):
                return found
    except Exception:  # any parse error ends the scan: the data are no pickle
        return None
    return None


def _load_error(target: Path, err: Exception) -> RunFileError:
    """Return the :class:`RunFileError` of ``torch.load`` failing on ``target`` with ``err``."""
    text = str(err)
    named = re.search(r"GLOBAL ([\w.]+)", text)
    found = _foreign_global(target) or (named.group(1) if named else None)
    if found is not None:
        return RunFileError(
            target,
            f"is refused: it needs Python's full unpickler (it refers to {found}), which can run "
            "code; files of unrolled hold only tensors and plain values (nothing in it was run)",
        )
    with open(target, "rb") as handle:
        head = handle.read(4)
    if head == b"PK\x03\x04" and not zipfile.is_zipfile(target):
        return RunFileError(
            target,
            "is truncated or corrupt: its zip archive ends early (the write that made it was "
            "cut short)",
        )
    first = text.strip().splitlines()[0].split(". ")[0] if text.strip() else "no data"
    return RunFileError(
        target, f"is truncated or corrupt (torch.load: {type(err).__name__}: {first[:120]})"
    )


def read_file(
    path: str | os.PathLike[str],
    formats: tuple[str, ...] = (MODEL_FORMAT, CHECKPOINT_FORMAT),
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Read a file of unrolled (``torch.load(..., weights_only=True)``) and check its format.

    Parameters
    ----------
    path:
        The file.
    formats:
        The formats it may have (:data:`MODEL_FORMAT`, :data:`CHECKPOINT_FORMAT`).
    map_location:
        Where its tensors go (``torch.load``'s ``map_location``).

    Returns
    -------
    dict
        The file's content.

    Raises
    ------
    FileNotFoundError
        There is no file at ``path``.
    RunFileError
        The file is empty, truncated or corrupt, needs Python's full unpickler (refused; nothing
        in it runs), is no file of the ``formats``, or has another format version (naming both).
    OSError
        The file cannot be read (permission, I/O error).
    """
    target = Path(path)
    if not target.is_file():
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(target))
    if target.stat().st_size == 0:
        raise RunFileError(target, "is empty (0 bytes): the write that made it was cut short")
    with open(target, "rb") as handle:  # no permission: that OSError, not the content's fault
        try:
            with warnings.catch_warnings():  # torch's notes on a foreign pickle: said below
                warnings.simplefilter("ignore")
                data = torch.load(handle, map_location=map_location, weights_only=True)
        except OSError as err:
            if err.errno == errno.EIO:  # the disk, not the content
                raise
            raise _load_error(target, err) from None  # torch reads past the end: EINVAL
        except Exception as err:  # any failure to parse an untrusted file is the file's fault
            raise _load_error(target, err) from None
    return _check_format(target, data, formats)


def _check_format(target: Path, data: Any, formats: tuple[str, ...]) -> dict[str, Any]:
    expected = " or ".join(f"a {_KINDS[f]}" for f in formats)
    if not isinstance(data, dict) or data.get("format") not in formats:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise RunFileError(target, f"is not {expected} of unrolled (its format is {found!r})")
    version, wanted = data.get("version"), FILE_VERSIONS[data["format"]]
    if version != wanted:
        raise RunFileError(
            target,
            f"is a {_KINDS[data['format']]} of format version {version!r}; this unrolled reads "
            f"version {wanted}",
        )
    return data


def load_buffers(model: nn.Module, buffers: dict[str, Tensor]) -> None:
    """Copy ``buffers`` (name -> tensor, as :func:`extra_buffers` gives them) into ``model``."""
    with torch.no_grad():
        for name, value in buffers.items():
            model.get_buffer(name).copy_(value)


def extra_buffers(model: nn.Module) -> dict[str, Tensor]:
    """Return the model's non-persistent buffers (e.g.

    certified Lipschitz bounds), which ``state_dict`` leaves out but which change what the model
    computes.
    """
    persistent = set(model.state_dict().keys())
    return {
        name: buffer.detach().cpu().clone()
        for name, buffer in model.named_buffers()
        if name not in persistent
    }


def load_model(
    model: nn.Module, path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load weights into ``model`` from a model file.

    The file is a ``best.pt`` (:func:`save_model`) or a training ``checkpoint.pt``, read by
    ``unrolled.training.read_file`` (weights only: nothing in the file runs); returns the file's
    other entries (``step``, ``metrics``, ...).

    Raises
    ------
    FileNotFoundError
        There is no file at ``path``.
    RunFileError
        The file cannot be used (see ``unrolled.training.read_file``).
    ValueError
        The file holds another model class, or weights of other shapes.
    """
    target = Path(path)
    data = read_file(target, map_location=map_location)
    if data.get("model_class") not in (None, type(model).__name__):
        raise ValueError(
            f"{str(target)!r} holds a {data['model_class']}, but the model is a "
            f"{type(model).__name__}: build the same model class with the same settings"
        )
    try:
        model.load_state_dict(data["model"])
    except RuntimeError as err:  # missing or unexpected keys, other shapes
        detail = " ".join(str(err).split())
        raise ValueError(
            f"{str(target)!r} does not fit this {type(model).__name__} ({detail[:300]}): build "
            "the model with the settings it was trained with"
        ) from None
    load_buffers(model, data.get("buffers", {}))
    return {k: v for k, v in data.items() if k not in ("model", "buffers", "engine", "rng")}
