"""Knowing when a rank of a torch.distributed job has died or hangs, and saying which.

gloo reports a peer whose process died only as a closed connection ("Connection closed by peer
[127.0.0.1]:36260", naming no rank), and does not notice at all a peer that hangs, is stopped or
whose machine vanished: an operation waiting for it waits for the process group's timeout (30
minutes by default). So every rank of a :class:`~greedytrain.distributed.DistributedGreedyTrainer`
runs a heartbeat thread that increments a counter in the job's key-value store (the one
``init_process_group`` made: torchrun's, or the ``env://`` / ``tcp://`` TCPStore) every
``interval`` seconds, and waits for every communication in a helper thread while reading the other
ranks' counters. A rank whose counter has not moved for ``peer_timeout`` seconds is declared gone;
a failed communication is explained by the peer whose counter stopped. The rank that finds out
records it in the store, closes its process group (so its own peers stop too) and raises
:class:`RankFailedError` naming the rank at fault. A rank that raises records its own error first,
so every other rank reports the root cause rather than a lost connection.

Store keys live under ``memroll-greedytrain/<n>/``, ``n`` counting the trainers built in this
process (the same on every rank, since construction is collective).
"""

from __future__ import annotations

import contextlib
import itertools
import re
import threading
import time
import weakref
from typing import Any

import torch.distributed as dist

__all__ = ["PeerMonitor", "RankFailedError", "default_store"]

_TRAINERS = itertools.count()


class RankFailedError(RuntimeError):
    """A rank of a distributed greedy-training job failed or died; the message names the rank."""


def default_store() -> Any:
    """Return the store ``torch.distributed`` was initialised with, or None if unavailable.

    torch has no public accessor for it (hence the guarded private call); without a store the
    job still runs, but a rank that dies without raising is only noticed at the process group's
    timeout.
    """
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:
        return None


