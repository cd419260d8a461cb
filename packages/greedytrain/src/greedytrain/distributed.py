"""P-GLEAM over torch.distributed: ``greedytrain.distributed.DistributedGreedyTrainer``.

Launch one process per device with torchrun (``torchrun --nproc-per-node=2 train.py``), call
``torch.distributed.init_process_group("gloo")`` (CPU) or ``("nccl")`` (GPU) in each, then build
the trainer with the same arguments on every rank and call ``train_step`` for every mini-batch.
"""

from ._distributed import DistributedGreedyTrainer
from ._liveness import RankFailedError

__all__ = ["DistributedGreedyTrainer", "RankFailedError"]
