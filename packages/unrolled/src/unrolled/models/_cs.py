r"""Compressed-sensing baselines through sigpy, as GLEAM compares against (Sec. V-B2).

2D and 3D MRI: :math:`\ell_1`-wavelet regularised least squares (Lustig et al.),

.. math::

    \hat x = \arg\min_x \tfrac12 \|M F S x - y\|_2^2 + \lambda \|\Psi x\|_1 ,

solved slice by slice by sigpy's :class:`sigpy.mri.app.L1WaveletRecon` (proximal gradient with
Nesterov acceleration, step :math:`1 / \lambda_{\max}(A^H A)`; GLEAM: 100 iterations,
:math:`\lambda = 0.12, 0.07, 0.06` on mridata knees at R = 4, 12, 16 and 0.001 on fastMRI brains at
R = 8, each tuned for its data's scale).

2D+time (cine) MRI: :math:`\ell_1`-wavelet (per frame) plus spatial and temporal total variation,

.. math::

    \hat x = \arg\min_x \tfrac12 \|M F S x - y\|_2^2 + \lambda \|\Psi_{hw} x\|_1
             + \lambda_s \|\nabla_{hw} x\|_1 + \lambda_t \|\nabla_t x\|_1

(anisotropic TV, sigpy's :class:`~sigpy.linop.FiniteDifference`; GLEAM: :math:`\lambda_s = 0.05`,
:math:`\lambda_t = 0.01`, 200 iterations). The sum of three non-smooth terms has no closed-form
proximal operator, so this runs sigpy's :class:`~sigpy.app.LinearLeastSquares` with
``G = Vstack([Psi, grad_hw, grad_t])``, which solves it by the primal-dual hybrid gradient
method (Chambolle-Pock) rather than GLEAM's proximal gradient: same objective, another solver.

The forward model and its data come from the physops operator itself: the coil maps :math:`S`
and the mask :math:`M` of :class:`physops.Sense`, the mask of :class:`physops.FourierSampling`
(single coil: :math:`S = 1`). Any real mask is honoured exactly: sigpy weights the data term
by ``weights ** 0.5`` and scales ``y`` by it too, so we pass ``weights = M**2`` and ``y / M`` on
the sampled set, which makes sigpy's objective the operator's :math:`\tfrac12\|M F S x - y\|^2`
up to a constant.

sigpy is an optional dependency (``pip install 'memroll-unrolled[cs]'``). The solvers run on
the CPU with NumPy, one sample (slice, volume or cine) at a time; the result comes back as a
torch tensor on the input's device, in the input's complex precision. sigpy draws the start
vector of its step-size power iteration from NumPy's global generator; each solve here seeds
it with 0 (and restores its state afterwards), so results are reproducible to the last digit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import physops

from .._validate import finite_number, positive_int

__all__ = ["CS_EXTRA", "CompressedSensing", "cs_reconstruct", "cs_reconstruct_cine"]

#: The extra that installs sigpy with this package.
CS_EXTRA = "memroll-unrolled[cs]"


def _sigpy(who: str) -> Any:
    """Import sigpy (an optional dependency), or say how to install it."""
    try:
        import sigpy
        import sigpy.mri.app
    except ImportError as err:
        raise ImportError(
            f"{who} runs the compressed-sensing baseline through sigpy, an optional dependency "
            f"that is not installed: pip install '{CS_EXTRA}' (or pip install sigpy)"
        ) from err
    return sigpy


# ------------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------------
def _check_weight(name: str, value: object, who: str, positive: bool, hint: str) -> float:
    expected = f"a finite number {'> 0' if positive else '>= 0'} ({hint})"
    return finite_number(f"{who}: {name}", value, low=0, low_open=positive, expected=expected)


def _check_iterations(iterations: object, who: str) -> int:
    hint = " (GLEAM: 100 for l1-wavelet, 200 for cine)"
    return int(positive_int(f"{who}: iterations", iterations, hint))


def _check_wavelet(wavelet: object, who: str) -> str:
    _sigpy(who)
    import pywt  # a dependency of sigpy

    valid = pywt.wavelist(kind="discrete")
    if not isinstance(wavelet, str) or wavelet not in valid:
        raise ValueError(
            f"{who}: wavelet must be a discrete PyWavelets name such as 'db4' (sigpy's default), "
            f"'haar' or 'sym4', got {wavelet!r}"
        )
    return wavelet


def _check_y(y: object, who: str) -> Tensor:
    if not isinstance(y, Tensor):
        raise TypeError(
            f"{who}: y (the k-space measurements) must be a torch.Tensor, got {type(y).__name__}"
        )
    if not y.is_complex():
        raise TypeError(
            f"{who}: y must be complex k-space (complex64 or complex128), got dtype {y.dtype}"
        )
    if not bool(torch.isfinite(y).all()):
        bad = int((~torch.isfinite(y)).sum())
        raise ValueError(
            f"{who}: y contains {bad} non-finite value(s) (NaN or inf); clean the data first"
        )
    return y


def _unsupported(physics: object, who: str) -> TypeError:
    return TypeError(
        f"{who} reconstructs MRI only: physics must be a physops.Sense (multi-coil) or "
        f"physops.FourierSampling (single-coil), got {type(physics).__name__}; the l1-wavelet "
        "baseline of GLEAM has no counterpart here for blur, CT or ptychography"
    )


# ------------------------------------------------------------------------------------------------
# the operator's maps and mask, per sample
# ------------------------------------------------------------------------------------------------
def _sense_maps(physics: physops.Sense) -> Tensor:
    """Return the coil maps ``(Bm, C, *image)`` of a Sense operator as a complex tensor."""
    maps = physics.coil_maps().detach()
    if not maps.is_complex():  # real maps, used as complex (Sense accepts them)
        maps = maps.to(torch.complex128 if maps.dtype == torch.float64 else torch.complex64)
    return maps


def _mask_like(mask: object, shape: tuple[int, ...], who: str) -> Tensor:
    """Return the mask broadcast to ``shape`` = ``(B, *image)`` (ones without a mask)."""
    if not isinstance(mask, Tensor):
        return torch.ones(shape)
    mask = mask.detach()
    mask = mask.reshape((1,) * (len(shape) - mask.ndim) + tuple(mask.shape))
    try:
        return torch.broadcast_to(mask.to(torch.float64), shape)
    except RuntimeError:
        raise ValueError(
            f"{who}: the operator's mask of shape {tuple(mask.shape)} does not broadcast to the "
            f"measurements' (batch, *image) shape {shape}"
        ) from None


def _sense_problems(
    y: Tensor, physics: physops.Sense, image_dims: int, who: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Y ``(B, C, *image)``, maps ``(B, C, *image)`` and mask ``(B, *image)`` as NumPy arrays."""
    coils = physics.coils
    if y.ndim != image_dims + 2 or y.shape[1] != coils:
        raise ValueError(
            f"{who}: y must have shape (batch, coils={coils}, *image) with {image_dims} image "
            f"dimensions for this Sense operator, got {tuple(y.shape)}"
        )
    batch, image = int(y.shape[0]), tuple(int(s) for s in y.shape[2:])
    maps = _sense_maps(physics)
    try:
        maps = torch.broadcast_to(maps, (batch, coils, *image))
    except RuntimeError:
        raise ValueError(
            f"{who}: the operator's maps of shape {tuple(maps.shape)} do not broadcast to the "
            f"measurements' (batch, coils, *image) shape {tuple(y.shape)}: use maps of batch 1 or "
            f"{batch}"
        ) from None
    mask = _mask_like(physics.sampling_mask(), (batch, *image), who)
    return _numpy(y), _numpy(maps.to(y.dtype)), _numpy(mask.to(y.real.dtype))


