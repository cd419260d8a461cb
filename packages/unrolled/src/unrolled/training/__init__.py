"""Training: options, engines, the loop, run folders, model files, evaluation, memory probes."""

from .._engines import Engine, GreedyEngine, PlainEngine, make_engine, model_loss
from .._evaluate import extra_buffers
from .._memory import MemoryProbe, median, timed
from .._run import RunFolder, atomic_path, atomic_write_text, load_buffers

__all__ = [
    "Engine",
    "GreedyEngine",
    "MemoryProbe",
    "PlainEngine",
    "RunFolder",
    "atomic_path",
    "atomic_write_text",
    "extra_buffers",
    "load_buffers",
    "make_engine",
    "median",
    "model_loss",
    "timed",
]
