r"""MRI forward models: the centred FFT, single-coil Fourier sampling and multi-coil SENSE.

All three act on native complex images and use the centred orthonormal FFT of
:func:`physops.fftc` (fastMRI's ``fft2c`` semantics) over the last ``ndim`` dimensions (2 or 3).

=========================  ===========================  ====================================
operator                   forward model                normal operator
=========================  ===========================  ====================================
``FFT(ndim)``              :math:`y = F x`              :math:`I`
``FourierSampling(mask)``  :math:`y = M F x`            :math:`F^H M^2 F`
``Sense(maps, mask)``      :math:`y_c = M F (S_c x)`    :math:`\sum_c S_c^H F^H M^2 F S_c`
=========================  ===========================  ====================================

The mask :math:`M` is real and applied as it is, once in the forward and once in the adjoint, so a
non-binary mask enters the normal operator squared. (sigpy's ``Sense(..., weights=w)`` applies
:math:`\sqrt{w}`: our ``mask`` equals sigpy's ``weights ** 0.5``; for the usual 0/1 masks they are
the same.)
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor

from physops._fft import centring, fftc, ifftc
from physops._linop import LinearOperator, operand, register_operand
from physops._validate import integer, tensor

__all__ = ["FFT", "FourierSampling", "Sense"]


_NDIM = (
    "{who}: {name} is the number of trailing dimensions the Fourier transform runs over and must "
    "be 2 or 3, got {value!r}. For 2D+time images (T, H, W) use ndim=2."
)


def _check_ndim(ndim: object, who: str) -> int:
    return integer(ndim, "ndim", who, low=2, high=3, template=_NDIM)


def _check_complex(x: object, who: str, what: str) -> Tensor:
    x = tensor(x, who, what)
    if not x.is_complex():
        raise TypeError(
            f"{who} expects a complex {what} (torch.complex64 or torch.complex128), got a "
            f"{x.dtype} tensor of shape {tuple(x.shape)}: convert a real image with "
            "x.to(torch.complex64), or (B, 2, ...) real/imaginary channels with "
            "physops.channels_to_complex(x)."
        )
    return x


def _check_mask(mask: object, who: str) -> Tensor:
    mask = tensor(mask, who, "mask")
    if mask.is_complex():
        raise TypeError(
            f"{who} expects a real mask (bool, integer or floating), got {mask.dtype}: a sampling "
            "mask weights k-space samples and is real; pass mask.abs() or mask.real."
        )
    if mask.ndim == 0:
        raise ValueError(
            f"{who} expects a mask with at least one dimension, got a 0-dim tensor: pass a mask "
            "of shape (H, W), (W,) or one that broadcasts against the image."
        )
    return mask


class FFT(LinearOperator):
    r"""Centred orthonormal Fourier transform :math:`y = F x` over the last ``ndim`` dimensions.

    Unitary: :math:`F^H = F^{-1}` and ``normal`` is the identity.

    Parameters
    ----------
    ndim
        2 (transform ``(H, W)``; also for 2D+time images ``(T, H, W)``) or 3 (``(D, H, W)``).

    ======== ===================================================
    input    ``(*batch, *spatial)`` complex, any leading dims
    output   same shape and dtype (k-space, DC at index ``n // 2``)
    ======== ===================================================
    """

    def __init__(self, ndim: int = 2) -> None:
        super().__init__()
        self.ndim = _check_ndim(ndim, "FFT")

    def forward(self, x: Tensor) -> Tensor:
        return fftc(_check_complex(x, "FFT", "image x"), self.ndim)

    def adjoint(self, y: Tensor) -> Tensor:
        return ifftc(_check_complex(y, "FFT.adjoint", "k-space y"), self.ndim)

    def normal(self, x: Tensor) -> Tensor:
        return _check_complex(x, "FFT.normal", "image x")

    def extra_repr(self) -> str:
        return f"ndim={self.ndim}"


class FourierSampling(LinearOperator):
    r"""Single-coil Cartesian MRI: :math:`y = M \odot F x`, adjoint :math:`F^H (M \odot y)`.

    Parameters
    ----------
    mask
        Real sampling mask (bool, integer or floating; 1 = sampled), broadcast right-aligned
        against the image. Stored as a buffer (or as a parameter when it is an
        :class:`torch.nn.Parameter`). See the table below for the usual shapes.
    ndim
        Number of trailing dimensions the FFT runs over: 2 for ``(H, W)`` and for 2D+time
        ``(T, H, W)`` images, 3 for ``(D, H, W)`` volumes.

    ============  ================================  ==========================================
    tensor        shape                             notes
    ============  ================================  ==========================================
    ``x``         ``(*batch, *image_shape)``        complex; any leading dims
    ``mask``      broadcastable to ``x``            ``(H, W)``, ``(W,)`` (1D Cartesian),
                                                    ``(B, H, W)`` per sample, ``(T, H, W)``
                                                    or ``(B, T, 1, W)`` per frame (2D+time)
    ``y = A x``   ``broadcast(x, mask).shape``      complex, zeros where not sampled
    ============  ================================  ==========================================

    The mask may add leading (batch) dimensions but must not enlarge the image dimensions.
    ``in_shape`` is the mask's last ``ndim`` dimensions when they fix the image size, else
    ``None``.
    """

    def __init__(self, mask: Tensor, *, ndim: int = 2) -> None:
        mask = _check_mask(mask, "FourierSampling")
        ndim = _check_ndim(ndim, "FourierSampling")
        trailing = tuple(mask.shape[-ndim:])
        known = mask.ndim >= ndim and all(s > 1 for s in trailing)
        super().__init__(
            in_shape=trailing if known else None, out_shape=trailing if known else None
        )
        self.ndim = ndim
        self._dims = tuple(range(-ndim, 0))
        register_operand(self, "mask", mask)

    def sampling_mask(self) -> Tensor:
        """Return the sampling mask :math:`M` as given (broadcasting against the image)."""
        return cast(Tensor, self.mask)

    def _mask(self, x: Tensor, who: str) -> Tensor:
        mask = operand(self, "mask", x)
        try:
            shape = torch.broadcast_shapes(mask.shape, x.shape)
        except RuntimeError:
            shape = None
        if shape is None or shape[-self.ndim :] != x.shape[-self.ndim :] or x.ndim < self.ndim:
            raise ValueError(
                f"{who}: the mask of shape {tuple(mask.shape)} does not broadcast against the "
                f"input of shape {tuple(x.shape)} (right-aligned, without enlarging its last "
                f"{self.ndim} dimensions): give the mask the image's trailing shape, with size-1 "
                "or matching leading dimensions, e.g. (H, W), (1, W) or (B, H, W)."
            )
        return mask

    # With even sizes the centring shifts become checkerboards (see physops._fft.centring), folded
    # into the mask here: the same result as ifftc/fftc, with two fewer passes over the data.
    def forward(self, x: Tensor) -> Tensor:
        x = _check_complex(x, "FourierSampling", "image x")
        mask = self._mask(x, "FourierSampling")
        boards = centring(x, self.ndim)
        if boards is None:
            return mask * fftc(x, self.ndim)
        return (mask * boards[1]) * torch.fft.fftn(boards[0] * x, dim=self._dims, norm="ortho")

    def adjoint(self, y: Tensor) -> Tensor:
        y = _check_complex(y, "FourierSampling.adjoint", "k-space y")
        mask = self._mask(y, "FourierSampling.adjoint")
        boards = centring(y, self.ndim)
        if boards is None:
            return ifftc(mask * y, self.ndim)
        return boards[1] * torch.fft.ifftn((mask * boards[0]) * y, dim=self._dims, norm="ortho")

    def normal(self, x: Tensor) -> Tensor:
        x = _check_complex(x, "FourierSampling.normal", "image x")
        weight = self._mask(x, "FourierSampling.normal").square()
        boards = centring(x, self.ndim)
        if boards is None:
            return ifftc(weight * fftc(x, self.ndim), self.ndim)
        # s c F^-1(c M^2 s c F(c x)) = c F^-1(M^2 F(c x)): the inner checkerboards cancel.
        k = torch.fft.fftn(boards[0] * x, dim=self._dims, norm="ortho")
        return boards[0] * torch.fft.ifftn(weight * k, dim=self._dims, norm="ortho")

    def extra_repr(self) -> str:
        return f"mask_shape={tuple(cast(Tensor, self.mask).shape)}, ndim={self.ndim}"


class Sense(LinearOperator):
    r"""Multi-coil Cartesian MRI (SENSE): :math:`y_c = M \odot F (S_c \odot x)`.

    One term per coil :math:`c = 1 \dots C`:

    .. math::

        A^H y = \sum_c \overline{S_c} \odot F^H (M \odot y_c), \qquad
        A^H A x = \sum_c \overline{S_c} \odot F^H (M^2 \odot F (S_c \odot x))

    (without a mask, :math:`A^H A x = x \sum_c |S_c|^2`, no FFT).

    Parameters
    ----------
    maps
        Coil sensitivity maps ``(B, C, *image_shape)``, complex (real maps are used as complex).
        Exactly one batch dimension: ``B`` is the number of samples they belong to, or 1 to share
        one set of maps across the batch (``maps[None]`` for a ``(C, H, W)`` tensor). Stored as a
        buffer, or as a parameter when passed as :class:`torch.nn.Parameter`.
    mask
        Real sampling mask broadcastable to ``(B, *image_shape)`` (at most one batch dimension;
        the coil dimension is inserted by the operator, so never give the mask a coil axis), or
        ``None`` for fully sampled k-space.
    ndim
        Number of trailing dimensions the FFT runs over; default all image dimensions
        (``maps.ndim - 2``). Pass ``ndim=2`` for 2D+time.

    Shapes
    ------
    * 2D: ``x`` is ``(B, H, W)``, ``maps`` ``(B or 1, C, H, W)``, ``mask`` for example
      ``(H, W)``, ``(W,)``, ``(B, H, W)`` or ``(B, 1, W)``.
    * 3D: ``x`` is ``(B, D, H, W)``, ``maps`` ``(B or 1, C, D, H, W)``, ``mask`` for example
      ``(D, H, W)`` or ``(B, D, H, W)``.
    * 2D+time (``ndim=2``, the FFT runs over ``(H, W)`` only): ``x`` is ``(B, T, H, W)``,
      ``maps`` ``(B or 1, C, 1, H, W)`` shared across frames (the usual case) or
      ``(B or 1, C, T, H, W)``, ``mask`` for example ``(T, H, W)`` or ``(B, T, 1, W)``: one
      pattern per frame.

    ``y = A x`` has shape ``(B, C, *image_shape)``. The batch sizes of ``x`` (or ``y``), ``maps``
    and ``mask`` broadcast: each is the common batch size or 1, so per-sample maps and masks from a
    DataLoader and one shared set both work. For 2D+time the frame axis broadcasts the same way
    (maps with one frame apply to every frame). ``x`` must have exactly one batch dimension: a
    tensor with one more dimension is almost always a stack of per-coil images, which is refused.

    ``in_shape``/``out_shape`` are ``image_shape`` and ``(C, *image_shape)``, or ``None`` for
    2D+time when neither maps nor mask fix the number of frames.

    Examples
    --------
    >>> import torch, physops
    >>> maps = torch.randn(1, 4, 32, 24, dtype=torch.complex64)
    >>> mask = (torch.rand(24) < 0.4).float()               # 1D Cartesian: sampled columns
    >>> A = physops.Sense(maps, mask)
    >>> x = torch.randn(2, 32, 24, dtype=torch.complex64)
    >>> A(x).shape, A.adjoint(A(x)).shape
    (torch.Size([2, 4, 32, 24]), torch.Size([2, 32, 24]))
    """

    def __init__(
        self, maps: Tensor, mask: Tensor | None = None, *, ndim: int | None = None
    ) -> None:
        maps = tensor(maps, "Sense", "maps")
        if not (maps.is_complex() or maps.is_floating_point()):
            raise TypeError(
                f"Sense expects complex coil maps, got dtype {maps.dtype}: convert them with "
                "maps.to(torch.complex64)."
            )
        if maps.ndim not in (4, 5):
            raise ValueError(
                "Sense expects maps of shape (B, C, H, W) for 2D or (B, C, D, H, W) for 3D and "
                f"2D+time, got {tuple(maps.shape)}: add the batch dimension with maps[None] (a "
                "batch of 1 is shared by every sample)."
            )
        image_ndim = maps.ndim - 2
        fft_ndim = _check_ndim(image_ndim if ndim is None else ndim, "Sense")
        if fft_ndim > image_ndim:
            raise ValueError(
                f"Sense got ndim={fft_ndim} but the maps {tuple(maps.shape)} have only "
                f"{image_ndim} image dimensions: use ndim <= {image_ndim}."
            )
        batch = maps.shape[0]
        image_shape = tuple(maps.shape[2:])
        if mask is not None:
            mask = _check_mask(mask, "Sense")
            target = (maps.shape[0], *image_shape)
            try:
                full = torch.broadcast_shapes(mask.shape, target)
            except RuntimeError:
                full = None
            if full is None or mask.ndim > image_ndim + 1 or full[-fft_ndim:] != target[-fft_ndim:]:
                raise ValueError(
                    f"Sense: the mask of shape {tuple(mask.shape)} does not broadcast against "
                    f"(B, *image_shape) = {target}: give it the image's trailing shape with at "
                    "most one batch dimension and no coil dimension, e.g. "
                    f"{image_shape}, {(1,) * (image_ndim - 1) + image_shape[-1:]} or "
                    f"{(batch, *image_shape)}."
                )
            batch = full[0]
            image_shape = tuple(full[1:])
        frames_unknown = any(s == 1 for s in image_shape[: image_ndim - fft_ndim])
        super().__init__(
            in_shape=None if frames_unknown else image_shape,
            out_shape=None if frames_unknown else (maps.shape[1], *image_shape),
        )
        self.ndim = fft_ndim
        self._dims = tuple(range(-fft_ndim, 0))
        self.image_ndim = image_ndim
        self.coils = int(maps.shape[1])
        self.batch = int(batch)
        self.image_shape = image_shape
        register_operand(self, "maps", maps)
        self.has_mask = mask is not None
        if mask is not None:
            register_operand(self, "mask", mask)

    # -- public accessors --------------------------------------------------------------------
    def coil_maps(self) -> Tensor:
        """Return the coil sensitivity maps :math:`S`, ``(B or 1, C, *image_shape)``, complex.

        The buffer stores complex maps as their real view (see :func:`register_operand`).
        """
        maps = cast(Tensor, self.maps)
        if "maps" in self.__dict__.get("_complex_operands", ()):
            return torch.view_as_complex(maps)
        return maps

    def sampling_mask(self) -> Tensor | None:
        """Return the sampling mask :math:`M` as given, or ``None`` when fully sampled.

        The mask broadcasts against ``(B, *image_shape)``.
        """
        return cast(Tensor, self.mask) if self.has_mask else None

    # -- helpers -----------------------------------------------------------------------------
    def _conj(self, maps: Tensor) -> Tensor:
        r""":math:`\overline{S}`, materialised once per maps tensor and cached (not registered).

        Multiplying by a lazily conjugated tensor takes torch's slow path (about 2.5x slower on
        CPU), and materialising it on every call would make autograd save a fresh coil-sized copy
        per call (per CG iteration). Maps in a graph (learnable) get the lazy view instead.
        """
        if not maps.is_complex():
            return maps
        if maps.requires_grad:
            return maps.conj()
        key = (maps.data_ptr(), maps._version, maps.dtype, maps.device, tuple(maps.shape))
        cached = self.__dict__.get("_conj_cache")
        if cached is not None and cached[0] == key:
            return cast(Tensor, cached[1])
        with torch.inference_mode(False):  # autograd may save it later
            conj = maps.conj_physical()
        # Holding ``maps`` keeps its memory from being reused by another tensor, which makes the
        # (address, version) key sound.
        object.__setattr__(self, "_conj_cache", (key, conj, maps))
        return conj

    def _mask(self, like: Tensor) -> Tensor:
        """Return the mask as ``(Bm, 1, *image)``: padded to one batch dim, with a coil axis."""
        mask = operand(self, "mask", like)
        mask = mask.reshape((1,) * (self.image_ndim + 1 - mask.ndim) + tuple(mask.shape))
        return mask.unsqueeze(1)

    def _check(self, t: Tensor, who: str, what: str, coil: bool) -> Tensor:
        t = _check_complex(t, who, what)
        lead = 2 if coil else 1
        expected_trailing = (self.coils,) if coil else ()
        name = "(batch, C, *image_shape)" if coil else "(batch, *image_shape)"
        shape = tuple(t.shape)
        ok = t.ndim == self.image_ndim + lead and shape[1:lead] == expected_trailing
        if ok:
            for have, need, spatial in zip(
                shape[lead:],
                self.image_shape,
                [False] * (self.image_ndim - self.ndim) + [True] * self.ndim,
            ):
                if have != need and (spatial or need != 1):
                    ok = False
        if not ok:
            expected = ("B", *expected_trailing, *self.image_shape)
            hint = (
                "pass the coil-combined image, not per-coil images"
                if not coil and t.ndim == self.image_ndim + 2 and shape[1] == self.coils
                else "the image dimensions must match the coil maps"
                if not coil
                else f"pass k-space with the coil axis (C = {self.coils}) after the batch axis"
            )
            raise ValueError(
                f"{who} expects {what} of shape {name} = "
                f"({', '.join(str(s) for s in expected)}), got {shape}: {hint}."
            )
        if shape[0] != self.batch and 1 not in (shape[0], self.batch):
            raise ValueError(
                f"{who}: the operator holds maps/mask for a batch of {self.batch} but {what} has "
                f"batch {shape[0]}: pass a batch of {self.batch} (or of 1), or build the operator "
                "with maps and mask of batch 1 to share them across any batch."
            )
        return t

    # -- the operator ------------------------------------------------------------------------
    # With even FFT sizes the centring shifts become checkerboards (physops._fft.centring): the
    # image-side one is applied to the (coil-free) image, the k-space-side one is folded into the
    # mask, so each method makes one pass over the coil images besides the FFTs.
    def forward(self, x: Tensor) -> Tensor:
        x = self._check(x, "Sense", "image x", coil=False)
        maps = operand(self, "maps", x)
        boards = centring(x, self.ndim)
        if boards is None:
            k = fftc(x.unsqueeze(1) * maps, self.ndim)
            return k * self._mask(x) if self.has_mask else k
        pre, post = boards
        k = torch.fft.fftn((pre * x).unsqueeze(1) * maps, dim=self._dims, norm="ortho")
        return k * (self._mask(x) * post if self.has_mask else post)

    def adjoint(self, y: Tensor) -> Tensor:
        y = self._check(y, "Sense.adjoint", "k-space y", coil=True)
        maps = operand(self, "maps", y)
        boards = centring(y, self.ndim)
        if boards is None:
            if self.has_mask:
                y = y * self._mask(y)
            return (ifftc(y, self.ndim) * self._conj(maps)).sum(dim=1)
        pre, post = boards
        weight = self._mask(y) * pre if self.has_mask else pre
        images = torch.fft.ifftn(y * weight, dim=self._dims, norm="ortho")
        return post * (images * self._conj(maps)).sum(dim=1)

    def normal(self, x: Tensor) -> Tensor:
        x = self._check(x, "Sense.normal", "image x", coil=False)
        maps = operand(self, "maps", x)
        if not self.has_mask:
            return x * maps.abs().square().sum(dim=1)
        weight = self._mask(x).square()
        boards = centring(x, self.ndim)
        if boards is None:
            k = fftc(x.unsqueeze(1) * maps, self.ndim) * weight
            return (ifftc(k, self.ndim) * self._conj(maps)).sum(dim=1)
        pre = boards[0]  # s c F^-1(c M^2 s c F(c S x)) = c F^-1(M^2 F(c S x))
        k = torch.fft.fftn((pre * x).unsqueeze(1) * maps, dim=self._dims, norm="ortho") * weight
        return pre * (torch.fft.ifftn(k, dim=self._dims, norm="ortho") * self._conj(maps)).sum(
            dim=1
        )

    def extra_repr(self) -> str:
        return (
            f"coils={self.coils}, image_shape={self.image_shape}, batch={self.batch}, "
            f"ndim={self.ndim}, mask={self.has_mask}"
        )
