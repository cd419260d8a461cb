"""Differentiable forward models for computational imaging.

MRI, deblurring, CT and Fourier ptychography as linear operators, with CG and conformance checks.
"""

from physops._blur import Blur, gaussian_kernel
from physops._cg import ConvergenceError, ConvergenceWarning, SolveResult, cg, least_squares
from physops._checks import check_adjoint, check_gradients
from physops._convert import (
    channels_to_complex,
    complex_to_channels,
    complex_to_last_dim,
    last_dim_to_complex,
)
from physops._fft import fftc, ifftc
from physops._linop import Identity, LinearOperator
from physops._mri import FFT, FourierSampling, Sense
from physops._power import power_iteration

# the one place the version is written: hatchling reads it for the wheel (pyproject's
# [tool.hatch.version]), and a source tree on PYTHONPATH (the GPU lane) reports it too
__version__ = "0.2.0"

__all__ = [
    "FFT",
    "Blur",
    "ConvergenceError",
    "ConvergenceWarning",
    "FourierSampling",
    "Identity",
    "LinearOperator",
    "Sense",
    "SolveResult",
    "__version__",
    "cg",
    "channels_to_complex",
    "check_adjoint",
    "check_gradients",
    "complex_to_channels",
    "complex_to_last_dim",
    "fftc",
    "gaussian_kernel",
    "ifftc",
    "last_dim_to_complex",
    "least_squares",
    "power_iteration",
]

# --- issue 3: masks, coil maps, data, CT, Fourier ptychography --------------------------------
from physops._coils import (
    birdcage_maps,
    espirit_maps,
    espirit_maps_sigpy,
    jsense_maps_sigpy,
    rss,
    sense1,
)
from physops._data_anatomy import (
    RealAnatomyDataset,
    real_anatomy_images,
    real_anatomy_volumes,
    simulate_kspace,
    smooth_phase,
)
from physops._data_fastmri import FastMRISliceDataset
from physops._masks import MaskResult, equispaced_mask_1d, random_mask_1d
from physops._masks_2d import kt_mask, poisson_disc_mask
from physops._ptycho import FourierPtychography, led_grid, ptychography_object
from physops._radon import Radon, fbp, uniform_angles

__all__ += [
    "FastMRISliceDataset",
    "FourierPtychography",
    "MaskResult",
    "Radon",
    "RealAnatomyDataset",
    "birdcage_maps",
    "equispaced_mask_1d",
    "espirit_maps",
    "espirit_maps_sigpy",
    "fbp",
    "jsense_maps_sigpy",
    "kt_mask",
    "led_grid",
    "poisson_disc_mask",
    "ptychography_object",
    "random_mask_1d",
    "real_anatomy_images",
    "real_anatomy_volumes",
    "rss",
    "sense1",
    "simulate_kspace",
    "smooth_phase",
    "uniform_angles",
]
