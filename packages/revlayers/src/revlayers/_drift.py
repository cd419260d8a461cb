"""Drift control of the reverse pass: which checks run, their tolerance, their report and errors.

``check_drift`` of :class:`~revlayers.ReversibleSequence` selects a :class:`DriftPolicy`:

* ``None``: no checks.
* a float ``tol``: both checks everywhere, with ``tol``; raise by default.
* ``"auto"`` (default): the checks that cost nothing, with a tolerance from the dtype
  (:data:`AUTO_TOLERANCE`); recompute by default. *Checkpoint check*: at every stored state (the
  input and the hybrid checkpoints) the rebuilt state is compared with the stored one (one
  subtraction). *Layer check*: only at layers whose inverse is approximate
  (``exact_inverse=False``), where the generic reverse step computes ``f(x_rebuilt)`` anyway.

Each backward records a :class:`ReverseDiagnostics` (checks run, largest drift, recomputed
segments) that the caller reads from ``ReversibleSequence.diagnostics``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ._errors import DriftError
from ._precision import reduced_precision_allowed
from ._validate import finite_number, one_of

__all__ = [
    "AUTO_TOLERANCE",
    "DriftPolicy",
    "ReverseDiagnostics",
    "auto_tolerance",
    "drift_error",
]

#: Relative drift tolerated by ``check_drift="auto"``, per real dtype of the state, from
#: ``benchmarks/drift_tolerance.py`` (README, "Drift control"). float32: a state error ``e``
#: moves the gradients by ~0.8 ``e`` while no ReLU flips, and by ~0.5 sqrt(e) once it flips
#: some (1.2e-3 at ``e = 1e-5``, 5e-3 at ``1e-4``, on the benchmark's 64-channel stacks), so
#: ``1e-5`` keeps an accepted reverse pass near a 1e-3 gradient error; exact stacks drift less
#: (at most 4.2e-6 for 128 i-RIM blocks, 1.6e-7 for 128 additive couplings), and fixed-point
#: inverses at their default tolerance leave ~1e-6. float64: exact stacks drift <= 1e-14 and
#: solvers stop at ~1e-12, so ``1e-10`` holds gradients to ~1e-10. Half precisions: exact
#: additive stacks drift 8e-4 (float16) and 7e-3 (bfloat16) at depth 128; i-RIM blocks more
#: (2e-2 and 0.16), and are recomputed.
AUTO_TOLERANCE: dict[torch.dtype, float] = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 1e-2,
    torch.bfloat16: 3e-2,
}

_ON_DRIFT = ("raise", "recompute")


def auto_tolerance(dtype: torch.dtype) -> float:
    """Return the tolerance of ``check_drift="auto"`` for a state of ``dtype``.

    Parameters
    ----------
    dtype : torch.dtype
        The state's dtype.

    Returns
    -------
    float
        A relative tolerance.
    """
    real = torch.empty((), dtype=dtype).real.dtype if dtype.is_complex else dtype
    return AUTO_TOLERANCE.get(real, AUTO_TOLERANCE[torch.float32])


@dataclass(frozen=True)
class DriftPolicy:
    """What ``check_drift`` and ``on_drift`` ask of the reverse pass.

    Attributes
    ----------
    mode : {"off", "auto", "all"}
        No checks; the cheap checks; every check at every layer.
    tolerance : float, optional
        The explicit tolerance (``"all"``); ``None`` for ``"auto"`` (from the dtype).
    on_drift : {"raise", "recompute"}
        What a failed check does.
    """

    mode: str
    tolerance: float | None
    on_drift: str

    @classmethod
    def from_arguments(cls, check_drift: object, on_drift: object) -> DriftPolicy:
        """Validate ``ReversibleSequence``'s two arguments and resolve the defaults."""
        who = "ReversibleSequence"
        if on_drift is not None:
            one_of(who, "on_drift", on_drift, _ON_DRIFT, hint="(or None: the default)")
        if check_drift is None:
            return cls("off", None, str(on_drift or "raise"))
        if isinstance(check_drift, str) and check_drift == "auto":
            return cls("auto", None, str(on_drift or "recompute"))
        expected = 'to be a finite relative tolerance > 0 (e.g. 1e-4), "auto" or None'
        tol = finite_number(who, "check_drift", check_drift, low=0.0, expected=expected)
        return cls("all", tol, str(on_drift or "raise"))

    @property
    def active(self) -> bool:
        """Whether any check runs."""
        return self.mode != "off"

    def checks_layer(self, exact_inverse: bool) -> bool:
        """Whether a layer gets the layer check (every layer, or approximate ones in auto)."""
        return self.mode == "all" or (self.mode == "auto" and not exact_inverse)

    def tolerance_for(self, dtype: torch.dtype) -> float:
        """Return the tolerance for a state of ``dtype``."""
        return self.tolerance if self.tolerance is not None else auto_tolerance(dtype)

    def describe(self) -> str:
        """``check_drift=...`` as the user wrote it, for messages."""
        return (
            f"check_drift={self.tolerance:g}"
            if self.tolerance is not None
            else ('check_drift="auto"')
        )