def _sampling_problems(
    y: Tensor, physics: physops.FourierSampling, image_dims: int, who: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Single coil: every leading index of y a sample; maps of ones ``(B, 1, *image)``."""
    if y.ndim < image_dims + 1:
        raise ValueError(
            f"{who}: y must have shape (batch, *image) with {image_dims} image dimensions, got "
            f"{tuple(y.shape)}"
        )
    image = tuple(int(s) for s in y.shape[-image_dims:])
    flat = y.reshape(-1, *image)
    mask = _mask_like(physics.sampling_mask(), tuple(y.shape), who).reshape(-1, *image)
    ones = torch.ones(flat.shape[0], 1, *image, dtype=y.dtype)
    return _numpy(flat[:, None]), _numpy(ones), _numpy(mask.to(y.real.dtype))


def _numpy(t: Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().to("cpu").resolve_conj().numpy())


def _weighted(y: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sigpy's ``(y, weights)`` for the data term ``||M A x - y||^2`` (module docstring)."""
    safe = np.where(mask != 0, mask, 1).astype(mask.dtype)
    scaled = np.where(mask != 0, y / safe, 0).astype(y.dtype)
    return scaled, (mask * mask).astype(mask.dtype)


@contextlib.contextmanager
def _numpy_seed(seed: int) -> Iterator[None]:
    """Seed NumPy's global generator, and restore its state afterwards.

    sigpy estimates the step size by power iteration from a random vector drawn from NumPy's
    global generator (``sigpy.util.randn``), so unseeded runs differ in the last digits.
    """
    # the legacy global generator is the one sigpy reads
    state = np.random.get_state()  # noqa: NPY002
    np.random.seed(seed)  # noqa: NPY002
    try:
        yield
    finally:
        np.random.set_state(state)  # noqa: NPY002


def _back(images: list[np.ndarray], like: Tensor, shape: tuple[int, ...]) -> Tensor:
    out = torch.from_numpy(np.stack(images)).to(like.dtype).reshape(shape)
    return out.to(like.device)


# ------------------------------------------------------------------------------------------------
# l1-wavelet (2D, 3D)
# ------------------------------------------------------------------------------------------------
def cs_reconstruct(
    y: Tensor,
    physics: nn.Module,
    lamda: float,
    iterations: int = 100,
    *,
    wavelet: str = "db4",
) -> Tensor:
    r"""Return the :math:`\ell_1`-wavelet compressed-sensing reconstruction of each sample.

    Minimises :math:`\tfrac12 \|M F S x - y\|_2^2 + \lambda \|\Psi x\|_1` (module docstring) by
    sigpy's ``L1WaveletRecon`` (proximal gradient, ``iterations`` steps from zero), with the
    maps and mask of ``physics``, one sample at a time.

    Parameters
    ----------
    y:
        k-space as ``physics`` produces it (see the shapes below).
    physics:
        ``physops.Sense`` (2D or 3D; its maps and mask, per sample or shared) or
        ``physops.FourierSampling`` (single coil). 2D+time operators: use
        :func:`cs_reconstruct_cine`.
    lamda:
        The wavelet weight :math:`\lambda > 0`, in the units of the data (GLEAM: 0.12 at
        R = 4 on mridata; see the package README for values measured on the real-anatomy task).
    iterations:
        Proximal-gradient iterations (GLEAM: 100).
    wavelet:
        PyWavelets name of :math:`\Psi` (sigpy's default Daubechies-4).

    Returns
    -------
    Tensor
        ``(batch, *image)``, the dtype of ``y`` (complex64 for complex64 data), on ``y``'s device.

        ==================================  =======================  ======================
        physics                             ``y``                    result
        ==================================  =======================  ======================
        ``Sense`` 2D                        ``(B, C, H, W)``         ``(B, H, W)``
        ``Sense`` 3D                        ``(B, C, D, H, W)``      ``(B, D, H, W)``
        ``FourierSampling(mask, ndim=2)``   ``(*batch, H, W)``       ``(*batch, H, W)``
        ``FourierSampling(mask, ndim=3)``   ``(*batch, D, H, W)``    ``(*batch, D, H, W)``
        ==================================  =======================  ======================

    Raises
    ------
    ImportError
        sigpy is not installed (install the ``memroll-unrolled[cs]`` extra).
    TypeError
        ``physics`` is not a Sense or FourierSampling operator, or ``y`` is not complex.
    ValueError
        A non-positive ``lamda``, bad ``iterations`` or ``wavelet``, NaN in ``y``, shapes that
        do not match the operator, or a 2D+time operator.
    """
    who = "cs_reconstruct"
    y = _check_y(y, who)
    if not isinstance(physics, (physops.Sense, physops.FourierSampling)):
        raise _unsupported(physics, who)
    lam = _check_weight(
        "lamda", lamda, who, True, "the l1-wavelet weight; GLEAM used 0.12 at R = 4 on mridata"
    )
    iterations = _check_iterations(iterations, who)
    sp = _sigpy(who)
    wavelet = _check_wavelet(wavelet, who)
    if isinstance(physics, physops.Sense):
        image_dims = len(physics.image_shape)
        if physics.ndim < image_dims:
            raise ValueError(
                f"{who}: this Sense operator is 2D+time (its FFT runs over the last {physics.ndim} "
                f"of {image_dims} image dimensions); use cs_reconstruct_cine (l1-wavelet with "
                "spatial and temporal TV, GLEAM's cine baseline)"
            )
        ys, maps, masks = _sense_problems(y, physics, image_dims, who)
        shape = (int(y.shape[0]), *y.shape[2:])
    else:
        ys, maps, masks = _sampling_problems(y, physics, physics.ndim, who)
        shape = tuple(y.shape)
    out = []
    for yb, mb, wb in zip(ys, maps, masks):
        data, weights = _weighted(yb, wb)
        with _numpy_seed(0):
            recon = sp.mri.app.L1WaveletRecon(
                data,
                mb,
                lam,
                weights=weights,
                wave_name=wavelet,
                max_iter=iterations,
                show_pbar=False,
            )
            out.append(np.asarray(recon.run()))
    return _back(out, y, shape)


# ------------------------------------------------------------------------------------------------
# l1-wavelet + spatial and temporal TV (2D+time)
# ------------------------------------------------------------------------------------------------
def cs_reconstruct_cine(
    y: Tensor,
    physics: nn.Module,
    lamda: float,
    tv_spatial: float = 0.05,
    tv_temporal: float = 0.01,
    iterations: int = 200,
    *,
    wavelet: str = "db4",
) -> Tensor:
    r"""Compressed sensing of 2D+time (cine) MRI.

    :math:`\ell_1`-wavelet plus spatial and temporal total variation, one cine at a time (GLEAM's
    cine baseline).

    Minimises :math:`\tfrac12\|M F S x - y\|^2 + \lambda \|\Psi_{hw} x\|_1 + \lambda_s
    \|\nabla_{hw} x\|_1 + \lambda_t \|\nabla_t x\|_1` (module docstring) with sigpy's
    ``LinearLeastSquares`` (primal-dual hybrid gradient, ``iterations`` steps from zero).
    :math:`\Psi_{hw}` is a 2D wavelet of every frame; the FFT runs over ``(H, W)`` only.

    Parameters
    ----------
    y:
        k-space: ``(B, C, T, H, W)`` for ``physops.Sense(maps, mask, ndim=2)`` with maps
        ``(B or 1, C, 1 or T, H, W)``; ``(B, T, H, W)`` for ``physops.FourierSampling(mask,
        ndim=2)``.
    physics:
        The 2D+time operator.
    lamda:
        Wavelet weight :math:`\lambda > 0`.
    tv_spatial, tv_temporal:
        :math:`\lambda_s, \lambda_t \ge 0` (GLEAM: 0.05 and 0.01 at R = 10); 0 drops the term.
    iterations:
        Solver iterations (GLEAM: 200).
    wavelet:
        PyWavelets name of :math:`\Psi`.

    Returns
    -------
    Tensor
        ``(B, T, H, W)``, the dtype of ``y``, on ``y``'s device.

    Raises
    ------
    ImportError, TypeError, ValueError
        As :func:`cs_reconstruct`; also for operators or ``y`` without a time axis.
    """
    who = "cs_reconstruct_cine"
    y = _check_y(y, who)
    if not isinstance(physics, (physops.Sense, physops.FourierSampling)):
        raise _unsupported(physics, who)
    lam = _check_weight("lamda", lamda, who, True, "the l1-wavelet weight")
    lam_s = _check_weight("tv_spatial", tv_spatial, who, False, "GLEAM: 0.05")
    lam_t = _check_weight("tv_temporal", tv_temporal, who, False, "GLEAM: 0.01")
    iterations = _check_iterations(iterations, who)
    wavelet = _check_wavelet(wavelet, who)
    if isinstance(physics, physops.Sense):
        if len(physics.image_shape) != 3 or physics.ndim != 2:
            raise ValueError(
                f"{who} needs a 2D+time Sense operator (maps (B, C, T or 1, H, W) and ndim=2, the "
                f"FFT over (H, W) only), got image dimensions {tuple(physics.image_shape)} with "
                f"ndim={physics.ndim}; use cs_reconstruct for 2D and 3D MRI"
            )
        ys, maps, masks = _sense_problems(y, physics, 3, who)
        coils: np.ndarray | None = maps
    else:
        if physics.ndim != 2 or y.ndim != 4:
            raise ValueError(
                f"{who} needs 2D+time single-coil data: physops.FourierSampling(mask, ndim=2) "
                f"and y of shape (B, T, H, W), got ndim={physics.ndim} and y of shape "
                f"{tuple(y.shape)}"
            )
        ys = _numpy(y)
        masks = _numpy(_mask_like(physics.sampling_mask(), tuple(y.shape), who).to(y.real.dtype))
        coils = None
    sp = _sigpy(who)
    out = []
    for b in range(ys.shape[0]):
        frames = ys.shape[-3:]
        if coils is None:
            fourier = sp.linop.FFT(frames, axes=(-2, -1))
            forward = sp.linop.Multiply(frames, masks[b]) * fourier
        else:
            sens = sp.linop.Multiply(frames, coils[b])
            fourier = sp.linop.FFT(sens.oshape, axes=(-2, -1))
            forward = sp.linop.Multiply(fourier.oshape, masks[b][None]) * fourier * sens
        terms = [(sp.linop.Wavelet(frames, axes=(-2, -1), wave_name=wavelet), lam)]
        if lam_s > 0:
            terms.append((sp.linop.FiniteDifference(frames, axes=(-2, -1)), lam_s))
        if lam_t > 0:
            terms.append((sp.linop.FiniteDifference(frames, axes=(-3,)), lam_t))
        G = sp.linop.Vstack([op for op, _ in terms])
        proxg = sp.prox.Stack([sp.prox.L1Reg(op.oshape, weight) for op, weight in terms])
        with _numpy_seed(0):
            app = sp.app.LinearLeastSquares(
                forward, ys[b], proxg=proxg, G=G, max_iter=iterations, show_pbar=False
            )
            out.append(np.asarray(app.run()))
    return _back(out, y, (int(y.shape[0]), *y.shape[-3:]))


class CompressedSensing(nn.Module):
    r"""The CS baseline called like the models: ``x_hat = cs(y, physics, x0=None)``.

    Without TV weights it runs :func:`cs_reconstruct`; with ``tv_spatial`` or ``tv_temporal``
    given, :func:`cs_reconstruct_cine`. It has no parameters; ``x0`` is ignored (the solvers
    start from zero, as sigpy's do). Use it with :func:`unrolled.evaluate` to score the baseline
    on a task.

    Parameters
    ----------
    lamda:
        Wavelet weight :math:`\lambda > 0`.
    iterations:
        Solver iterations (default: 100 for l1-wavelet, 200 for cine, GLEAM's).
    wavelet:
        PyWavelets name.
    tv_spatial, tv_temporal:
        Cine TV weights (``None``: 2D/3D l1-wavelet only).
    """

    def __init__(
        self,
        lamda: float,
        iterations: int | None = None,
        *,
        wavelet: str = "db4",
        tv_spatial: float | None = None,
        tv_temporal: float | None = None,
    ):
        super().__init__()
        self.cine = tv_spatial is not None or tv_temporal is not None
        who = "CompressedSensing"
        self.lamda = _check_weight("lamda", lamda, who, True, "the l1-wavelet weight")
        self.iterations = _check_iterations(
            (200 if self.cine else 100) if iterations is None else iterations, who
        )
        self.wavelet = _check_wavelet(wavelet, who)
        self.tv_spatial = 0.0 if tv_spatial is None else tv_spatial
        self.tv_temporal = 0.0 if tv_temporal is None else tv_temporal

    def forward(self, y: Tensor, physics: nn.Module, x0: Tensor | None = None) -> Tensor:
        if self.cine:
            return cs_reconstruct_cine(
                y,
                physics,
                self.lamda,
                self.tv_spatial,
                self.tv_temporal,
                self.iterations,
                wavelet=self.wavelet,
            )
        return cs_reconstruct(y, physics, self.lamda, self.iterations, wavelet=self.wavelet)

    def extra_repr(self) -> str:
        tv = f", tv_spatial={self.tv_spatial}, tv_temporal={self.tv_temporal}" if self.cine else ""
        return f"lamda={self.lamda}, iterations={self.iterations}, wavelet={self.wavelet!r}{tv}"
