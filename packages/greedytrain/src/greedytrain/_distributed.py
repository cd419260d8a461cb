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

from ._checkpoint import atomic_save, get_rng_state, read_checkpoint, set_rng_state
from ._comm import Channel, RankFailedError, broadcast_tree
from ._split import split_stages
from ._trainer import GreedyTrainer, _as_stages
from ._tree import tree_detach, tree_map_tensors, tree_to
from ._unit import LossFn, OptimizerFactory

__all__ = ["DistributedGreedyTrainer", "RankFailedError"]

PLACEMENTS = ("round_robin", "contiguous")
DATA_MODES = ("per_rank", "broadcast")
_FAILURE_KEY = "memroll-greedytrain/first-failure"


def _not_distributed() -> NoReturn:
    raise NotImplementedError(
        "inference is not distributed: call save(path) here, then build a GreedyTrainer with "
        "the same stages and split, load(path) it and call predict/evaluate"
    )


def _default_store() -> Any:
    # The store torch.distributed was initialised with (torchrun's, or the env:// TCPStore); used
    # only to tell the other ranks which rank failed first. Private in torch, hence the guard.
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:
        return None


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
    **kwargs
        ``split``, ``loss_weights``, ``scheduler_factory``, ``clip_grad_norm``, ``amp``,
        ``amp_dtype``, ``output_fn``, ``module_wrapper``, ``context_to``, ``check_shapes``, as in
        :class:`.GreedyTrainer`.

    Notes
    -----
    A rank whose step raises records "rank r failed ..." in the job's store, destroys its process
    group and raises :class:`RankFailedError`; the ranks talking to it then lose their connection
    and raise :class:`RankFailedError` naming the rank that failed first, so the job stops instead
    of hanging (torchrun also stops the remaining workers once one exits with an error). Resume
    from the latest :meth:`save`. Checkpoints are written by rank 0 in the same format as
    :class:`.GreedyTrainer`'s, so a single process can load them for inference; every rank must see
    the checkpoint path (a shared filesystem).
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
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
            raise ValueError(f"replicas must be an int >= 1, got {replicas!r}")
        if self.world_size % replicas:
            raise ValueError(
                f"replicas={replicas} does not divide the world size {self.world_size}: every "
                "replica needs the same number of ranks (launch a multiple of replicas processes)"
            )
        if placement not in PLACEMENTS:
            raise ValueError(
                f"unknown placement {placement!r}; valid names: {', '.join(map(repr, PLACEMENTS))}"
            )
        if data not in DATA_MODES:
            raise ValueError(
                f"unknown data mode {data!r}; valid names: {', '.join(map(repr, DATA_MODES))}"
            )
        if context_fn is not None and not callable(context_fn):
            raise TypeError(f"context_fn must be callable (context -> context), got {context_fn!r}")
        self.replicas = replicas
        self.positions = self.world_size // replicas
        self.position = self.rank % self.positions
        self.replica = self.rank // self.positions
        self.placement = placement
        self.data = data
        self.context_fn = context_fn
        self.sync_losses = sync_losses
        self.backend = str(dist.get_backend())
        self.device = self._resolve_device(device)

        stage_list = _as_stages(stages)
        n_stages = len(stage_list)
        m_count = n_stages if modules is None else modules
        sizes = split_stages(n_stages, m_count, kwargs.get("split", "even"))
        if self.positions > len(sizes):
            raise ValueError(
                f"{self.world_size} ranks with replicas={replicas} make {self.positions} pipeline "
                f"positions, but there are only {len(sizes)} modules: every position needs a "
                f"module, so use modules >= {self.positions}, more replicas, or fewer processes"
            )
        if placement == "round_robin":
            self._owner = [m % self.positions for m in range(len(sizes))]
        else:
            per_position = split_stages(len(sizes), self.positions, "balanced")
            self._owner = [p for p, count in enumerate(per_position) for _ in range(count)]

        self._store = _default_store()
        self._check_same_configuration(n_stages, sizes)
        super().__init__(stage_list, loss_fn, optimizer_factory, modules, None, **kwargs)
        self._channel = Channel(self.device)
        self._position_group: Any = None
        self._replica_group: Any = None
        # new_group is collective: every rank creates every group, in the same order.
        if replicas > 1:
            for p in range(self.positions):
                group = dist.new_group([q * self.positions + p for q in range(replicas)])
                if p == self.position:
                    self._position_group = group
        if data == "broadcast" and self.positions > 1:
            for q in range(replicas):
                group = dist.new_group([q * self.positions + p for p in range(self.positions)])
                if q == self.replica:
                    self._replica_group = group

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
        """The global rank (in this rank's replica) that trains ``module``."""
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
            f"replicas={self.replicas}, local_modules={self.local_modules}, step={self._step})"
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
            first = self._first_failure()
            if first is not None and isinstance(error, RuntimeError):
                message = f"rank {self.rank} stopped during {what}: {first}"
            else:
                message = (
                    f"rank {self.rank} (pipeline position {self.position}, replica "
                    f"{self.replica}, modules {self.local_modules}) failed during {what} at step "
                    f"{self._step}: {type(error).__name__}: {error}"
                )
                self._record_failure(message)
            self._abort()
            raise RankFailedError(message) from error

    def _first_failure(self) -> str | None:
        if self._store is None:
            return None
        try:
            if self._store.check([_FAILURE_KEY]):
                return bytes(self._store.get(_FAILURE_KEY)).decode()
        except Exception:
            return None
        return None

    def _record_failure(self, message: str) -> None:
        if self._store is None:
            return
        with contextlib.suppress(Exception):
            if not self._store.check([_FAILURE_KEY]):
                self._store.set(_FAILURE_KEY, message)

    def _abort(self) -> None:
        # Closing this rank's connections makes every peer blocked on it raise, so the whole job
        # stops instead of waiting for a message that will never come.
        with contextlib.suppress(Exception):
            if dist.is_initialized():
                dist.destroy_process_group()

    def _lost(self, peer: int, what: str, error: Exception) -> RankFailedError:
        first = self._first_failure()
        if first is not None:
            return RankFailedError(f"rank {self.rank} stopped while {what}: {first}")
        return RankFailedError(
            f"rank {self.rank} lost contact with rank {peer} while {what} ({error}); rank {peer} "
            "has probably failed: see its log"
        )

    # ------------------------------------------------------------------ training
    def _allreduce(self, params: list[nn.Parameter]) -> None:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        wires = [torch.view_as_real(g) if g.is_complex() else g for g in grads]
        by_dtype: dict[torch.dtype, list[int]] = {}
        for i, w in enumerate(wires):
            by_dtype.setdefault(w.dtype, []).append(i)
        for indices in by_dtype.values():
            flat = torch.cat([wires[i].reshape(-1) for i in indices])
            try:
                dist.all_reduce(flat, group=self._position_group)
            except RuntimeError as error:
                raise self._lost(-1, "averaging gradients over replicas", error) from error
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
        """One P-GLEAM step of this rank (collective: every rank calls it for every mini-batch).

        Returns the M per-module losses (averaged over replicas), or NaN for modules of other
        ranks when ``sync_losses=False``.
        """
        with self._guard("train_step"):
            return self._train_step(state0, context, target)

    def _train_step(self, state0: Any, context: Any, target: Any) -> list[float]:
        if self.data == "broadcast" and self.positions > 1:
            source = self.replica * self.positions
            try:
                context, target = broadcast_tree(
                    (context, target),
                    source,
                    self._replica_group,
                    self.device,
                    is_source=self.position == 0,
                )
            except RuntimeError as error:
                raise self._lost(source, "receiving the broadcast mini-batch", error) from error
        if self.context_fn is not None:
            context = self.context_fn(context)
        context = self.context_to(context, self.device)
        target = self.context_to(target, self.device)
        losses = torch.full((self.num_modules,), math.nan, dtype=torch.float64)
        sends: list[tuple[Any, Tensor]] = []
        local: Any = None
        for m in self.local_modules:
            if m == 0:
                if state0 is None:
                    raise ValueError(f"rank {self.rank} trains module 0 and needs state0, got None")
                inp = state0
            elif self._owner[m - 1] == self.position:
                inp = local
            else:
                src = self.owner_of(m - 1)
                try:
                    inp = self._channel.recv(src)
                except RuntimeError as error:
                    raise self._lost(src, f"receiving the input of module {m}", error) from error
            unit = self._units_by_index[m]
            inp = tree_detach(tree_to(inp, self.device))
            out, loss = unit.forward(inp, context, target, self.output_fn, self.device)
            del inp
            out = tree_detach(out)
            if m + 1 < self.num_modules:
                if self._owner[m + 1] == self.position:
                    local = out
                else:
                    dst = self.owner_of(m + 1)
                    try:
                        sends += self._channel.isend(out, dst)
                    except RuntimeError as error:
                        raise self._lost(dst, f"sending the output of module {m}", error) from error
            del out
            if unit.trainable:
                torch.autograd.backward(unit.backward_root(loss))
            unit.step(self._allreduce if self.replicas > 1 else None)
            losses[m] = float(loss.detach())
            del loss
        for work, _ in sends:
            try:
                work.wait()
            except RuntimeError as error:
                raise self._lost(-1, "sending module outputs", error) from error
        del sends
        if self.sync_losses:
            mine = torch.where(torch.isnan(losses), 0.0, losses)
            wire = mine.to(self.device)
            try:
                dist.all_reduce(wire)
            except RuntimeError as error:
                raise self._lost(-1, "collecting the losses", error) from error
            losses = wire.cpu() / self.replicas
        self._step += 1
        return [float(v) for v in losses]

    # ------------------------------------------------------------------ inference
    def predict(self, state0: Any, context: Any, n_stages: int | None = None) -> Any:
        """Not available across ranks: save a checkpoint, load it into a :class:`.GreedyTrainer`."""
        _not_distributed()

    def evaluate(
        self,
        state0: Any,
        context: Any,
        target: Any,
        metric: Callable[[Any, Any], Any] | None = None,
        per: str = "module",
    ) -> list[float]:
        """Not available across ranks: see :meth:`predict`."""
        _not_distributed()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, extra: Any = None) -> dict[str, Any]:
        """Collective: the whole job's state, complete on rank 0 (None on other ranks)."""
        with self._guard("state_dict"):
            local = {}
            if self.replica == 0:
                cpu = torch.device("cpu")
                local = {
                    m: tree_map_tensors(lambda t: t.to(cpu), u.state_dict())
                    for m, u in self._units_by_index.items()
                }
            mine = (local, get_rng_state())
            gathered: list[Any] | None = [None] * self.world_size if self.rank == 0 else None
            dist.gather_object(mine, gathered, dst=0)
            if gathered is None:
                return None  # type: ignore[return-value]
            units: dict[int, Any] = {}
            for part, _ in gathered:
                units.update(part)
            data = self._header()
            data["units"] = [units[m] for m in range(self.num_modules)]
            data["rng"] = [rng for _, rng in gathered]
            data["extra"] = extra
            return data

    def save(self, path: str | os.PathLike[str], extra: Any = None) -> None:
        """Collective: rank 0 writes the job's checkpoint atomically; every rank returns after."""
        data = self.state_dict(extra)
        with self._guard("save"):
            ok = torch.zeros(1, device=self.device)
            if self.rank == 0:
                try:
                    atomic_save(data, path)
                    ok += 1
                except Exception:
                    dist.broadcast(ok, 0)
                    raise
            dist.broadcast(ok, 0)
            if not ok.item():
                raise RankFailedError(f"rank 0 could not write the checkpoint {str(path)!r}")

    def load_state_dict(self, data: dict[str, Any], restore_rng: bool = True) -> Any:
        """Restore this rank's modules, the step and this rank's RNG state from the job's state.

        A checkpoint written by a different number of processes restores its first RNG state on
        every rank."""
        self._check_compatible(data, "the state dict")
        for m, unit in self._units_by_index.items():
            unit.load_state_dict(data["units"][m])
        self._step = int(data["step"])
        if restore_rng:
            states = data["rng"]
            set_rng_state(states[self.rank] if len(states) == self.world_size else states[0])
        return data.get("extra")

    def load(self, path: str | os.PathLike[str], restore_rng: bool = True) -> Any:
        """Every rank reads the checkpoint (it must see ``path``) and takes its own part."""
        return self.load_state_dict(read_checkpoint(path), restore_rng=restore_rng)