@dataclass
class ReverseDiagnostics:
    """What the last backward pass of a :class:`~revlayers.ReversibleSequence` checked and did.

    Attributes
    ----------
    mode : str
        ``"off"``, ``"auto"`` or ``"all"`` (see ``check_drift``).
    checks : int
        Reconstructions compared.
    max_drift : float
        Largest relative drift measured (0 when nothing was checked).
    worst_layer : int, optional
        Index of the layer where it was measured.
    tolerance : float, optional
        The tolerance the drifts were held to (``None`` without checks).
    recomputed : list of (int, int)
        Segments ``[a, b)`` of layers whose gradients were recomputed from their stored input
        after a failed check (``on_drift="recompute"``).
    """

    mode: str = "off"
    checks: int = 0
    max_drift: float = 0.0
    worst_layer: int | None = None
    tolerance: float | None = None
    recomputed: list[tuple[int, int]] = field(default_factory=list)

    @property
    def recomputed_segments(self) -> int:
        """Number of recomputed segments (0 when every reconstruction passed)."""
        return len(self.recomputed)

    def record(self, index: int, drift: float, tolerance: float) -> None:
        """Count one check of layer ``index``."""
        self.checks += 1
        self.tolerance = tolerance
        if drift > self.max_drift or drift != drift:  # NaN is the worst drift
            self.max_drift = drift
            self.worst_layer = index


def _causes(dtype: torch.dtype, device: torch.device, default: str) -> str:
    if reduced_precision_allowed(dtype, device):
        backend = (
            "torch.backends.cuda.matmul / torch.backends.cudnn.conv"
            if (device.type == "cuda")
            else "torch.backends.mkldnn"
        )
        return (
            f"Likely cause: TF32. This layer ran {dtype} on {device.type} with TF32 (or bf16) "
            f"allowed for float32 ({backend}), whose 10-bit mantissa makes inverses exact only to "
            "about 1e-3; compute the layer's inverse-critical products inside "
            "revlayers.full_precision(x), or set fp32_precision = 'ieee' there. Other causes: "
            + default
        )
    return "Likely cause: " + default


_LAYER_CAUSE = (
    "its inverse does not invert its forward (test it with revlayers.check_inverse), or its "
    "inverse solver stopped early (CG or fixed point not converged; a small mu in a CG "
    "data-consistency step amplifies that error by 1/mu)."
)
_CHECKPOINT_CAUSE = (
    "rounding errors grew along the reverse pass (MEL Sec. 4), or a layer's inverse is "
    "approximate (mark it exact_inverse=False so it is checked where it happens)."
)


def drift_error(
    index: int,
    name: str,
    drift: float,
    policy: DriftPolicy,
    state: torch.Tensor,
    *,
    where: str | None = None,
    top: int = 0,
    cause: str | None = None,
) -> DriftError:
    """Build the :class:`DriftError` of a failed check, naming the layer and a likely cause.

    Parameters
    ----------
    index, name : int, str
        The layer.
    drift : float
        The measured relative drift.
    policy : DriftPolicy
        The checks' settings (their tolerance).
    state : Tensor
        The state checked (its dtype and device suggest TF32 as a cause).
    where : {"input", "output"}, optional
        ``None``: the layer check failed (``f(x_rebuilt)`` is not ``y``); else the checkpoint
        check compared that side of the layer with the stored state.
    top : int
        With ``where``: the highest layer of the segment reversed.
    cause : str, optional
        A likely cause from the sequence's ``explain`` hook (in place of the generic one; TF32
        is still named first when the state's dtype and device allow it).

    Returns
    -------
    DriftError
        The error, with ``kind`` ``"layer"`` or ``"checkpoint"``.
    """
    tol = policy.tolerance_for(state.dtype)
    layer = f"layer {index} ({name})"
    limit = f"{policy.describe()} (tolerance {tol:g})"
    if where is None:
        text = (
            f"ReversibleSequence: {layer} does not reproduce the state it was rebuilt from: "
            f"||f(x_rebuilt) - y|| / ||y|| = {drift:.3g} > {limit}. "
            f"{_causes(state.dtype, state.device, cause or _LAYER_CAUSE)} Fix the layer, or pass "
            "on_drift='recompute' to recompute the segment from its stored input."
        )
    else:
        text = (
            f"ReversibleSequence: the {where} of {layer} rebuilt by the reverse pass differs "
            f"from the one the stored state gives: relative error {drift:.3g} > {limit} after "
            f"reversing layers {top}..{index}. "
            f"{_causes(state.dtype, state.device, cause or _CHECKPOINT_CAUSE)} Store checkpoints "
            "more often (checkpoint_every=...), or pass on_drift='recompute'."
        )
    kind = "layer" if where is None else "checkpoint"
    return DriftError(
        text, layer_index=index, layer_name=name, kind=kind, drift=drift, tolerance=tol
    )
