"""P-GLEAM over torch.distributed: modules spread over ranks, optionally with data parallelism."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ._checkpoint import atomic_save, checkpoint_header, get_rng_state, read_checkpoint
from ._comm import Channel, broadcast_tree
from ._liveness import PeerMonitor, RankFailedError, default_store
from ._split import split_stages
from ._trainer import GreedyTrainer
from ._tree import tree_detach, tree_map_tensors, tree_to
from ._unit import LossFn, OptimizerFactory
from ._validate import as_stages, callable_or_none, integer, known_name, number

__all__ = ["DistributedGreedyTrainer", "RankFailedError"]

PLACEMENTS = ("round_robin", "contiguous")
DATA_MODES = ("per_rank", "broadcast")


def _not_distributed() -> NoReturn:
    raise NotImplementedError(
        "inference is not distributed: call save(path) here, then build a GreedyTrainer with "
        "the same stages and split, load(path) it and call predict/evaluate"
    )


def _owners(placement: str, modules: int, positions: int) -> list[int]:
    """Return the pipeline position that trains each module."""
    if placement == "round_robin":
        return [m % positions for m in range(modules)]
    per_position = split_stages(modules, positions, "balanced")
    return [p for p, count in enumerate(per_position) for _ in range(count)]


class DistributedGreedyTrainer(GreedyTrainer):
    r"""GLEAM updates with the modules spread over torch.distributed ranks (P-GLEAM, Alg. 2).

    The world of W ranks holds ``replicas`` = R pipeline replicas of P = W / R ranks each. Rank
    ``r`` is pipeline position ``p = r % P`` of replica ``q = r // P`` and trains the modules
    placed on position p: ``m % P == p`` (``placement="round_robin"``, Alg. 2's module-to-GPU
    map) or a contiguous run of about M/P modules (``"contiguous"``). For every mini-batch each
    rank, for each of its modules in order: receives the detached input state from the rank of
    module m - 1 (module 0 takes ``state0``), runs the module's forward and loss, sends the
    detached output on (non-blocking) to the rank of module m + 1, then does its backward pass and
    update while the next rank already computes. With R > 1, each replica gets its own share of
    the batch and the gradients of module m are averaged over the R ranks that hold it (one
    all-reduce per module within its position group) before the update.

    The updates equal single-process :class:`.GreedyTrainer` on the whole batch (up to float
    rounding): a module's input depends only on earlier modules' parameters before their update
    in this step, exactly as in Alg. 1. Randomness inside stages (dropout) is drawn from each
    rank's own generator, so it differs from a single-process run.

    Parameters
    ----------
    stages, loss_fn, optimizer_factory, modules
        As in :class:`.GreedyTrainer`; every rank builds the same stages (same seed) and the same
        configuration (checked at construction). Only a rank's own modules get optimizers and
        are moved to its device.
    replicas
        R, the number of data-parallel pipeline replicas; must divide the world size, and
        P = W / R must not exceed M.
    placement
        ``"round_robin"`` or ``"contiguous"`` (see above).
    data
        ``"per_rank"``: every rank passes its replica's mini-batch to ``train_step`` (ranks other
        than position 0 may pass ``state0=None``). ``"broadcast"``: position 0 of each replica
        passes the mini-batch and the others pass None; context and target are broadcast within
        the replica (tensors as tensors, complex as real views; other leaves pickled).
    context_fn
        Called on every rank as ``context_fn(context) -> context`` after the broadcast (or on the
        given context with ``data="per_rank"``): builds what cannot travel, such as an operator
        ``nn.Module`` made from broadcast coil maps and mask.
    device
        This rank's device. None: ``cuda:LOCAL_RANK`` with the NCCL backend, else the CPU.
    sync_losses
        All-reduce the per-module losses so every rank returns all M of them (one small
        collective per step). False: modules of other ranks read NaN, and ranks need not wait.
    peer_timeout
        Seconds a rank may go without a heartbeat before the others declare it gone and stop
        (see Notes). Keep it above the longest time a healthy process could hold Python's GIL.
    **kwargs
        ``split``, ``loss_weights``, ``scheduler_factory``, ``clip_grad_norm``, ``amp``,
        ``amp_dtype``, ``output_fn``, ``module_wrapper``, ``context_to``, ``check_shapes``, as in
        :class:`.GreedyTrainer`.

    Notes
    -----
    A rank whose step raises records "rank r failed ..." in the job's store, destroys its process
    group and raises :class:`RankFailedError`; the ranks talking to it then raise
    :class:`RankFailedError` naming the rank that failed first. A rank that dies without raising
    (killed by SIGKILL or the OOM killer, a segfault) or hangs stops sending heartbeats: every rank
    runs a heartbeat thread through the job's store and waits for each communication by polling
    it while watching the others' heartbeats, so the ranks waiting for a dead one stop within
    ``peer_timeout`` seconds with "rank r is gone ..." instead of waiting for the process
    group's timeout (gloo does not notice a dead peer by itself). torchrun also stops the
    remaining workers once one exits with an error. Resume from the latest :meth:`save`.

    Checkpoints are written by rank 0 in the same format as :class:`.GreedyTrainer`'s (tensors and
    plain values, read without running code), so a single process can load them for inference;
    every rank must see the checkpoint path (a shared filesystem).
    """

    def __init__(
        self,
        stages: Sequence[nn.Module] | nn.ModuleList | nn.Sequential,
        loss_fn: LossFn | Sequence[LossFn],
        optimizer_factory: OptimizerFactory | Sequence[OptimizerFactory] | None = None,
        modules: int | None = None,
        *,
        replicas: int = 1,
        placement: str = "round_robin",
        data: str = "per_rank",
        context_fn: Callable[[Any], Any] | None = None,
        device: torch.device | str | None = None,
        sync_losses: bool = True,
        peer_timeout: float = 60.0,
        **kwargs: Any,
    ) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "DistributedGreedyTrainer needs an initialised process group: call "
                "torch.distributed.init_process_group('gloo' or 'nccl') first, in a program "
                "started by torchrun (which sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT)"
            )
        if "devices" in kwargs:
            raise TypeError(
                "DistributedGreedyTrainer takes device= (this rank's device), not devices=; "
                "modules are spread over ranks, one device each"
            )
        self.world_size = dist.get_world_size()
        self.rank = dist.get_rank()
        self.replicas = integer(replicas, "replicas", low=1)
        if self.world_size % replicas:
            raise ValueError(
                f"replicas={replicas} does not divide the world size {self.world_size}: every "
                "replica needs the same number of ranks (launch a multiple of replicas processes)"
            )
        self.placement = known_name(placement, "placement", PLACEMENTS)
        self.data = known_name(data, "data mode", DATA_MODES)
        self.context_fn = callable_or_none(context_fn, "context_fn", "context -> context")
        self.peer_timeout = number(peer_timeout, "peer_timeout", low=0, low_open=True)
        self.positions = self.world_size // replicas
        self.position = self.rank % self.positions
        self.replica = self.rank // self.positions
        self.sync_losses = sync_losses
        self.backend = str(dist.get_backend())
        self.device = self._resolve_device(device)

        stage_list = as_stages(stages)
        m_count = len(stage_list) if modules is None else modules
        sizes = split_stages(len(stage_list), m_count, kwargs.get("split", "even"))
        if self.positions > len(sizes):
            raise ValueError(
                f"{self.world_size} ranks with replicas={replicas} make {self.positions} pipeline "
                f"positions, but there are only {len(sizes)} modules: every position needs a "
                f"module, so use modules >= {self.positions}, more replicas, or fewer processes"
            )
        self._owner = _owners(placement, len(sizes), self.positions)
        self._check_same_configuration(len(stage_list), sizes)
        super().__init__(stage_list, loss_fn, optimizer_factory, modules, None, **kwargs)
        self._local_units = {unit.index: unit for unit in self.units}
        self._position_group, self._replica_group = self._make_groups()
        self._monitor = PeerMonitor(
            default_store(),
            self.rank,
            self.world_size,
            self.peer_timeout,
            interval=min(1.0, self.peer_timeout / 10),
        )
        self._channel = Channel(self.device, self._monitor.wait)

    def _make_groups(self) -> tuple[Any, Any]:
        """Create the position groups (gradient averaging) and replica groups (broadcast)."""
        position_group: Any = None
        replica_group: Any = None
        # new_group is collective: every rank creates every group, in the same order.
        if self.replicas > 1:
            for p in range(self.positions):
                group = dist.new_group([q * self.positions + p for q in range(self.replicas)])
                if p == self.position:
                    position_group = group
        if self.data == "broadcast" and self.positions > 1:
            for q in range(self.replicas):
                group = dist.new_group([q * self.positions + p for p in range(self.positions)])
                if q == self.replica:
                    replica_group = group
        return position_group, replica_group

    def close(self) -> None:
        """Stop this rank's heartbeat; call it when this rank is done with the trainer.

        Other ranks still waiting for this one then report that it left rather than died.
        """
        self._monitor.close()

    # ------------------------------------------------------------------ layout
    def _resolve_device(self, device: torch.device | str | None) -> torch.device:
        if device is None:
            if self.backend == "nccl":
                return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            return torch.device("cpu")
        resolved = torch.device(device)
        if self.backend == "nccl" and resolved.type != "cuda":
            raise ValueError(f"the NCCL backend needs a CUDA device, got device={device!r}")
        return resolved

    def _owned_modules(self) -> set[int]:
        return {m for m, p in enumerate(self._owner) if p == self.position}

    def _device_of(self, m: int) -> torch.device | None:
        return self.device if self._owner[m] == self.position else None

    def owner_of(self, module: int) -> int:
        """Return the global rank (in this rank's replica) that trains ``module``."""
        return self.replica * self.positions + self._owner[module]

    @property
    def local_modules(self) -> list[int]:
        """The modules this rank trains."""
        return sorted(self._owned_modules())

    def _check_same_configuration(self, n_stages: int, sizes: list[int]) -> None:
        mine = (n_stages, tuple(sizes), self.replicas, self.placement, self.data)
        everyone: list[Any] = [None] * self.world_size
        dist.all_gather_object(everyone, mine)
        for rank, theirs in enumerate(everyone):
            if theirs != mine:
                raise ValueError(
                    f"rank {rank} was configured with (stages, module sizes, replicas, placement, "
                    f"data) = {theirs}, but rank {self.rank} with {mine}: every rank must build "
                    "the trainer with the same arguments"
                )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(stages={self.num_stages}, modules={self.num_modules}, "
            f"module_sizes={self.module_sizes}, rank={self.rank}/{self.world_size}, "
            f"replicas={self.replicas}, local_modules={self.local_modules}, step={self.step})"
        )

    # ------------------------------------------------------------------ failures
    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Turn any failure into RankFailedError naming the rank, and stop the job."""
        try:
            yield
        except RankFailedError:
            self._abort()
            raise
        except Exception as error:
            message = (
                f"rank {self.rank} (pipeline position {self.position}, replica "
                f"{self.replica}, modules {self.local_modules}) failed during {what} at step "
                f"{self.step}: {type(error).__name__}: {error}"
            )
            self._monitor.record_failure(message)
            self._abort()
            raise RankFailedError(message) from error

    def _abort(self) -> None:
        # Closing this rank's connections makes every peer blocked on it raise, so the whole job
        # stops instead of waiting for a message that will never come.
        self._monitor.close(left=False)
        with contextlib.suppress(Exception):
            if dist.is_initialized():
                dist.destroy_process_group()

    def _wait(self, work: Any, what: str) -> None:
        self._monitor.wait(work, what)

    # ------------------------------------------------------------------ training
    def _allreduce(self, params: list[nn.Parameter]) -> None:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        wires = [torch.view_as_real(g) if g.is_complex() else g for g in grads]
        by_dtype: dict[torch.dtype, list[int]] = {}
        for i, w in enumerate(wires):
            by_dtype.setdefault(w.dtype, []).append(i)
        for indices in by_dtype.values():
            flat = torch.cat([wires[i].reshape(-1) for i in indices])
            work = dist.all_reduce(flat, group=self._position_group, async_op=True)
            self._wait(work, "averaging gradients over replicas")
            flat /= self.replicas
            offset = 0
            for i in indices:
                n = wires[i].numel()
                wires[i].copy_(flat[offset : offset + n].view_as(wires[i]))
                offset += n
        for p, g in zip(params, grads):
            if p.grad is None:
                p.grad = g

    def train_step(self, state0: Any, context: Any, target: Any) -> list[float]:
        """Run one P-GLEAM step of this rank (collective: every rank calls it per mini-batch).

        Returns the M per-module losses (averaged over replicas), or NaN for modules of other
        ranks when ``sync_losses=False``.
        """
        with self._guard("train_step"):
            return self._train_step(state0, context, target)

    def _prepare_batch(self, context: Any, target: Any) -> tuple[Any, Any]:
        """Receive the broadcast mini-batch (if so configured); build and place the context."""
        if self.data == "broadcast" and self.positions > 1:
            context, target = broadcast_tree(
                (context, target),
                self.replica * self.positions,
                self._replica_group,
                self.device,
                self.position == 0,
                self._wait,
            )
        if self.context_fn is not None:
            context = self.context_fn(context)
        return self.context_to(context, self.device), self.context_to(target, self.device)

    def _module_input(self, m: int, state0: Any, local: Any) -> Any:
        """Return module ``m``'s input: ``state0``, this rank's last output, or a peer's."""
        if m == 0:
            if state0 is None:
                raise ValueError(f"rank {self.rank} trains module 0 and needs state0, got None")
            inp = state0
        elif self._owner[m - 1] == self.position:
            inp = local
        else:
            src = self.owner_of(m - 1)
            inp = self._channel.recv(src, f"receiving the input of module {m} from rank {src}")
        return tree_detach(tree_to(inp, self.device))

    def _train_step(self, state0: Any, context: Any, target: Any) -> list[float]:
        context, target = self._prepare_batch(context, target)
        losses = torch.full((self.num_modules,), math.nan, dtype=torch.float64)
        sends: list[tuple[Any, Tensor]] = []
        local: Any = None
        for m in self.local_modules:
            unit = self._local_units[m]
            inp = self._module_input(m, state0, local)
            out, loss = unit.forward(inp, context, target, self.output_fn, self.device)
            local = tree_detach(out)
            del inp, out
            if m + 1 < self.num_modules and self._owner[m + 1] != self.position:
                sends += self._channel.isend(local, self.owner_of(m + 1))
            losses[m] = float(loss.detach())
            if unit.trainable:
                torch.autograd.backward(unit.backward_root(loss))
            del loss  # the last reference to the module's graph
            unit.step(self._allreduce if self.replicas > 1 else None)
        for work, _ in sends:
            self._wait(work, "sending module outputs")
        del sends
        if self.sync_losses:
            losses = self._reduce_losses(losses)
        self.step += 1
        return [float(v) for v in losses]

    def _reduce_losses(self, losses: Tensor) -> Tensor:
        """Sum every rank's losses (others' modules count 0) and average over replicas."""
        wire = torch.where(torch.isnan(losses), 0.0, losses).to(self.device)
        self._wait(dist.all_reduce(wire, async_op=True), "collecting the losses")
        return wire.cpu() / self.replicas

    # ------------------------------------------------------------------ inference
    def predict(self, state0: Any, context: Any, n_stages: int | None = None) -> Any:
        """Not available across ranks: save a checkpoint, load it into a :class:`.GreedyTrainer`."""
        _not_distributed()

    def evaluate(self, *args: Any, **kwargs: Any) -> list[float]:
        """Not available across ranks: see :meth:`predict`."""
        _not_distributed()

    # ------------------------------------------------------------------ checkpoints
    def _barrier(self, what: str) -> None:
        """Wait until every rank arrived (watching for dead ones), before object collectives."""
        self._wait(dist.all_reduce(torch.zeros(1, device=self.device), async_op=True), what)

    def state_dict(self, extra: Any = None) -> dict[str, Any]:
        """Gather the whole job's state (collective): complete on rank 0, None on the others."""
        with self._guard("state_dict"):
            local = {}
            if self.replica == 0:
                cpu = torch.device("cpu")
                local = {
                    m: tree_map_tensors(lambda t: t.to(cpu), u.state_dict())
                    for m, u in self._local_units.items()
                }
            self._barrier("gathering the checkpoint")
            gathered: list[Any] | None = [None] * self.world_size if self.rank == 0 else None
            dist.gather_object((local, get_rng_state()), gathered, dst=0)
            if gathered is None:
                return None  # type: ignore[return-value]
            units: dict[int, Any] = {}
            for part, _ in gathered:
                units.update(part)
            data = checkpoint_header(self.module_sizes, self.step)
            data["units"] = [units[m] for m in range(self.num_modules)]
            data["rng"] = [rng for _, rng in gathered]
            data["extra"] = extra
            return data

    def save(self, path: str | os.PathLike[str], extra: Any = None) -> None:
        """Write the job's checkpoint from rank 0 atomically (collective; all ranks wait for it)."""
        data = self.state_dict(extra)
        with self._guard("save"):
            ok = torch.zeros(1, device=self.device)
            failure: Exception | None = None
            if self.rank == 0:
                try:
                    atomic_save(data, path, weights_only=True)
                    ok += 1
                except Exception as error:  # tell the others before raising it here
                    failure = error
            self._wait(dist.broadcast(ok, 0, async_op=True), "waiting for rank 0 to save")
            if failure is not None:
                raise failure
            if not ok.item():
                raise RankFailedError(f"rank 0 could not write the checkpoint {str(path)!r}")

    def _own_rng_state(self, states: list[Any]) -> Any:
        # a checkpoint written by a different number of processes restores its first state
        return states[self.rank] if len(states) == self.world_size else states[0]

    def load(self, path: str | os.PathLike[str], restore_rng: bool = True) -> Any:
        """Read the checkpoint on every rank (each must see ``path``) and take this rank's part."""
        return self.load_state_dict(read_checkpoint(path), restore_rng=restore_rng)
