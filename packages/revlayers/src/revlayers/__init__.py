"""Invertible and orthogonal coupling layers, and backprop without stored activations.

The layers are :class:`InvertibleModule` s (``forward(x, *context)``, ``inverse(y, *context)``);
:class:`ReversibleSequence` chains them and trains the chain with memory independent of depth.
"""

from ._base import InvertibleModule, replaying
from ._checks import check_inverse
from ._coupling import AdditiveCoupling, AffineCoupling
from ._drift import ReverseDiagnostics, auto_tolerance
from ._engine import ReversibleSequence
from ._errors import ConvergenceError, DriftError
from ._householder import HouseholderConv
from ._irim import IRIMBlock, IRIMResidual
from ._precision import full_precision
from ._residual import InverseResult, InvertibleResidual
from ._reverse import ReverseContext, ReverseStep
from ._wrap import Invertible

# the one place the version is written: hatchling reads it for the wheel (pyproject's
# [tool.hatch.version]), and a source tree on PYTHONPATH (the GPU lane) reports it too
__version__ = "0.2.0"

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
    "ReverseContext",
    "ReverseDiagnostics",
    "ReverseStep",
    "ReversibleSequence",
    "__version__",
    "auto_tolerance",
    "check_inverse",
    "full_precision",
    "replaying",
]
