"""Memory strategies: one switch that decides how an unrolled model is differentiated.

==============  =====================================================  ===========================
name            what is stored for the backward pass                   valid for
==============  =====================================================  ===========================
``backprop``    every activation (plain autograd)                      every model
``checkpoint``  the state every ``checkpoint_every`` stages; each      every model
                segment is recomputed in backward (non-reentrant)
``reversible``  the output (and hybrid checkpoints); each stage's      models whose every stage is
                input is rebuilt from its output (MEL Alg. 1)          invertible
``greedy``      one module's activations at a time (GLEAM Alg. 1)      models with unshared stages
``implicit``    the fixed point only; gradients by implicit            models with an equilibrium
                differentiation                                        (LUSER, DEQ)
==============  =====================================================  ===========================
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

import torch

from ._validate import finite_number, one_of, positive_int, unknown_name

__all__ = ["STRATEGIES", "Strategy", "as_strategy"]

STRATEGIES = ("backprop", "checkpoint", "reversible", "greedy", "implicit")
_INNER = ("backprop", "checkpoint", "reversible", "implicit")
_BACKWARD = ("implicit", "jacobian_free", "phantom")

StrategyName = Literal["backprop", "checkpoint", "reversible", "greedy", "implicit"]


@dataclass(frozen=True)
class Strategy:
    """A memory strategy and its options.

    Parameters
    ----------
    name:
        One of :data:`STRATEGIES`.
    checkpoint_every:
        ``"checkpoint"``: stages per recomputed segment (default 1: a checkpoint per unroll, as
        GLEAM's baseline). ``"reversible"``: keep the exact state every k layers of the
        reversible chain (MEL's hybrid scheme); ``None`` lets the model choose (MoDL picks them
        from mu and the CG tolerance, :meth:`unrolled.MoDL.reversible_checkpoints`; the other
        models keep only the output).
    check_drift:
        ``"reversible"``: drift control of the reverse pass (:class:`revlayers.ReversibleSequence`).
        ``"auto"`` (default): the cheap checks, with the tolerance
        :func:`revlayers.auto_tolerance` gives the state's dtype (1e-5 in float32, 1e-10 in
        float64): every hybrid checkpoint's rebuilt state is compared with the stored one, and
        every layer whose inverse is approximate (CG steps, fixed-point inverses:
        ``exact_inverse=False``) is checked where the reverse pass recomputes it anyway. A
        float: every check at every layer with that relative tolerance. ``None``: no checks
        (gradients may then be wrong without a word at small mu).
    on_drift:
        What a failed check does: ``"recompute"`` the segment forward from its nearest stored
        exact state (its gradients then equal backprop's) or ``"raise"``
        :class:`revlayers.DriftError` naming the unroll and the likely cause (small mu, CG not
        converged, TF32). ``None`` (default): recompute with ``"auto"``, raise with a float.
    modules:
        ``"greedy"``: the number of modules M (default: one per stage, GLEAM's N = M).
    inner:
        ``"greedy"``: how each module is differentiated (``"backprop"``, ``"checkpoint"``,
        ``"reversible"`` or ``"implicit"``).
    backward:
        ``"implicit"`` (and LUSER/DEQ trained with it): ``"implicit"``, ``"jacobian_free"`` or
        ``"phantom"`` (see :func:`fixedpoint.implicit`).
    devices:
        ``"greedy"`` in one process: module m runs on ``devices[m % D]`` (single-process P-GLEAM,
        e.g. ``("cuda:0", "cuda:1")``); ``None`` keeps every module on the training device.
    replicas:
        ``"greedy"`` under ``torch.distributed`` (``torchrun``): the W processes form
        ``replicas`` pipelines of W / replicas ranks; modules are spread over the ranks of a
        pipeline (P-GLEAM) and each pipeline takes its share of the batch (data parallel).
        Default 1: every rank trains its modules on the whole batch.
    """

    name: StrategyName = "backprop"
    checkpoint_every: int | None = None
    check_drift: float | Literal["auto"] | None = "auto"
    on_drift: Literal["raise", "recompute"] | None = None
    modules: int | None = None
    inner: Literal["backprop", "checkpoint", "reversible", "implicit"] = "backprop"
    backward: Literal["implicit", "jacobian_free", "phantom"] = "implicit"
    devices: tuple[str, ...] | None = None
    replicas: int = 1

    def __post_init__(self) -> None:
        if self.name not in STRATEGIES:
            raise unknown_name("strategy", self.name, STRATEGIES, "strategies")
        positive_int("checkpoint_every", self.checkpoint_every, optional=True)
        if self.check_drift is not None and self.check_drift != "auto":
            expected = 'a positive tolerance or None (no checks), or "auto" (the default)'
            finite_number("check_drift", self.check_drift, low=0, low_open=True, expected=expected)
        if self.on_drift is not None:
            one_of("on_drift", self.on_drift, ("raise", "recompute"), listing=False)
        positive_int("modules", self.modules, optional=True)
        one_of("inner strategy of greedy training", self.inner, _INNER, listing=True)
        one_of("backward", self.backward, _BACKWARD)
        positive_int("replicas", self.replicas)
        for option, value, default in (
            ("modules", self.modules, None),
            ("devices", self.devices, None),
            ("replicas", self.replicas, 1),
        ):
            if self.name != "greedy" and value != default:
                raise ValueError(
                    f"{option}={value!r} only applies to strategy='greedy', got strategy="
                    f"{self.name!r}"
                )
        if self.devices is not None:
            object.__setattr__(self, "devices", _check_devices(self.devices))

    @property
    def forward_name(self) -> str:
        """How the model's forward pass runs (greedy modules run with their inner strategy)."""
        return self.inner if self.name == "greedy" else self.name

    def describe(self) -> str:
        """Return a short human-readable label (``"greedy(M=4, inner=reversible)"``)."""
        if self.name == "greedy":
            m = "N" if self.modules is None else str(self.modules)
            inner = "" if self.inner == "backprop" else f", inner={self.inner}"
            devices = "" if self.devices is None else f", devices={len(self.devices)}"
            replicas = "" if self.replicas == 1 else f", replicas={self.replicas}"
            return f"greedy(M={m}{inner}{devices}{replicas})"
        if self.name == "checkpoint":
            return f"checkpoint(every={self.checkpoint_every or 1})"
        if self.name == "reversible" and self.checkpoint_every:
            return f"reversible(checkpoint_every={self.checkpoint_every})"
        if self.name == "implicit" and self.backward != "implicit":
            return f"implicit({self.backward})"
        return self.name


def _check_devices(devices: object) -> tuple[str, ...]:
    """``devices`` as a non-empty tuple of device names (``"cpu"``, ``"cuda:1"``, ...)."""
    names = [devices] if isinstance(devices, str) else devices
    if not isinstance(names, (list, tuple)) or not names:
        raise ValueError(
            f"devices must be a list of device names (e.g. ['cuda:0', 'cuda:1']), got {devices!r}"
        )
    out = []
    for name in names:
        try:
            out.append(str(torch.device(name)))
        except (RuntimeError, TypeError):
            raise ValueError(
                f"devices must name torch devices ('cpu', 'cuda:0', ...), got {name!r}"
            ) from None
    return tuple(out)


def as_strategy(strategy: str | Strategy, **options: Any) -> Strategy:
    """Return a :class:`Strategy` from a name and options, or a given one with options replaced."""
    if isinstance(strategy, Strategy):
        return replace(strategy, **options) if options else strategy
    if not isinstance(strategy, str):
        raise TypeError(
            f"strategy must be a name ({', '.join(STRATEGIES)}) or a unrolled.Strategy, got "
            f"{type(strategy).__name__}"
        )
    try:
        return Strategy(strategy, **options)  # type: ignore[arg-type]
    except TypeError as err:
        raise ValueError(
            f"invalid option for strategy {strategy!r}: {err}; valid options: checkpoint_every, "
            "check_drift, on_drift, modules, inner, backward, devices, replicas"
        ) from None
