"""The run folder of :func:`unrolled.train`: its files, written safely and read back.

Also the RNG states a checkpoint holds, and the run's result.

Writing (:func:`atomic_path`, :func:`atomic_write_text`, :func:`atomic_save`): the data go to a
temporary file beside the target (created with the user's umask, like any other file), which is
flushed, fsynced and renamed onto the target (``os.replace``); the folder is fsynced too. A crash
at any moment leaves the previous file or the new one, never a torn file; a failure (a full
disk, a read-only file system) removes the temporary file and raises an ``OSError`` of the same
``errno`` whose message says which file, how many bytes had been written, and that the previous
file is unchanged. Rows appended to the CSV logs are cut off again when the disk fills, so the
logs hold whole rows only.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import errno
import io
import os
import random
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from .._validate import one_of
from ._io import (
    CHECKPOINT_FORMAT,
    MODEL_FORMAT,
    MODEL_VERSION,
    RunFileError,
    extra_buffers,
    load_buffers,
    load_model,
    read_file,
)

__all__ = [
    "RunFolder",
    "TrainResult",
    "append_text",
    "atomic_path",
    "atomic_save",
    "atomic_write_text",
    "load_run_weights",
    "rng_state",
    "save_model",
    "seed_everything",
    "set_rng_state",
    "to_plain",
]


# ------------------------------------------------------------------------------------------------
# RNG states, as tensors and plain values
# ------------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    """Seed torch (and every CUDA device), Python's ``random`` and NumPy's global generator."""
    torch.manual_seed(seed)  # also every CUDA device
    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 - the legacy global generator users seed


def rng_state() -> dict[str, Any]:
    """Return the global RNG states of torch, CUDA, Python and NumPy as tensors and plain values.

    A file holding them loads with ``torch.load(..., weights_only=True)``;
    :func:`set_rng_state` restores them exactly.
    """
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # noqa: NPY002
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {
            "version": int(version),
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNG states :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    python = state["python"]
    internal = tuple(int(v) for v in python["state"].tolist())
    random.setstate((int(python["version"]), internal, python["gauss_next"]))
    numpy = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            numpy["name"],
            numpy["keys"].numpy().astype(np.uint32),
            int(numpy["pos"]),
            int(numpy["has_gauss"]),
            float(numpy["cached_gaussian"]),
        )
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# the exact types a weights-only file holds (a subclass, e.g. numpy.float64, pickles as a global)
_LEAVES = (bool, int, float, complex, str, bytes, type(None), torch.dtype, torch.device)


def to_plain(obj: Any, where: str = "the object") -> Any:
    """Return ``obj`` as tensors and plain values, which ``torch.load(weights_only=True)`` reads.

    NumPy arrays become tensors and NumPy scalars Python numbers; dicts, lists and tuples are
    converted item by item (a named tuple becomes a tuple).

    Raises
    ------
    TypeError
        A part of ``obj`` is some other object (naming where it is).
    """
    if isinstance(obj, Tensor):
        return obj.detach()
    if type(obj) in _LEAVES:
        return obj
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.astype(np.int64) if obj.dtype == np.uint32 else obj.copy())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {
            to_plain(k, f"a key of {where}"): to_plain(v, f"{where}[{k!r}]") for k, v in obj.items()
        }
    if isinstance(obj, (list, tuple)):
        items = [to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    raise TypeError(
        f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}, which a weights-only "
        "file cannot hold: store tensors, numbers, strings, None, lists, tuples and dicts"
    )


# ------------------------------------------------------------------------------------------------
# writing files atomically
# ------------------------------------------------------------------------------------------------
_TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")
_NO_DIR_FSYNC = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF}


def _reason(err: OSError) -> str:
    """Return what went wrong in a few words (h5py's strerror is a paragraph: use errno's)."""
    if err.errno is not None:
        return os.strerror(err.errno)
    return str(err) or type(err).__name__


def _oserror(err: OSError, text: str) -> OSError:
    """Return an ``OSError`` of ``err``'s errno (callers tell a full disk by it) with ``text``."""
    return OSError(err.errno, text) if err.errno is not None else OSError(text)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform can open folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in _NO_DIR_FSYNC:
            raise
    finally:
        os.close(fd)


