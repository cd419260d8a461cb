"""Invertible and orthogonal coupling layers, and backprop without stored activations.

The layers are :class:`InvertibleModule` s (``forward(x, *context)``, ``inverse(y, *context)``);
:class:`ReversibleSequence` chains them and trains the chain with memory independent of depth.
"""

from importlib.metadata import PackageNotFoundError, version

from ._base import InvertibleModule, replaying
from ._checks import check_inverse
from ._coupling import AdditiveCoupling, AffineCoupling
from ._engine import ReversibleSequence
from ._errors import ConvergenceError, DriftError
from ._householder import HouseholderConv
from ._irim import IRIMBlock, IRIMResidual
from ._residual import InverseResult, InvertibleResidual
from ._wrap import Invertible

try:
    __version__ = version("memroll-revlayers")
except PackageNotFoundError:  # running from a source tree via PYTHONPATH (the GPU lane)
    __version__ = "0+unknown"

__all__ = [
    "AdditiveCoupling",
    "AffineCoupling",
    "ConvergenceError",
    "DriftError",
    "HouseholderConv",
    "IRIMBlock",
    "IRIMResidual",
    "InverseResult",
    "Invertible",
    "InvertibleModule",
    "InvertibleResidual",
    "ReversibleSequence",
    "__version__",
    "check_inverse",
    "replaying",
]
