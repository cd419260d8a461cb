"""The structure every unrolled model shares, and how strategies run it.

A model is a list of *stages* (one unrolled iteration each), an initial state and a read-out:

    state_0 = initial_state(y, physics, x0)          # e.g. the adjoint reconstruction A^H y
    state_k = stage_k(state_{k-1}, (y, physics))     # k = 1 .. N
    x_hat   = readout(state_N)

States are real tensors ``(batch, channels, *spatial)`` (complex images as real and imaginary
channels, :class:`~unrolled.nn.ImageAdapter`), or tuples of them (the RIM's hidden states).
Stages that are invertible expose their :class:`revlayers.InvertibleModule` layers, each called
as ``layer(state, y, physics)``, so the ``"reversible"`` strategy can chain them in a
:class:`revlayers.ReversibleSequence`, and ``"greedy"`` hands the stages to
:class:`greedytrain.GreedyTrainer` with the context ``(y, physics)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from revlayers import InvertibleModule, ReverseDiagnostics, ReversibleSequence

from ._checkpoint import checkpoint_segments
from ._strategy import Strategy, as_strategy
from .nn import ImageAdapter

__all__ = ["InvertibleStage", "PlainStage", "Stage", "StageContext", "UnrolledModel", "make_stage"]


class StageContext(NamedTuple):
    """What every stage reads and none changes: the measurements and the forward model."""

    y: Tensor
    physics: nn.Module


class Stage(nn.Module):
    """One unrolled iteration, called as ``stage(state, context) -> state``."""

    def forward(self, state: Any, context: StageContext) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def invertible_layers(self) -> list[InvertibleModule] | None:
        """Return the stage as invertible layers ``layer(state, y, physics)``, or ``None``."""
        return None

    def set_equilibrium_backward(self, mode: str) -> None:
        """Stages with an inner equilibrium (LUSER, DEQ) switch their backward pass here."""


class PlainStage(Stage):
    """A stage of layers, each called as ``layer(state, y, physics)``, applied in order.

    It is invertible (:meth:`invertible_layers` gives the layers) when every layer is a
    :class:`revlayers.InvertibleModule`.
    """

    def __init__(self, layers: Sequence[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, state: Tensor, context: StageContext) -> Tensor:
        """Apply every layer to ``state`` with the context ``(y, physics)``."""
        for layer in self.layers:
            state = layer(state, *context)
        return state

    def invertible_layers(self) -> list[InvertibleModule] | None:
        """Return the layers when they are all invertible, else ``None``."""
        if all(isinstance(layer, InvertibleModule) for layer in self.layers):
            return list(self.layers)  # type: ignore[arg-type]
        return None


class InvertibleStage(PlainStage):
    """A stage made of invertible layers, applied in order."""

    def __init__(self, layers: Sequence[InvertibleModule]):
        super().__init__(layers)

    def invertible_layers(self) -> list[InvertibleModule]:
        """Return the stage's layers."""
        return list(self.layers)  # type: ignore[arg-type]


def make_stage(layers: Sequence[nn.Module]) -> PlainStage:
    """Return an :class:`InvertibleStage` of invertible layers, else a :class:`PlainStage`."""
    if all(isinstance(layer, InvertibleModule) for layer in layers):
        return InvertibleStage(layers)  # type: ignore[arg-type]
    return PlainStage(layers)


def _bind(stage: nn.Module, context: StageContext) -> Callable[[Any], Any]:
    """``state -> stage(state, context)`` (a checkpointable step)."""

    def step(state: Any) -> Any:
        return stage(state, context)

    return step