class _AtomicFile:
    """A temporary file beside ``target`` that replaces it on success (see the module notes).

    Its :meth:`write` goes straight to the file descriptor (``os.write``), so a full disk keeps
    its ``errno`` even when the caller (``torch.save``) turns the failure into another error.
    """

    def __init__(self, target: Path, previous: Path | None = None):
        self.target, self.previous = target, previous
        self.fd = -1
        self.tmp = target
        self.error: OSError | None = None

    def __enter__(self) -> _AtomicFile:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        for _ in range(32):
            self.tmp = self.target.with_name(f".{self.target.name}.{secrets.token_hex(4)}.tmp")
            try:
                self.fd = os.open(self.tmp, flags, 0o666)  # 0o666 & ~umask, as open() gives
                return self
            except FileExistsError:
                continue
            except OSError as err:
                raise _oserror(
                    err,
                    f"{_reason(err)}: cannot create a file in {str(self.target.parent)!r} to "
                    f"write {self.target.name} (nothing was written)",
                ) from err
        raise FileExistsError(f"no free temporary name beside {str(self.target)!r}")

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        total = len(view)
        try:
            while view:
                count = os.write(self.fd, view)
                view = view[count:]
        except OSError as err:
            self.error = err
            raise
        return total

    def flush(self) -> None:
        """Nothing to flush: :meth:`write` is unbuffered."""

    def _commit(self) -> None:
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1
        if self.previous is not None and self.target.exists():
            os.replace(self.target, self.previous)
        os.replace(self.tmp, self.target)
        _fsync_folder(self.target.parent)

    def __exit__(self, kind: Any, err: BaseException | None, tb: Any) -> None:
        if err is None:
            try:
                self._commit()
            except BaseException as failed:
                self._clean_up(failed)
                raise
            return
        self._clean_up(err)  # raises the OSError that says what happened, or lets err go on

    def _clean_up(self, err: BaseException) -> None:
        """Remove the temporary file; raise the write's ``OSError`` with what was written."""
        written = 0
        with contextlib.suppress(OSError):
            written = os.fstat(self.fd).st_size if self.fd >= 0 else self.tmp.stat().st_size
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)
        cause = self.error if self.error is not None else err
        if isinstance(cause, OSError):
            name = self.target.name
            kept = f"the previous {name} is unchanged"
            if not self.target.exists():
                kept = f"no {name} was written"
            raise _oserror(
                cause,
                f"{_reason(cause)} while writing {str(self.target)!r} ({written:,} bytes written "
                f"to a temporary file, which was removed; {kept})",
            ) from err


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary file beside ``path``; it replaces ``path`` when the block succeeds.

    For writers that take a file name (h5py, matplotlib). The temporary file is synced to disk
    before ``os.replace``, so ``path`` is always either its old content or the complete new one,
    even if the process is killed; when the block raises, the temporary file is removed and
    ``path`` is left as it was (an ``OSError`` says how many bytes had been written).

    Examples
    --------
    >>> with atomic_path("out.h5") as tmp:                    # doctest: +SKIP
    ...     with h5py.File(tmp, "w") as f:
    ...         f["reconstruction"] = images
    """
    with _AtomicFile(Path(path)) as handle:
        yield handle.tmp


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    r"""Write ``text`` to ``path`` atomically (:func:`atomic_path`), with ``\n`` line ends."""
    with _AtomicFile(Path(path)) as handle:
        handle.write(text.encode())


def atomic_save(
    obj: Any, path: str | os.PathLike[str], *, previous: str | os.PathLike[str] | None = None
) -> Path:
    """Write ``torch.save(to_plain(obj))`` to ``path`` atomically (see :func:`atomic_path`).

    The file holds tensors and plain values only, so it loads with ``weights_only=True``
    (:func:`to_plain` refuses anything else). With ``previous``, the file ``path`` held is kept
    there (renamed, once the new file is complete): the last two versions survive.
    """
    target = Path(path)
    plain = to_plain(obj)
    with _AtomicFile(target, None if previous is None else Path(previous)) as handle:
        torch.save(plain, cast(IO[bytes], handle))  # write() and flush() are all it calls
    return target


def append_text(path: str | os.PathLike[str], text: str) -> None:
    """Append ``text`` to ``path`` (created if missing); on failure, cut the file back.

    The file keeps its previous content whole when the disk fills mid-write; the ``OSError``
    says how many bytes had been written.
    """
    target, data = Path(path), text.encode()
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(target, flags, 0o666)
    try:
        size, written = os.fstat(fd).st_size, 0
        try:
            while written < len(data):
                written += os.write(fd, data[written:])
        except OSError as err:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise _oserror(
                err,
                f"{_reason(err)} while appending to {str(target)!r} ({written:,} of {len(data):,} "
                f"bytes written, then cut off: the file keeps its previous {size:,} bytes)",
            ) from err
    finally:
        os.close(fd)


def save_model(
    model: nn.Module, path: str | os.PathLike[str], *, step: int | None = None, **info: Any
) -> Path:
    """Write the model's weights (and non-persistent buffers) atomically to ``path``.

    ``info`` (e.g. ``metrics``) must be plain values: the file loads with ``weights_only=True``
    (:func:`load_model`).
    """
    return atomic_save(
        {
            "format": MODEL_FORMAT,
            "version": MODEL_VERSION,
            "model_class": type(model).__name__,
            "step": step,
            "model": model.state_dict(),
            "buffers": extra_buffers(model),
            **info,
        },
        path,
    )


# ------------------------------------------------------------------------------------------------
# the run folder
# ------------------------------------------------------------------------------------------------
def _csv_text(rows: list[dict[str, Any]], columns: list[str], header: bool) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


class RunFolder:
    """The run's files: checkpoints, best model, CSV logs, events, result summary.

    ``checkpoint.pt`` is the newest checkpoint and ``checkpoint.prev.pt`` the one before;
    :meth:`read_checkpoint` falls back to it when the newest cannot be used. ``events.log`` has
    one dated line per resume and fallback. With ``create=False`` the folder is only read.
    """

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True):
        self.path = Path(path)
        if create:
            self.path.mkdir(parents=True, exist_ok=True)
        self.checkpoint = self.path / "checkpoint.pt"
        self.previous_checkpoint = self.path / "checkpoint.prev.pt"
        self.best = self.path / "best.pt"
        self.log = self.path / "log.csv"
        self.val = self.path / "val.csv"
        self.events = self.path / "events.log"
        self.result = self.path / "train_result.json"
        #: after :meth:`read_checkpoint`: the file read, and why newer ones could not be used
        self.read_from: Path | None = None
        self.unusable: list[str] = []

    def has_checkpoint(self) -> bool:
        """Tell whether the folder holds a checkpoint (newest or previous)."""
        return self.checkpoint.exists() or self.previous_checkpoint.exists()

    def rewrite(self, path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
        """Write a CSV log anew (atomically), with its header and ``rows``."""
        atomic_write_text(path, _csv_text(rows, columns, header=True))

    def append(self, path: Path, row: dict[str, Any], columns: list[str]) -> None:
        """Append one row to a CSV log (whole rows only, see :func:`append_text`)."""
        if not path.exists():
            self.rewrite(path, [], columns)
        append_text(path, _csv_text([row], columns, header=False))

    def note(self, text: str) -> None:
        """Append a dated line to ``events.log``."""
        stamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        append_text(self.events, f"{stamp} {text}\n")

    def write_checkpoint(self, data: dict[str, Any]) -> None:
        """Write ``checkpoint.pt`` atomically, keeping the one it replaces as the previous one."""
        atomic_save(data, self.checkpoint, previous=self.previous_checkpoint)

    def read_checkpoint(self) -> dict[str, Any]:
        """Return the newest usable checkpoint (``checkpoint.pt``, else ``checkpoint.prev.pt``).

        Sets :attr:`read_from` and :attr:`unusable` (one phrase per newer file skipped).

        Raises
        ------
        RunFileError
            Neither can be used (naming each file and why).
        """
        reasons: list[str] = []
        for path in (self.checkpoint, self.previous_checkpoint):
            try:
                data = read_file(path, (CHECKPOINT_FORMAT,))
            except FileNotFoundError:
                reasons.append(f"{path.name} does not exist")
            except RunFileError as err:
                reasons.append(f"{path.name} {err.reason}")
            else:
                self.read_from, self.unusable = path, reasons
                return data
        raise RunFileError(self.path, "has no usable checkpoint: " + "; ".join(reasons))

    def remove_temporaries(self) -> list[str]:
        """Remove temporary files a killed writer left (call only when nothing writes here)."""
        removed = []
        for path in self.path.iterdir():
            if _TEMPORARY.match(path.name) and path.is_file():
                path.unlink()
                removed.append(path.name)
        return removed


def load_run_weights(
    model: nn.Module,
    run_dir: str | os.PathLike[str],
    weights: str = "best",
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Load a run folder's weights into ``model``, falling back when a file cannot be used.

    ``weights="best"`` tries ``best.pt``, then ``checkpoint.pt``, then ``checkpoint.prev.pt``;
    ``"last"`` the two checkpoints. Returns the file's entries (:func:`load_model`) plus
    ``"file"`` (the name of the file read) and ``"skipped"`` (one phrase per file that exists
    but cannot be used, e.g. ``"best.pt is truncated or corrupt (...)"``).

    Raises
    ------
    RunFileError
        No file can be used (naming each file and why).
    ValueError
        A file holds another model class, or weights of other shapes (no fallback: the model is
        not the run's).
    """
    one_of("weights", weights, ("best", "last"))
    run = RunFolder(run_dir, create=False)
    order = [run.checkpoint, run.previous_checkpoint]
    if weights == "best":
        order.insert(0, run.best)
    skipped: list[str] = []
    reasons: list[str] = []
    for path in order:
        try:
            info = load_model(model, path, map_location)
        except FileNotFoundError:
            reasons.append(f"{path.name} does not exist")
            continue
        except RunFileError as err:
            skipped.append(f"{path.name} {err.reason}")
            reasons.append(skipped[-1])
            continue
        return {**info, "file": path.name, "skipped": skipped}
    raise RunFileError(run.path, "has no usable weights: " + "; ".join(reasons))


