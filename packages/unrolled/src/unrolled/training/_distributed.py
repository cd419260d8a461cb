r"""Training on several processes: the job (:class:`World`), the data each rank takes, collectives.

:func:`unrolled.train` runs under ``torchrun`` (or in processes whose ``torch.distributed``
process group the user initialised). With W processes:

* ``batch_size`` stays the *global* batch: step :math:`s` draws the same indices as a 1-process
  run (:func:`~unrolled.batch_indices`) and rank :math:`r` takes its share
  (:func:`rank_share`), so the gradients DistributedDataParallel averages are those of the whole
  batch, and a W-process run equals the 1-process run up to the order of float reductions;
* validation splits the validation samples into whole *volumes* per rank, balanced by slice
  count, with the same number of batches on every rank (:func:`validation_batches`);
  :func:`volume_ids` reads a dataset's volumes from its optional ``volume_ids()`` method (one
  label per index, e.g. a fastMRI file name), else every index is its own volume;
* rank 0 alone reads and writes the run folder; what it decides (a refusal, a resumed
  checkpoint) reaches the others through :meth:`World.agree`; a resumed job restores every
  rank's RNG state (the checkpoint's ``rng_ranks``);
* a rank that fails stops the others with its name (:mod:`._failures`).

The engines (:mod:`._engines`) do the rest: DistributedDataParallel for the plain strategies,
P-GLEAM for ``"greedy"``.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler

from .._strategy import Strategy
from ._evaluate import METRICS, evaluate
from ._options import StepSampler, TrainOptions

__all__ = [
    "SharedSteps",
    "VolumeIndexed",
    "World",
    "check_share",
    "connect",
    "own_rng_state",
    "rank_share",
    "resolve_device",
    "step_loader",
    "validation_batches",
    "validation_means",
    "volume_ids",
]

T = TypeVar("T")
#: Errors a refusal on rank 0 becomes on every rank (:meth:`World.agree`).
_AGREED_ERRORS: dict[str, type[Exception]] = {
    "ValueError": ValueError,
    "TypeError": TypeError,
    "FileNotFoundError": FileNotFoundError,
}


class VolumeIndexed:
    """The optional protocol of a dataset whose samples are slices of volumes.

    ``volume_ids()`` returns one hashable label per index (``len(dataset)`` of them, e.g. the
    fastMRI file of each slice). Distributed validation keeps every volume on one rank (whole
    volumes, so per-volume metrics need no gathering of slices). Datasets without it count
    every index as its own volume.
    """

    def volume_ids(self) -> Sequence[Hashable]:  # pragma: no cover - protocol
        raise NotImplementedError


def volume_ids(data: Any, n: int) -> list[Hashable]:
    """Return the volume of each of the first ``n`` indices of ``data`` (:class:`VolumeIndexed`).

    Raises ``ValueError`` when ``data.volume_ids()`` does not give one label per index.
    """
    method = getattr(data, "volume_ids", None)
    if not callable(method):
        return list(range(n))
    labels = list(method())
    if len(labels) < n:
        raise ValueError(
            f"{type(data).__name__}.volume_ids() returned {len(labels)} labels for "
            f"{n} samples: it must give one volume label per index"
        )
    return labels[:n]


def rank_share(indices: Sequence[int], part: int, parts: int) -> list[int]:
    """Return share ``part`` of ``parts`` of a step's global batch ``indices`` (contiguous)."""
    if len(indices) % parts:
        raise ValueError(
            f"a batch of {len(indices)} samples does not split evenly over {parts} processes"
        )
    size = len(indices) // parts
    return [int(i) for i in indices[part * size : (part + 1) * size]]


class SharedSteps(Sampler[list[int]]):
    """Yield this rank's share (:func:`rank_share`) of every step a batch sampler yields."""

    def __init__(self, steps: Sampler[list[int]], part: int, parts: int):
        self.steps, self.part, self.parts = steps, part, parts

    def __iter__(self) -> Iterator[list[int]]:
        for indices in self.steps:
            yield rank_share(indices, self.part, self.parts)

    def __len__(self) -> int:
        return len(self.steps)  # type: ignore[arg-type]


