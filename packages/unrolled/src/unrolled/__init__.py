"""Unrolled physics-based networks (MoDL, PGD, RIM, i-RIM, LUSER, DEQ) trainable with memory-saving strategies."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("memroll-unrolled")
except PackageNotFoundError:  # running from a source tree via PYTHONPATH (the GPU lane)
    __version__ = "0+unknown"

__all__ = ["__version__"]