def _short(error: BaseException) -> str:
    """Return the first sentence of ``error``'s message, without gloo's source location."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    text = re.sub(r"^\[[^\]]*\] ", "", text)
    return text.split(". ")[0]


def _beat(store: Any, key: str, interval: float, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            store.add(key, 1)
        except Exception:  # the store is gone (its host died): peers will see this rank stop
            return
        stop.wait(interval)


class PeerMonitor:
    """Heartbeats, the job's first-failure record, and waits that notice dead peers.

    Parameters
    ----------
    store
        The job's key-value store (None: no heartbeats, waits block until the work ends).
    rank, world_size
        This process and the job.
    peer_timeout
        Seconds without a heartbeat after which a rank is declared gone.
    interval
        Seconds between two heartbeats of this rank.
    """

    def __init__(
        self, store: Any, rank: int, world_size: int, peer_timeout: float, interval: float
    ) -> None:
        self.store, self.rank, self.world_size = store, rank, world_size
        self.peer_timeout, self.interval = peer_timeout, interval
        self.prefix = f"memroll-greedytrain/{next(_TRAINERS)}"
        self._stop = threading.Event()
        self._seen: dict[int, tuple[int, float]] = {}
        if store is not None:
            store.add(self._key("beat", rank), 1)
            thread = threading.Thread(
                target=_beat,
                args=(store, self._key("beat", rank), interval, self._stop),
                name=f"greedytrain-heartbeat-{rank}",
                daemon=True,
            )
            thread.start()
        # stop beating when the trainer holding this monitor is garbage collected
        weakref.finalize(self, self._stop.set)

    def _key(self, kind: str, rank: int | None = None) -> str:
        return f"{self.prefix}/{kind}" + ("" if rank is None else f"/{rank}")

    def close(self, left: bool = True) -> None:
        """Stop the heartbeat; with ``left``, tell the other ranks it was on purpose."""
        if self._stop.is_set():
            return
        self._stop.set()
        if left and self.store is not None:
            with contextlib.suppress(Exception):
                self.store.set(self._key("left", self.rank), "1")

    # ------------------------------------------------------------------ the failure record
    def first_failure(self) -> str | None:
        """Return the first failure a rank recorded, or None."""
        if self.store is None:
            return None
        try:
            if self.store.check([self._key("failure")]):
                return bytes(self.store.get(self._key("failure"))).decode()
        except Exception:
            return None
        return None

    def record_failure(self, message: str) -> None:
        """Record ``message`` as the job's first failure (unless one is recorded already)."""
        if self.store is None:
            return
        with contextlib.suppress(Exception):
            self.store.compare_set(self._key("failure"), "", message)

    # ------------------------------------------------------------------ liveness
    def _silent(self) -> dict[int, float]:
        """Return every peer with the seconds since its heartbeat counter last moved.

        Raises ``RankFailedError`` when the store itself stopped answering.
        """
        now = time.monotonic()
        silent: dict[int, float] = {}
        for peer in range(self.world_size):
            if peer == self.rank:
                continue
            try:
                count = int(self.store.add(self._key("beat", peer), 0))
            except Exception as error:
                raise RankFailedError(
                    f"rank {self.rank} lost the job's key-value store ({_short(error)}); it runs "
                    "in rank 0's process unless torchrun hosts it, so rank 0 has probably died: "
                    "see its log"
                ) from error
            last_count, since = self._seen.get(peer, (count, now))
            if count != last_count:
                since = now
            self._seen[peer] = (count, since)
            silent[peer] = now - since
        return silent

    def _gone(self, what: str) -> RankFailedError | None:
        """Return the error to raise if a peer has been silent longer than ``peer_timeout``."""
        silent = {p: age for p, age in self._silent().items() if age >= self.peer_timeout}
        if not silent:
            return None
        peer, age = max(silent.items(), key=lambda item: item[1])
        try:
            left = bool(self.store.check([self._key("left", peer)]))
        except Exception:
            left = False
        why = (
            "closed its trainer and left the job"
            if left
            else f"sent no heartbeat for {age:.1f} s (peer_timeout): it was killed, crashed or "
            "hangs; see its log"
        )
        message = f"rank {peer} is gone: it {why}"
        self.record_failure(message)
        return RankFailedError(f"rank {self.rank} stopped while {what}: {message}")

    def wait(self, work: Any, what: str) -> None:
        """Wait for ``work`` (an async torch.distributed request), watching the other ranks.

        The request is waited for in a helper thread (gloo's point-to-point requests only make
        progress inside ``wait()``, so they cannot be polled), while this thread checks the
        heartbeats every ``interval``. Raises ``RankFailedError`` naming the rank at fault when a
        rank recorded a failure, when a peer stopped beating for ``peer_timeout`` seconds, or
        when the request itself failed. A helper left waiting on a dead peer is released when the
        process group is destroyed (or ends with the process; it is a daemon).
        """
        if self.store is None:
            try:
                work.wait()
            except Exception as error:
                raise self.explain(what, error) from error
            return
        done = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            try:
                work.wait()
            except BaseException as error:
                errors.append(error)
            finally:
                done.set()

        threading.Thread(target=run, name="greedytrain-wait", daemon=True).start()
        while not done.wait(self.interval):
            self.check(what)
        if errors:
            failure = errors[0]
            if not isinstance(failure, Exception):
                raise failure
            raise self.explain(what, failure) from failure

    def check(self, what: str) -> None:
        """Raise ``RankFailedError`` if a rank recorded a failure or stopped beating."""
        first = self.first_failure()
        if first is not None:
            raise RankFailedError(f"rank {self.rank} stopped while {what}: {first}")
        gone = self._gone(what)
        if gone is not None:
            raise gone

    def explain(self, what: str, error: Exception, peer: int | None = None) -> RankFailedError:
        """Turn a failed communication into an error naming the rank at fault.

        Looks for a recorded failure, then (for up to three heartbeat intervals) for a peer that
        stopped beating; falls back to ``peer`` (or "a peer") when every rank still beats.
        """
        deadline = time.monotonic() + 3 * self.interval
        while True:
            first = self.first_failure()
            if first is not None:
                return RankFailedError(f"rank {self.rank} stopped while {what}: {first}")
            if self.store is None or time.monotonic() >= deadline:
                break
            silent = self._silent()
            stopped = [p for p, age in silent.items() if age >= 2 * self.interval]
            if stopped:
                message = (
                    f"rank {stopped[0]} is gone: its heartbeat stopped and the connection to it "
                    f"failed ({_short(error)}); it was killed or crashed: see its log"
                )
                self.record_failure(message)
                return RankFailedError(f"rank {self.rank} stopped while {what}: {message}")
            time.sleep(self.interval / 2)
        who = f"rank {peer}" if peer is not None else "a peer rank"
        return RankFailedError(
            f"rank {self.rank} lost contact with {who} while {what} ({_short(error)}); {who} "
            "has probably failed: see its log"
        )