# ------------------------------------------------------------------------------------------------
# the result
# ------------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes
    ----------
    steps:
        Steps completed (the run's total, including steps before a resume).
    strategy:
        The strategy as :meth:`Strategy.describe` writes it (``"greedy(M=4, inner=reversible)"``).
    history:
        One dict per step: ``step`` (1-based), ``epoch``, ``loss``, ``lr``, ``time_s`` (greedy:
        ``loss_module_<m>``).
    val_history:
        One dict per validation: ``step``, ``psnr``, ``ssim``, ``nrmse`` (means), ``best``.
    best:
        The validation with the lowest nRMSE (``None`` without validation).
    best_state:
        The model's state at ``best`` (CPU tensors; kept in memory only without ``run_dir``,
        else it is ``run_dir/best.pt``). :meth:`load_best` puts it into a model.
    peak_memory_bytes, memory_baseline_bytes, memory_kind:
        Peak memory of the training loop of this process (``"cpu_peak_rss"``: the process's peak
        RSS after ``/proc/self/clear_refs``, ``"cuda_max_allocated"``:
        ``torch.cuda.max_memory_allocated``) and the memory in use when it started.
    median_step_time_s:
        Median wall time of an optimizer step (data loading excluded; the first step of the
        process is left out as warm-up when there are more).
    run_dir, resumed_from:
        The run folder and the step the run resumed from (``None`` for a fresh run).
    resumed_file, unusable:
        The checkpoint a resumed run read (``"checkpoint.pt"``, or ``"checkpoint.prev.pt"`` when
        the newest could not be used) and why newer checkpoints were skipped.
    world_size, backend:
        The processes of the job (1 and ``None`` for a process alone; ``torch.distributed``'s
        backend, ``"gloo"`` or ``"nccl"``, under ``torchrun``).
    """

    steps: int
    strategy: str
    history: list[dict[str, Any]]
    val_history: list[dict[str, Any]]
    best: dict[str, Any] | None
    best_state: dict[str, Any] | None
    peak_memory_bytes: int | None
    memory_baseline_bytes: int | None
    memory_kind: str
    median_step_time_s: float
    run_dir: str | None = None
    resumed_from: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    resumed_file: str | None = None
    unusable: list[str] = field(default_factory=list)
    world_size: int = 1
    backend: str | None = None

    @property
    def losses(self) -> list[float]:
        """The training loss of every step."""
        return [float(row["loss"]) for row in self.history]

    @property
    def final_loss(self) -> float:
        """The training loss of the last step (NaN without steps)."""
        return self.losses[-1] if self.history else float("nan")

    def load_best(self, model: nn.Module) -> nn.Module:
        """Load the best validated weights into ``model`` (from memory or ``run_dir/best.pt``)."""
        if self.best_state is not None:
            model.load_state_dict(self.best_state["model"])
            load_buffers(model, self.best_state["buffers"])
            return model
        if self.run_dir is not None and (Path(self.run_dir) / "best.pt").is_file():
            load_model(model, Path(self.run_dir) / "best.pt")
            return model
        raise ValueError("this run has no best model: train with val_data to select one")

    def summary(self) -> dict[str, Any]:
        """Return the run in plain data (``train_result.json``)."""
        return {
            "steps": self.steps,
            "strategy": self.strategy,
            "final_loss": self.final_loss,
            "best": self.best,
            "peak_memory_bytes": self.peak_memory_bytes,
            "memory_baseline_bytes": self.memory_baseline_bytes,
            "memory_kind": self.memory_kind,
            "median_step_time_s": self.median_step_time_s,
            "resumed_from": self.resumed_from,
            "resumed_file": self.resumed_file,
            "unusable": self.unusable,
            "run_dir": self.run_dir,
            "world_size": self.world_size,
            "backend": self.backend,
            "options": self.options,
        }
