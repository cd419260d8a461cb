"""Banach and Anderson fixed-point solvers, implicit gradients and inversion of gradient steps for PyTorch."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("memroll-fixedpoint")
except PackageNotFoundError:  # running from a source tree via PYTHONPATH (the GPU lane)
    __version__ = "0+unknown"

__all__ = ["__version__"]
