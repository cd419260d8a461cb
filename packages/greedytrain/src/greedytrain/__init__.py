"""GLEAM greedy module-wise training and P-GLEAM across devices and processes for PyTorch.

``GreedyTrainer`` trains the N stages of an unrolled network as M modules, each on its own loss
with its own optimizer, feeding the next module the detached output (GLEAM, Alg. 1), on one or
several devices (P-GLEAM, Alg. 2). ``greedytrain.distributed`` runs the same updates over
torch.distributed processes.
"""

from . import distributed
from ._checkpoint import atomic_save
from ._split import StageSequence, split_stages
from ._trainer import GreedyTrainer

# the one place the version is written: hatchling reads it for the wheel (pyproject's
# [tool.hatch.version]), and a source tree on PYTHONPATH (the GPU lane) reports it too
__version__ = "0.2.0"

__all__ = [
    "GreedyTrainer",
    "StageSequence",
    "__version__",
    "atomic_save",
    "distributed",
    "split_stages",
]