class UnrolledModel(nn.Module):
    """Base class of the models: ``x_hat = model(y, physics, x0=None)``.

    Subclasses build ``self.stages`` (an ``nn.ModuleList`` of :class:`Stage`) and may override
    :meth:`initial_state`, :meth:`readout`, :meth:`check_physics` and
    :meth:`strategy_problem`. :meth:`set_strategy` chooses how the forward pass is
    differentiated; the same parameters serve every strategy, so a model trained with one can be
    evaluated or fine-tuned with another.
    """

    #: Whether the loss should see every stage's read-out (RIM: loss over all time steps).
    loss_over_stages: bool = False

    def __init__(self, adapter: ImageAdapter):
        super().__init__()
        self.adapter = adapter
        self.stages = nn.ModuleList()
        self._strategy = Strategy()
        # the reversible chain is built lazily and kept unregistered: its layers are already
        # submodules of the stages, and registering them twice would duplicate state_dict keys
        object.__setattr__(self, "_chain", None)

    # ------------------------------------------------------------------ subclass hooks
    def check_physics(self, physics: object) -> None:
        """Raise a clear error when ``physics`` is not an operator this model supports."""
        for name in ("forward", "adjoint"):
            if not callable(getattr(physics, name, None)):
                raise TypeError(
                    f"{type(self).__name__} needs a physics operator with forward(x) and "
                    f"adjoint(y) (a physops.LinearOperator), got {type(physics).__name__}"
                )

    def initial_state(self, y: Tensor, physics: nn.Module, x0: Tensor | None) -> Any:
        """Return the first state: ``x0`` if given, else the adjoint reconstruction ``A^H y``."""
        image = physics.adjoint(y) if x0 is None else x0  # type: ignore[operator]
        return self.adapter.to_net(image)

    def readout(self, state: Any) -> Tensor:
        """Return the image a state stands for."""
        return self.adapter.from_net(state)

    def strategy_problem(self, strategy: Strategy) -> str | None:
        """Why ``strategy`` cannot train this model (and what would), or ``None`` when it can."""
        name = strategy.name
        if strategy.forward_name == "implicit":
            return (
                f"strategy 'implicit' needs a model with a fixed point (LUSER, DEQ); "
                f"{type(self).__name__} has none: use 'checkpoint', 'reversible' or 'greedy' to "
                "save memory"
            )
        if strategy.forward_name == "reversible":
            bad = [i for i, s in enumerate(self.stages) if s.invertible_layers() is None]  # type: ignore[operator]
            if bad:
                return (
                    f"strategy 'reversible' needs every stage to be invertible, but stage {bad[0]} "
                    f"of {type(self).__name__} is not ({self.why_not_invertible()}); use "
                    "'checkpoint' or 'greedy', or build the model with an invertible prior"
                )
        if name == "greedy":
            n = len(self.stages)
            m = n if strategy.modules is None else strategy.modules
            if m > n:
                return (
                    f"strategy 'greedy' with modules={m} needs at least as many stages, but "
                    f"{type(self).__name__} has {n}: use modules <= {n}"
                )
            ids = [id(s) for s in self.stages]
            if len(set(ids)) < len(ids) and m > 1:
                return (
                    f"strategy 'greedy' trains each module's own weights, but "
                    f"{type(self).__name__} shares one set of weights across its stages: build "
                    "it with different weights per stage, or use modules=1 (end-to-end), "
                    "'checkpoint' or 'implicit'"
                )
        return None

    def why_not_invertible(self) -> str:
        """Why a stage of this model is not invertible (for :meth:`strategy_problem`)."""
        return "its prior is not an invertible network"

    def certify(
        self, physics: nn.Module, x_like: Tensor, iterations: int = 20, margin: float = 1.0
    ) -> float | None:
        """Bound what ``"reversible"`` training needs to invert the stages, on a batch.

        Models whose stages invert gradient steps by backward Euler (:class:`UnrolledPGD`,
        :class:`FPMNet`) estimate a Lipschitz constant here and cap their step sizes below it
        (MEL Eq. 7); :func:`unrolled.train` calls this on the first training batch before it
        trains with ``"reversible"``. Models with nothing to certify return ``None``.
        """
        return None

    # ------------------------------------------------------------------ strategy
    @property
    def strategy(self) -> Strategy:
        return self._strategy

    def set_strategy(self, strategy: str | Strategy = "backprop", **options: Any) -> UnrolledModel:
        """Choose how the forward pass is differentiated (see :class:`unrolled.Strategy`).

        Raises ``ValueError`` when the strategy is invalid for this model, saying what would work.
        Returns the model, so ``model.set_strategy("reversible")(y, physics)`` reads naturally.
        """
        chosen = as_strategy(strategy, **options)
        problem = self.strategy_problem(chosen)
        if problem is not None:
            raise ValueError(problem)
        self._strategy = chosen
        object.__setattr__(self, "_chain", None)
        for stage in self.unique_stages():
            stage.set_equilibrium_backward(
                chosen.backward if chosen.forward_name == "implicit" else "unrolled"
            )
        return self

    def unique_stages(self) -> list[Stage]:
        """Return the stages, each once (a model with shared weights repeats one stage)."""
        seen: set[int] = set()
        out: list[Stage] = []
        for s in self.stages:
            if id(s) not in seen:
                seen.add(id(s))
                out.append(s)  # type: ignore[arg-type]
        return out

    def invertible_layers(self) -> list[InvertibleModule]:
        """Every stage's invertible layers, in order (for ``"reversible"``)."""
        layers: list[InvertibleModule] = []
        for i, stage in enumerate(self.stages):
            stage_layers = stage.invertible_layers()  # type: ignore[operator]
            if stage_layers is None:
                raise ValueError(f"stage {i} of {type(self).__name__} is not invertible")
            layers += stage_layers
        return layers

    def reversible_checkpoints(self, dtype: torch.dtype) -> int | None:
        """Hybrid checkpoints (layers per stored state) when the strategy gives none.

        ``None`` (the default) keeps only the input; :class:`unrolled.MoDL` chooses them from
        ``mu`` and the CG tolerance. Called before every reversible forward pass, with the
        state's dtype.
        """
        return None

    def _layer_unrolls(self) -> list[int]:
        """Return the unroll (stage index) of every layer of the reversible chain."""
        return [k for k, s in enumerate(self.stages) for _ in s.invertible_layers()]  # type: ignore[operator]

    def explain_drift(self, first: int, last: int) -> str | None:
        """Return a likely cause of drift found while reversing chain layers ``last .. first``.

        The reversible chain's ``explain`` hook (:class:`revlayers.ReversibleSequence`): it asks
        the layers with a ``drift_cause(unrolls)`` method (CG and gradient steps), from the
        lowest, and names the unroll where the first cause was found.
        """
        chain = self.__dict__.get("_chain")
        if chain is None:
            return None
        unrolls = self._layer_unrolls()
        span = unrolls[last] - unrolls[first] + 1
        for i in range(first, last + 1):
            cause = getattr(chain[i], "drift_cause", None)
            text = cause(span) if callable(cause) else None
            if text is not None:
                return f"{text} (found at unroll {unrolls[i]}: layer {i}, {chain[i].layer_name()})"
        return None

    def _reversible_chain(self) -> ReversibleSequence:
        chain = self.__dict__.get("_chain")
        if chain is None:
            s = self._strategy
            n = len(self.stages)
            chain = ReversibleSequence(
                self.invertible_layers(),
                checkpoint_every=s.checkpoint_every,
                check_drift=s.check_drift,
                on_drift=s.on_drift,
                labels=[f"unroll {k} of {n}" for k in self._layer_unrolls()],
                explain=self.explain_drift,
            )
            object.__setattr__(self, "_chain", chain)
        return chain

    @property
    def reverse_diagnostics(self) -> ReverseDiagnostics | None:
        """What the last ``"reversible"`` backward pass checked and recomputed, or ``None``.

        A :class:`revlayers.ReverseDiagnostics`: ``checks``, ``max_drift``, ``worst_layer``,
        ``tolerance`` and the ``recomputed`` segments of the reversible chain, so that a
        recomputation is never invisible.
        """
        chain = self.__dict__.get("_chain")
        return None if chain is None else chain.diagnostics

    def _run_reversible(self, state: Tensor, context: StageContext) -> Tensor:
        chain = self._reversible_chain()
        if self._strategy.checkpoint_every is None:
            chain.checkpoint_every = self.reversible_checkpoints(state.dtype)
        for layer in chain:
            reset = getattr(layer, "reset_solves", None)
            if callable(reset):
                reset()
        out: Tensor = chain(state, *context)
        return out

    # ------------------------------------------------------------------ running
    def check_inputs(self, y: Tensor, physics: object, x0: Tensor | None) -> None:
        """Validate the call's arguments; errors name what was received and what is expected."""
        if not isinstance(y, Tensor):
            raise TypeError(f"y (the measurements) must be a torch.Tensor, got {type(y).__name__}")
        self.check_physics(physics)
        if not bool(torch.isfinite(y).all()):
            bad = int((~torch.isfinite(y)).sum())
            raise ValueError(
                f"y (the measurements) contains {bad} non-finite value(s) (NaN or inf); clean the "
                "data before reconstruction"
            )
        if x0 is not None:
            self.adapter.check(x0, "x0")
            if not bool(torch.isfinite(x0).all()):
                raise ValueError("x0 (the initial image) contains NaN or inf values")

    # torch.compile runs this eagerly (a graph break): the input checks read values on the host
    # and the physics' complex views cannot enter a graph (see unrolled._compile)
    @torch.compiler.disable
    def prepare(self, y: Tensor, physics: nn.Module, x0: Tensor | None) -> tuple[Any, StageContext]:
        """Return the checked inputs as the first state and the stages' context ``(y, physics)``.

        What :meth:`forward` does before it runs the stages, and what a training engine that
        runs the stages itself (GLEAM's greedy modules) starts from.
        """
        self.check_inputs(y, physics, x0)
        state = self.initial_state(y, physics, x0)
        if isinstance(state, Tensor):
            # the read-out, not the whole state: a state may carry more channels than the image
            self.adapter.check(self.readout(state), "the initial image (A^H y or x0)")
        return state, StageContext(y, physics)

    def run_stages(self, state: Any, context: StageContext, mode: str | None = None) -> Any:
        """Apply every stage to ``state`` under the strategy's forward mode."""
        mode = self._strategy.forward_name if mode is None else mode
        if mode == "checkpoint" and torch.is_grad_enabled():
            steps = [_bind(stage, context) for stage in self.stages]
            return checkpoint_segments(
                steps, list(self.stages), state, self._strategy.checkpoint_every or 1
            )
        if mode == "reversible":
            return self._run_reversible(state, context)
        for stage in self.stages:
            state = stage(state, context)
        return state

    def forward(self, y: Tensor, physics: nn.Module, x0: Tensor | None = None) -> Tensor:
        """Reconstruct the image from measurements ``y`` of ``physics``.

        Parameters
        ----------
        y:
            Measurements, shaped as ``physics`` produces them (batch first).
        physics:
            The forward model (a physops operator).
        x0:
            Initial image (default: ``physics.adjoint(y)``, or ``y`` for deblurring models).
        """
        state, context = self.prepare(y, physics, x0)
        return self.readout(self.run_stages(state, context))

    def intermediates(
        self, y: Tensor, physics: nn.Module, x0: Tensor | None = None
    ) -> list[Tensor]:
        """Return the read-out after every stage (for losses over all stages, and GLEAM's Fig. 9).

        Runs the stages one by one (``"reversible"`` keeps no intermediate states, so it runs
        them as ``"backprop"`` would: use it for evaluation under ``torch.no_grad``).
        """
        state, context = self.prepare(y, physics, x0)
        mode = self._strategy.forward_name
        outs: list[Tensor] = []
        for stage in self.stages:
            if mode == "checkpoint" and torch.is_grad_enabled():
                state = checkpoint_segments([_bind(stage, context)], [stage], state, 1)
            else:
                state = stage(state, context)
            outs.append(self.readout(state))
        return outs
