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
        reversible chain (MEL's hybrid scheme); ``None`` keeps only the output.
    check_drift:
        ``"reversible"``: relative tolerance of the reverse pass' reconstruction checks; past it
        the engine raises naming the layer (or recomputes, see ``on_drift``).
    on_drift:
        ``"raise"`` or ``"recompute"`` (from the nearest checkpoint).
    modules:
        ``"greedy"``: the number of modules M (default: one per stage, GLEAM's N = M).
    inner:
        ``"greedy"``: how each module is differentiated (``"backprop"``, ``"checkpoint"``,
        ``"reversible"`` or ``"implicit"``).
    backward:
        ``"implicit"`` (and LUSER/DEQ trained with it): ``"implicit"``, ``"jacobian_free"`` or
        ``"phantom"`` (see :func:`fixedpoint.implicit`).
    """

    name: StrategyName = "backprop"
    checkpoint_every: int | None = None
    check_drift: float | None = None
    on_drift: Literal["raise", "recompute"] = "raise"
    modules: int | None = None
    inner: Literal["backprop", "checkpoint", "reversible", "implicit"] = "backprop"
    backward: Literal["implicit", "jacobian_free", "phantom"] = "implicit"

    def __post_init__(self) -> None:
        if self.name not in STRATEGIES:
            raise unknown_name("strategy", self.name, STRATEGIES, "strategies")
        positive_int("checkpoint_every", self.checkpoint_every, optional=True)
        if self.check_drift is not None:
            expected = "a positive tolerance or None"
            finite_number("check_drift", self.check_drift, low=0, low_open=True, expected=expected)
        one_of("on_drift", self.on_drift, ("raise", "recompute"), listing=False)
        positive_int("modules", self.modules, optional=True)
        one_of("inner strategy of greedy training", self.inner, _INNER, listing=True)
        one_of("backward", self.backward, _BACKWARD)
        if self.name != "greedy" and self.modules is not None:
            raise ValueError(
                f"modules={self.modules} only applies to strategy='greedy', got strategy="
                f"{self.name!r}"
            )

    @property
    def forward_name(self) -> str:
        """How the model's forward pass runs (greedy modules run with their inner strategy)."""
        return self.inner if self.name == "greedy" else self.name

    def describe(self) -> str:
        """Return a short human-readable label (``"greedy(M=4, inner=reversible)"``)."""
        if self.name == "greedy":
            m = "N" if self.modules is None else str(self.modules)
            inner = "" if self.inner == "backprop" else f", inner={self.inner}"
            return f"greedy(M={m}{inner})"
        if self.name == "checkpoint":
            return f"checkpoint(every={self.checkpoint_every or 1})"
        if self.name == "reversible" and self.checkpoint_every:
            return f"reversible(checkpoint_every={self.checkpoint_every})"
        if self.name == "implicit" and self.backward != "implicit":
            return f"implicit({self.backward})"
        return self.name


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
            "check_drift, on_drift, modules, inner, backward"
        ) from None
