"""When one rank of a training job fails, every other rank stops and names it.

gloo reports a peer that went away only as a closed connection ("Connection closed by peer
[127.0.0.1]:36260", no rank), so a rank of :func:`unrolled.train` under ``torchrun`` that raised
or was killed would leave the others with an anonymous error, or waiting. :class:`FailureWatch`
uses the job's key-value store (the one ``init_process_group`` made):

* every rank beats a counter there from a background thread (every ``interval`` seconds);
* a rank whose own code raises records ``"rank r failed <doing what> at step s: <error>"`` as
  the job's first failure, destroys its process group (so its peers' pending communication
  fails at once instead of waiting for the group's timeout) and raises its own error;
* a rank whose communication failed reads the record, or else finds the rank whose heartbeat
  stopped (killed, crashed), and raises :class:`greedytrain.distributed.RankFailedError`
  ``"rank 0 stopped during the training step at step 4: rank 1 failed during the training step
  at step 4: FloatingPointError: ..."``.

A rank that hangs (alive, not communicating) is not detected: the process group's timeout
(30 minutes) applies.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import torch.distributed as dist

from greedytrain.distributed import RankFailedError

from ._distributed import World

__all__ = ["FailureWatch", "RankFailedError"]

_JOBS = itertools.count()
#: Words of errors raised by a failed communication (gloo, NCCL, the store).
_COMMUNICATION = (
    "connection closed",
    "connection reset",
    "broken pipe",
    "gloo",
    "nccl",
    "timed out",
    "socket",
    "process group",
)


def _job_store() -> Any:
    """Return the store ``torch.distributed`` was initialised with, or ``None``.

    torch has no public accessor for it (the guarded private call, as greedytrain's peer monitor
    does); without a store, failures are still raised, but peers cannot name the rank at fault.
    """
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:
        return None


def _communication_error(error: BaseException) -> bool:
    if isinstance(error, (dist.DistError, RankFailedError)):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(word in text for word in _COMMUNICATION)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _beat(store: Any, key: str, interval: float, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            store.add(key, 1)
        except Exception:  # the store is gone: the peers see this rank stop
            return
        stop.wait(interval)


class FailureWatch:
    """The failure record and heartbeats of one :func:`unrolled.train` job (see the module).

    Parameters
    ----------
    world:
        The job; with one process the watch does nothing.
    where:
        ``where() -> str``: what this rank is doing now (``"during the training step at step
        3"``), for the messages.
    interval:
        Seconds between heartbeats; a peer silent for three intervals after a failed
        communication is named as gone.
    release:
        Called when this rank stops: drop every reference to the process group (the
        DistributedDataParallel wrapper), so that its connections close and the peers waiting
        on them fail at once. gloo closes a connection only when the group object is freed (or
        the process exits); destroying or aborting the group does not.
    """

    def __init__(
        self,
        world: World,
        where: Callable[[], str],
        interval: float = 1.0,
        release: Callable[[], None] | None = None,
    ):
        self.world, self.where, self.interval = world, where, interval
        self.release = release
        self.store = _job_store() if world.distributed else None
        self.prefix = f"memroll-unrolled/{next(_JOBS)}" if world.distributed else ""
        self._stop = threading.Event()
        self._seen: dict[int, tuple[int, float]] = {}
        if self.store is not None:
            key = self._key("beat", world.rank)
            self.store.add(key, 1)
            threading.Thread(
                target=_beat,
                args=(self.store, key, interval, self._stop),
                name=f"unrolled-heartbeat-{world.rank}",
                daemon=True,
            ).start()

    def _key(self, kind: str, rank: int | None = None) -> str:
        return f"{self.prefix}/{kind}" + ("" if rank is None else f"/{rank}")

    def close(self) -> None:
        """Stop this rank's heartbeat."""
        self._stop.set()

    # ------------------------------------------------------------------ the record
    def first_failure(self) -> str | None:
        """Return the job's first recorded failure, or ``None``."""
        if self.store is None:
            return None
        try:
            if self.store.check([self._key("failure")]):
                return bytes(self.store.get(self._key("failure"))).decode()
        except Exception:
            return None
        return None

    def record(self, message: str) -> None:
        """Record ``message`` as the job's first failure (unless one is recorded already)."""
        if self.store is not None:
            with contextlib.suppress(Exception):
                self.store.compare_set(self._key("failure"), "", message)

    def _silent_peer(self) -> int | None:
        """Return a peer whose heartbeat has not moved for three intervals, or ``None``."""
        now = time.monotonic()
        if self.store is None:
            return None
        for peer in range(self.world.size):
            if peer == self.world.rank:
                continue
            try:
                count = int(self.store.add(self._key("beat", peer), 0))
            except Exception:
                return 0  # the store lives in rank 0's process unless torchrun hosts it
            last, since = self._seen.get(peer, (count, now))
            since = now if count != last else since
            self._seen[peer] = (count, since)
            if now - since >= 3 * self.interval:
                return peer
        return None

    def _cause(self) -> str | None:
        """Wait a few heartbeats for a recorded failure or a silent peer; describe it."""
        if self.store is None:
            return None
        deadline = time.monotonic() + 5 * self.interval
        while time.monotonic() < deadline:
            first = self.first_failure()
            if first is not None:
                return first
            peer = self._silent_peer()
            if peer is not None:
                message = (
                    f"rank {peer} is gone: its heartbeat stopped (killed, crashed or out of "
                    "memory; see its log)"
                )
                self.record(message)
                return message
            time.sleep(self.interval / 2)
        return self.first_failure()

    # ------------------------------------------------------------------ the guard
    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Run the block; on an error, stop this rank the way the module docstring says."""
        try:
            yield
        except BaseException as error:
            if not self.world.distributed:
                raise
            self._handle(error)
            # the traceback's finished frames would keep the process group alive (see release)
            traceback.clear_frames(error.__traceback__)
            gc.collect()
            raise

    def _handle(self, error: BaseException) -> None:
        me = self.world.rank
        if isinstance(error, RankFailedError):  # greedytrain's, which names the rank already
            self.record(str(error))
        elif not _communication_error(error):  # this rank's own failure
            self.record(
                f"rank {me} failed {self.where()}: {type(error).__name__}: {_first_line(error)}"
            )
        else:
            first = self.first_failure() or self._cause()
            if first is not None and not first.startswith(f"rank {me} "):
                self.abort()
                raise RankFailedError(f"rank {me} stopped {self.where()}: {first}") from error
        self.abort()

    def abort(self) -> None:
        """Stop the heartbeat and close this rank's connections (its peers stop waiting)."""
        self.close()
        if self.release is not None:
            with contextlib.suppress(Exception):
                self.release()
        with contextlib.suppress(Exception):
            if dist.is_initialized():
                dist.destroy_process_group()
