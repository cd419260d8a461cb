"""GLEAM greedy module-wise training and P-GLEAM across devices and processes for PyTorch.

``GreedyTrainer`` trains the N stages of an unrolled network as M modules, each on its own loss
with its own optimizer, feeding the next module the detached output (GLEAM, Alg. 1), on one or
several devices (P-GLEAM, Alg. 2). ``greedytrain.distributed`` runs the same updates over
torch.distributed processes.
"""

from importlib.metadata import PackageNotFoundError, version

from . import distributed
from ._checkpoint import atomic_save
from ._split import StageSequence, split_stages
from ._trainer import GreedyTrainer

try:
    __version__ = version("memroll-greedytrain")
except PackageNotFoundError:  # running from a source tree via PYTHONPATH (the GPU lane)
    __version__ = "0+unknown"

__all__ = [
    "GreedyTrainer",
    "StageSequence",
    "__version__",
    "atomic_save",
    "distributed",
    "split_stages",
]
