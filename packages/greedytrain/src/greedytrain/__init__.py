"""GLEAM greedy module-wise training and P-GLEAM across devices and processes for PyTorch."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("memroll-greedytrain")
except PackageNotFoundError:  # running from a source tree via PYTHONPATH (the GPU lane)
    __version__ = "0+unknown"

__all__ = ["__version__"]
