"""Differentiable forward models for computational imaging.

MRI, deblurring, CT and Fourier ptychography as linear operators, with CG and conformance checks.
"""

from importlib.metadata import PackageNotFoundError, version

from physops._fft import fftc, ifftc
from physops._linop import Identity, LinearOperator

try:
    __version__ = version("memroll-physops")
except PackageNotFoundError:  # running from a source tree via PYTHONPATH (the GPU lane)
    __version__ = "0+unknown"

__all__ = [
    "Identity",
    "LinearOperator",
    "__version__",
    "fftc",
    "ifftc",
]
