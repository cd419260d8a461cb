"""Spectral normalisation whose power iteration runs once per change of the weight.

Two normalisations, both ``torch.nn.utils.parametrize`` parametrisations of the weight:

* :class:`ConvSpectralNorm` (``mode="operator"``, the default of :func:`spectral_norm` for
  convolutions): divides a convolution's kernel by the **operator norm** of the convolution (the
  largest singular value of the linear map ``x -> conv(x)``), estimated by power iteration with
  the convolution and its transpose (Gouk et al. 2021, Behrmann et al. 2019). This is what bounds
  the Lipschitz constant of a network by the product of its layers' bounds.
* :class:`SpectralNorm` (``mode="matrix"``): divides by the spectral norm of the kernel reshaped
  to ``(out_channels, -1)`` (Miyato et al. 2018, as ``torch.nn.utils.parametrizations
  .spectral_norm`` computes it). For a linear layer this *is* the operator norm; for a ``k x k``
  convolution it is not a bound: the operator norm can be up to ``k`` times larger (measured
  2.64, 1.67, 1.61, 1.18 on the four normalised convolutions of a DEQ).

Both differ from torch's in *when* the power iteration runs: torch's runs once per access of the
weight in training mode, so a fixed-point solver that evaluates the same layer fifty times would
see fifty different weights, and a checkpointed or implicit backward pass that evaluates it again
would differentiate yet another one. Ours runs once per change of the weight (after an optimizer
step, a load, a move), so within a training step every evaluation uses the same normalised
weight.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .._validate import nonnegative_int, one_of, positive_int

__all__ = ["ConvSpectralNorm", "SpectralNorm", "spectral_norm"]

_CONV = {1: (F.conv1d, F.conv_transpose1d), 2: (F.conv2d, F.conv_transpose2d),
         3: (F.conv3d, F.conv_transpose3d)}  # fmt: skip
# the probe's side before the first training forward tells the input's shape
_DEFAULT_SIDE = {1: 64, 2: 16, 3: 8}


class SpectralNorm(nn.Module):
    r"""The parametrisation :math:`W \mapsto W / \sigma(W)` of spectral normalisation.

    :math:`\sigma(W) = u^\top W_{\mathrm{mat}} v` with :math:`W_{\mathrm{mat}}` the weight
    reshaped to ``(out_channels, -1)`` and :math:`(u, v)` the singular-vector estimates of the
    power iteration (Miyato et al. 2018), kept as buffers. In training mode one power iteration
    runs when the weight has changed since the last one (``init_iterations`` at construction), so
    the map is a fixed function of the weight between optimizer steps: what a fixed-point solver,
    an implicit backward pass and activation checkpointing all need. In evaluation mode
    :math:`(u, v)` never change.

    Parameters
    ----------
    weight:
        The weight to normalise (for the shapes of the buffers and their first estimate).
    power_iterations:
        Power iterations per change of the weight in training mode (torch's default: 1).
    init_iterations:
        Power iterations at construction (torch's: 15).
    eps:
        Floor of the norms in the normalisations.
    """

    _u: Tensor
    _v: Tensor

    def __init__(
        self,
        weight: Tensor,
        power_iterations: int = 1,
        init_iterations: int = 15,
        eps: float = 1e-12,
    ):
        super().__init__()
        if weight.ndim < 2:
            raise ValueError(
                f"SpectralNorm normalises weights of 2 or more dimensions, got shape "
                f"{tuple(weight.shape)}"
            )
        mat = weight.detach().flatten(1)
        self.power_iterations = power_iterations
        self.eps = eps
        self.register_buffer(
            "_u", F.normalize(mat.new_empty(mat.shape[0]).normal_(), dim=0, eps=eps)
        )
        self.register_buffer(
            "_v", F.normalize(mat.new_empty(mat.shape[1]).normal_(), dim=0, eps=eps)
        )
        # (storage, version counter) of the weight the estimates belong to; Tensor._version
        # counts in-place changes (optimizer steps, load_state_dict), a new storage (.to, .double,
        # .data = ...) changes the pointer
        self._seen: tuple[int, int] | None = None
        self._power(mat, init_iterations)

    @torch.no_grad()
    def _power(self, mat: Tensor, iterations: int) -> None:
        for _ in range(iterations):
            self._v.copy_(F.normalize(mat.mT @ self._u, dim=0, eps=self.eps))
            self._u.copy_(F.normalize(mat @ self._v, dim=0, eps=self.eps))

    # torch.compile runs this eagerly (a graph break): the once-per-change test reads the weight's
    # data pointer and version counter, which dynamo cannot compare in a graph
    @torch.compiler.disable
    def forward(self, weight: Tensor) -> Tensor:
        mat = weight.flatten(1)
        if self.training:
            key = (weight.data_ptr(), weight._version)
            if key != self._seen:
                self._power(mat.detach(), self.power_iterations)
                self._seen = key
        # clones: the graph must not see a later in-place update of the estimates
        sigma = torch.vdot(self._u.clone(), mat @ self._v.clone())
        return weight / sigma


class ConvSpectralNorm(nn.Module):
    r"""The parametrisation :math:`W \mapsto W / \|\mathcal{C}_W\|_2` of a convolution's kernel.

    :math:`\|\mathcal{C}_W\|_2 = \sigma = \langle u, \mathcal{C}_W v \rangle` with
    :math:`\mathcal{C}_W` the convolution (its stride, padding, dilation and groups, without the
    bias) on inputs of one sample's shape ``(1, C_in, *spatial)``, and :math:`(u, v)` the
    left and right singular-vector estimates of the power iteration :math:`v \leftarrow
    \mathcal{C}_W^\top u / \|\cdot\|`, :math:`u \leftarrow \mathcal{C}_W v / \|\cdot\|`, with
    :math:`\mathcal{C}_W^\top` the transposed convolution (``conv_transpose`` with the same
    stride, padding, dilation and groups, and the ``output_padding`` that gives back the input's
    shape). :math:`u` and :math:`v` are buffers of the shapes of one output and one input sample
    (so they are saved and loaded with the model).

    **Which input shape.** The operator norm of a zero-padded convolution grows with the input's
    size (towards the norm on an unbounded domain), so :math:`(u, v)` are sized for the inputs
    the layer sees: at construction for ``input_size`` (default: 16 per side in 2D, 8 in 3D, 64
    in 1D), and, in training mode, re-sized to the input's spatial shape at the first forward and
    whenever it changes (then ``init_iterations`` run from a fresh random start). In evaluation
    mode they never change, whatever the input: an input larger than the last training input can
    see a norm slightly above 1.

    **When the power iteration runs.** In training mode ``power_iterations`` run once per change
    of the weight (an optimizer step, a load, a move), so the map is a fixed function of the
    weight between optimizer steps: what a fixed-point solver, an implicit backward pass and
    activation checkpointing need. :math:`\sigma` is differentiated with respect to the weight
    with :math:`(u, v)` fixed (as in Miyato et al.).

    Parameters
    ----------
    conv:
        The ``nn.Conv1d``/``Conv2d``/``Conv3d`` whose weight is normalised (its hyperparameters
        are copied; ``padding_mode="zeros"`` and numeric padding).
    power_iterations:
        Power iterations per change of the weight in training mode (>= 1; default 1).
    init_iterations:
        Power iterations at construction and after a change of the input's shape (default 100).
    input_size:
        Spatial size of the first estimate (an int for every side, or one per side).
    eps:
        Floor of the norms in the normalisations.
    """

    _u: Tensor
    _v: Tensor

    def __init__(
        self,
        conv: nn.Module,
        power_iterations: int = 1,
        init_iterations: int = 100,
        input_size: int | tuple[int, ...] | None = None,
        eps: float = 1e-12,
    ):
        super().__init__()
        if not isinstance(conv, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            raise TypeError(
                "operator-norm spectral normalisation takes an nn.Conv1d, nn.Conv2d or nn.Conv3d, "
                f"got {type(conv).__name__}; use mode='matrix' for other layers"
            )
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(
                "operator-norm spectral normalisation needs padding_mode='zeros' and numeric "
                f"padding, got padding_mode={conv.padding_mode!r}, padding={conv.padding!r}; "
                "use mode='matrix' for this layer"
            )
        self.dims = len(conv.kernel_size)
        self.stride, self.padding = tuple(conv.stride), tuple(conv.padding)
        self.dilation, self.groups = tuple(conv.dilation), conv.groups
        self.power_iterations = positive_int("power_iterations", power_iterations)
        self.init_iterations = nonnegative_int("init_iterations", init_iterations)
        self.eps = eps
        weight = conv.weight.detach()
        side = _DEFAULT_SIDE[self.dims] if input_size is None else input_size
        spatial = (side,) * self.dims if isinstance(side, int) else tuple(side)
        if len(spatial) != self.dims or not all(isinstance(s, int) and s > 0 for s in spatial):
            raise ValueError(
                f"input_size must be a positive int or {self.dims} positive ints, got "
                f"{input_size!r}"
            )
        self.register_buffer("_v", weight.new_empty(0))
        self.register_buffer("_u", weight.new_empty(0))
        self.register_load_state_dict_pre_hook(self._resize_for_load)
        # (storage, version counter) of the weight the estimates belong to, as in SpectralNorm
        self._seen: tuple[int, int] | None = None
        self._restart(weight, (1, weight.shape[1] * self.groups, *spatial))

    # ------------------------------------------------------------------ the operator
    def conv(self, x: Tensor, weight: Tensor) -> Tensor:
        r"""Apply the convolution without bias, :math:`\mathcal{C}_W x`."""
        conv = _CONV[self.dims][0]
        out: Tensor = conv(x, weight, None, self.stride, self.padding, self.dilation, self.groups)
        return out

    def conv_transpose(self, y: Tensor, weight: Tensor, input_shape: torch.Size) -> Tensor:
        r"""Apply the transposed convolution :math:`\mathcal{C}_W^\top y` (``input_shape``)."""
        k = weight.shape[2:]
        extra = tuple(
            n - ((m - 1) * s - 2 * p + d * (kk - 1) + 1)
            for n, m, s, p, d, kk in zip(
                input_shape[2:], y.shape[2:], self.stride, self.padding, self.dilation, k
            )
        )
        conv_t = _CONV[self.dims][1]
        out: Tensor = conv_t(
            y, weight, None, self.stride, self.padding, extra, self.groups, self.dilation
        )
        return out

    @torch.no_grad()
    def _power(self, weight: Tensor, iterations: int) -> None:
        for _ in range(iterations):
            v = self.conv_transpose(self._u, weight, self._v.shape)
            self._v.copy_(v / v.norm().clamp_min(self.eps))
            u = self.conv(self._v, weight)
            self._u.copy_(u / u.norm().clamp_min(self.eps))

    @torch.no_grad()
    def _restart(self, weight: Tensor, input_shape: tuple[int, ...]) -> None:
        """Draw new estimates for inputs of ``input_shape``, then run ``init_iterations``."""
        # a fixed start (its own generator): the estimate depends on the weight and the shape
        # only, so twin models agree, and the global RNG stream (data, masks) is left alone
        start = torch.Generator().manual_seed(0)
        v = torch.randn(input_shape, generator=start, dtype=weight.dtype).to(weight.device)
        self._v = v / v.norm().clamp_min(self.eps)
        u = self.conv(self._v, weight)
        self._u = u / u.norm().clamp_min(self.eps)
        self._power(weight, self.init_iterations)

    def _resize_for_load(
        self, module: nn.Module, state_dict: dict[str, Tensor], prefix: str, *args: Any
    ) -> None:
        # estimates saved for another input shape: take the saved shape (copied in afterwards);
        # args: local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        error_msgs = args[-1]
        for name in ("_u", "_v"):
            saved = state_dict.get(prefix + name)
            if not isinstance(saved, Tensor) or saved.shape == getattr(self, name).shape:
                continue
            if saved.ndim != self.dims + 2:
                error_msgs.append(
                    f"{prefix}{name}: a vector of shape {tuple(saved.shape)}, the estimate of the "
                    "reshaped-kernel normalisation (mode='matrix', unrolled 0.1); this layer is "
                    f"normalised by its operator norm and needs {self.dims + 2} dimensions"
                )
                continue
            setattr(self, name, getattr(self, name).new_empty(saved.shape))

    # ------------------------------------------------------------------ the parametrisation
    def observe(self, weight: Tensor, input_shape: torch.Size) -> None:
        """Re-size the estimates to inputs of ``input_shape`` (training mode; a pre-hook)."""
        spatial = tuple(input_shape[2:])
        if self.training and spatial != tuple(self._v.shape[2:]):
            self._restart(weight.detach(), (1, self._v.shape[1], *spatial))
            self._seen = (weight.data_ptr(), weight._version)

    def forward(self, weight: Tensor) -> Tensor:
        if self.training:
            key = (weight.data_ptr(), weight._version)
            if key != self._seen:
                self._power(weight.detach(), self.power_iterations)
                self._seen = key
        # clones: the graph must not see a later in-place update of the estimates
        sigma = torch.vdot(self._u.clone().flatten(), self.conv(self._v.clone(), weight).flatten())
        return weight / sigma


class _ObserveInput:
    """Forward pre-hook: hands the input's shape to the module's :class:`ConvSpectralNorm`.

    A plain object (not a closure), so that ``copy.deepcopy`` of the module gives a hook bound to
    the copy's parametrisation.
    """

    def __init__(self, name: str):
        self.name = name

    def __call__(self, module: nn.Module, args: tuple[Tensor, ...]) -> None:
        holder: Any = getattr(module, "parametrizations")[self.name]  # noqa: B009 - typing
        for p in holder:
            if isinstance(p, ConvSpectralNorm):
                p.observe(holder.original, args[0].shape)


def spectral_norm(
    module: nn.Module,
    name: str = "weight",
    mode: str = "operator",
    power_iterations: int = 1,
    init_iterations: int | None = None,
    input_size: int | tuple[int, ...] | None = None,
) -> nn.Module:
    """Register spectral normalisation on ``module.<name>`` and return ``module``.

    A ``torch.nn.utils.parametrize`` parametrisation: the raw weight becomes
    ``parametrizations.<name>.original``.

    Parameters
    ----------
    module:
        The layer.
    name:
        Its weight's name.
    mode:
        ``"operator"`` (default): divide by the operator norm of the layer:
        :class:`ConvSpectralNorm` for ``nn.Conv1d``/``2d``/``3d`` (with a forward pre-hook that
        sizes its vectors for the inputs), :class:`SpectralNorm` for ``nn.Linear`` (whose matrix
        norm is its operator norm); other layers are refused. ``"matrix"``: :class:`SpectralNorm`
        for any layer (Miyato et al.; the behaviour before 0.2.0, which does not bound a
        convolution's operator norm).
    power_iterations:
        Power iterations per change of the weight in training mode.
    init_iterations:
        Power iterations at construction (and, for convolutions, after a change of the input's
        shape); default 100 for convolutions, 15 (torch's) for matrices.
    input_size:
        Spatial size of a convolution's first estimate (see :class:`ConvSpectralNorm`).
    """
    one_of("mode", mode, ("operator", "matrix"))
    weight = getattr(module, name)
    is_conv = isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
    if mode == "operator" and name == "weight" and is_conv:
        conv = ConvSpectralNorm(
            module,
            power_iterations,
            100 if init_iterations is None else init_iterations,
            input_size,
        )
        parametrize.register_parametrization(module, name, conv)
        module.register_forward_pre_hook(_ObserveInput(name))
        return module
    if mode == "operator" and not isinstance(module, nn.Linear):
        raise TypeError(
            "spectral_norm(mode='operator') takes an nn.Linear or an nn.Conv1d/2d/3d weight, got "
            f"{type(module).__name__}.{name}; use mode='matrix' for the normalisation of the "
            "reshaped weight (which does not bound the layer's operator norm)"
        )
    matrix = SpectralNorm(
        weight, power_iterations, 15 if init_iterations is None else init_iterations
    )
    parametrize.register_parametrization(module, name, matrix)
    return module