def validation_batches(
    volumes: Sequence[Hashable], batch_size: int, rank: int, world_size: int
) -> list[list[int]]:
    """Return rank ``rank``'s validation batches (lists of indices into ``volumes``).

    Whole volumes go to ranks, largest first onto the rank with the fewest slices so far (ties
    to the lowest rank), so the ranks' loads differ by at most one volume; with fewer volumes
    than ranks the slices themselves are split. Every rank gets the same number of batches
    (``ceil(max_load / batch_size)``), its slices spread evenly over them, so no rank waits in a
    collective for another's extra batch (fastMRI issue 48). A rank with fewer slices than
    batches gets empty batches at the end.
    """
    order: dict[Hashable, list[int]] = {}
    for index, volume in enumerate(volumes):
        order.setdefault(volume, []).append(index)
    groups = list(order.values())
    if len(groups) < world_size:
        groups = [[i] for i in range(len(volumes))]
    loads = [0] * world_size
    owned: list[list[int]] = [[] for _ in range(world_size)]
    for group in sorted(groups, key=lambda g: (-len(g), g[0])):
        target = min(range(world_size), key=lambda r: (loads[r], r))
        owned[target] += group
        loads[target] += len(group)
    count = -(-max(loads) // batch_size) if max(loads) else 0
    mine = sorted(owned[rank])
    sizes = [len(mine) // count + (k < len(mine) % count) for k in range(count)] if count else []
    batches, start = [], 0
    for size in sizes:
        batches.append(mine[start : start + size])
        start += size
    return batches


# ------------------------------------------------------------------------------------------------
# the job
# ------------------------------------------------------------------------------------------------
@dataclass
class World:
    """Where this process stands in the job.

    Attributes
    ----------
    rank, size:
        The global rank and the world size (``0`` and ``1`` in a plain process).
    local_rank:
        The rank on this machine (torchrun's ``LOCAL_RANK``): the GPU of ``device="cuda"``.
    backend:
        ``"gloo"``, ``"nccl"``, ... (``None`` in a plain process).
    owned:
        Whether :func:`unrolled.train` initialised the process group (and so destroys it).
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owned: bool = False

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that reads and writes the run folder."""
        return self.rank == 0

    def device(self, name: str) -> str:
        """Return this rank's device: ``"cuda"`` becomes ``"cuda:<local_rank>"`` in a job."""
        if self.distributed and name == "cuda":
            return f"cuda:{self.local_rank}"
        return name

    # ------------------------------------------------------------------ collectives
    def _comm_device(self) -> torch.device:
        if self.backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def agree(self, decide: Callable[[], T]) -> T:
        """Run ``decide`` on rank 0 and give every rank its result (or its refusal).

        The result travels pickled; a ``ValueError``, ``TypeError`` or ``FileNotFoundError`` (or a
        subclass) on rank 0 is raised with the same message on every rank, as that class (any
        other error on rank 0 is raised there and reported to the others as a failure of rank
        0).
        """
        if not self.distributed:
            return decide()
        box: list[Any] = [None]
        failure: BaseException | None = None
        if self.is_main:
            try:
                box[0] = ("ok", decide())
            except tuple(_AGREED_ERRORS.values()) as error:
                kind = next(n for n, c in _AGREED_ERRORS.items() if isinstance(error, c))
                box[0] = ("error", kind, str(error))
                failure = error
            except BaseException as error:
                box[0] = ("failed", f"{type(error).__name__}: {error}")
                failure = error
        dist.broadcast_object_list(box, src=0, device=self._comm_device())
        if failure is not None:
            raise failure
        kind, *rest = box[0]
        if kind == "error":
            name, message = rest
            raise _AGREED_ERRORS[name](message)
        if kind == "failed":
            raise RuntimeError(f"rank 0 failed: {rest[0]}")
        return rest[0]

    def mean(self, value: Tensor) -> Tensor:
        """Return the mean of a tensor over the ranks (a copy; ``value`` itself unchanged)."""
        if not self.distributed:
            return value.detach().clone()
        wire = value.detach().to(self._comm_device(), torch.float64).clone()
        dist.all_reduce(wire)
        return (wire / self.size).to(value.device)

    def barrier(self) -> None:
        """Wait until every rank arrived here (a tiny all-reduce)."""
        if self.distributed:
            dist.all_reduce(torch.zeros(1, device=self._comm_device()))

    def gather(self, obj: Any) -> list[Any]:
        """Return every rank's ``obj`` (pickled), in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_tensors(self, tensors: Sequence[Tensor], src: int = 0) -> None:
        """Overwrite ``tensors`` on every rank with rank ``src``'s (in place; complex as real)."""
        if not self.distributed:
            return
        for tensor in tensors:
            wire = torch.view_as_real(tensor) if tensor.is_complex() else tensor
            moved = wire.detach().to(self._comm_device())
            dist.broadcast(moved, src=src)
            if moved.data_ptr() != wire.data_ptr():
                with torch.no_grad():
                    wire.copy_(moved)

    def broadcast_module(self, module: nn.Module, src: int = 0) -> None:
        """Give every rank rank ``src``'s parameters and buffers of ``module``."""
        self.broadcast_tensors([*module.parameters(), *module.buffers()], src)

    def close(self) -> None:
        """Destroy the process group if :func:`unrolled.train` created it."""
        if self.owned and dist.is_initialized():
            dist.destroy_process_group()
        self.owned = False


def check_share(opts: TrainOptions, strategy: Strategy, world: World) -> None:
    """Refuse a global batch that does not split evenly over the ranks (or greedy replicas)."""
    if not world.distributed:
        if strategy.replicas != 1:
            raise ValueError(
                f"replicas={strategy.replicas} splits P-GLEAM into data-parallel pipelines of "
                "torch.distributed ranks; this process runs alone: launch with torchrun, or "
                "leave replicas=1"
            )
        return
    if strategy.devices is not None:
        raise ValueError(
            f"devices={list(strategy.devices)} spreads greedy modules over the devices of one "
            f"process, but this is rank {world.rank} of {world.size} (torchrun), which spreads "
            "them over the ranks: leave devices unset"
        )
    parts = strategy.replicas if strategy.name == "greedy" else world.size
    who = f"{parts} pipeline replicas" if strategy.name == "greedy" else f"{parts} processes"
    if opts.batch_size % parts:
        raise ValueError(
            f"batch_size={opts.batch_size} is the global batch, split evenly over {who}: use a "
            f"multiple of {parts}"
        )


def own_rng_state(saved: dict[str, Any], world: World) -> dict[str, Any]:
    """Return this rank's RNG state in a checkpoint (rank 0's when the job had another size)."""
    ranks = saved.get("rng_ranks")
    if ranks is not None and len(ranks) == world.size:
        return ranks[world.rank]
    return saved["rng"]


def validation_means(
    model: nn.Module,
    data: Any,
    world: World,
    *,
    batch_size: int,
    max_samples: int | None,
    **options: Any,
) -> dict[str, float]:
    """Return mean PSNR, SSIM, nRMSE of the first ``max_samples`` samples of ``data`` (all ranks).

    In a job each rank scores its :func:`validation_batches` and the rows are gathered and
    averaged in dataset order, as one process would (``options``: :func:`evaluate`'s).
    """
    kwargs = {"batch_size": batch_size, "max_samples": max_samples, **options}
    if not world.distributed:
        return evaluate(model, data, **kwargs).mean()
    n = min(len(data), max_samples or len(data))
    batches = validation_batches(volume_ids(data, n), batch_size, world.rank, world.size)
    mine = evaluate(model, data, batches=batches, **kwargs).rows
    rows = sorted((r for part in world.gather(mine) for r in part), key=lambda r: r["sample"])
    return {m: sum(float(r[m]) for r in rows) / len(rows) for m in METRICS}


def resolve_device(name: str) -> torch.device:
    """``name`` as a torch device; a clear error when it is none, or CUDA is missing."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device must name a torch device ('cpu', 'cuda:0'), got {name!r}"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available; use device='cpu'")
    return device


def step_loader(
    data: Any,
    collate: Callable[[list[Any]], Any],
    opts: TrainOptions,
    start: int,
    share: tuple[int, int],
) -> DataLoader:
    """Return the loader of steps ``start .. opts.steps - 1``: this rank's ``share`` of each."""
    steps = StepSampler(start, opts.steps, len(data), opts.batch_size, opts.seed)
    part, parts = share
    return DataLoader(
        data,
        batch_sampler=SharedSteps(steps, part, parts) if parts > 1 else steps,
        collate_fn=collate,
        num_workers=opts.num_workers,
        # a private generator: creating the loader's iterator must not consume the global RNG,
        # or a resumed run would draw different random numbers than an uninterrupted one
        generator=torch.Generator().manual_seed(opts.seed),
    )


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return default if value is None else int(value)
    except ValueError:
        raise ValueError(f"the environment variable {name}={value!r} is not an integer") from None


def connect(device: str, timeout_s: float = 1800.0) -> World:
    """Return the job this process belongs to.

    An initialised ``torch.distributed`` process group is used as it is. Without one, a process
    started by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) initialises it from the
    environment (``env://``), with ``nccl`` for a CUDA ``device`` and ``gloo`` otherwise, and the
    returned :class:`World` owns it. Otherwise the process trains alone.
    """
    local_rank = _env_int("LOCAL_RANK", 0)
    if dist.is_available() and dist.is_initialized():
        return World(
            dist.get_rank(), dist.get_world_size(), local_rank, str(dist.get_backend()), False
        )
    size = _env_int("WORLD_SIZE", 1)
    if size <= 1:
        return World()
    if not dist.is_available():
        raise ValueError(
            f"WORLD_SIZE={size} asks for {size} processes, but this torch was built without "
            "torch.distributed"
        )
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(local_rank)
    backend = "nccl" if cuda else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return World(dist.get_rank(), dist.get_world_size(), local_rank, backend, True)
