"""Invertible and orthogonal coupling layers, and backprop that recomputes activations from outputs instead of storing them."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("memroll-revlayers")
except PackageNotFoundError:  # running from a source tree via PYTHONPATH (the GPU lane)
    __version__ = "0+unknown"

__all__ = ["__version__"]
