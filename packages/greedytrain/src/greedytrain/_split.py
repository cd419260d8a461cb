"""Grouping N stages into M contiguous modules, and running one module's stages."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from ._tree import describe_layout, tree_layout
from ._validate import integer, known_name

__all__ = ["StageSequence", "split_stages"]

SPLITS = ("even", "balanced")


def split_stages(num_stages: int, modules: int, split: str | Sequence[int] = "even") -> list[int]:
    """Return the number of stages in each of ``modules`` contiguous modules.

    Parameters
    ----------
    num_stages
        N, the number of stages of the unrolled network.
    modules
        M, the number of modules (``1 <= M <= N``); M = 1 is end-to-end training.
    split
        ``"even"``: N/M stages per module, M must divide N. ``"balanced"``: sizes differ by at most
        one, the first ``N mod M`` modules take one stage more (e.g. N = 8, M = 3 gives 3, 3, 2).
        A sequence of M positive integers summing to N: those sizes, in order.

    Returns
    -------
    list of int
        M module sizes, summing to N. Module m holds stages ``sum(sizes[:m])`` to
        ``sum(sizes[:m+1]) - 1``.
    """
    if num_stages < 1:
        raise ValueError(
            "the stage list is empty: pass the N >= 1 stages of the unrolled network, "
            "each an nn.Module called as stage(state, context) -> state"
        )
    modules = integer(
        modules,
        "modules",
        low=1,
        expected=">= 1 (1 = end-to-end training)",
        type_expected="an int (the number M of modules)",
    )
    if modules > num_stages:
        raise ValueError(
            f"modules={modules} is more than the {num_stages} stages: every module needs at least "
            f"one stage, so use modules <= {num_stages}"
        )
    if isinstance(split, str):
        if split == "even":
            if num_stages % modules:
                raise ValueError(
                    f'split="even" needs modules={modules} to divide the {num_stages} stages; '
                    f'use split="balanced" (sizes '
                    f"{split_stages(num_stages, modules, 'balanced')}) or give the sizes as a list"
                )
            return [num_stages // modules] * modules
        known_name(split, "split", SPLITS, extra=", or a list of module sizes")
        base, extra = divmod(num_stages, modules)
        return [base + (1 if m < extra else 0) for m in range(modules)]
    sizes = list(split)
    if any(isinstance(s, bool) or not isinstance(s, int) for s in sizes):
        raise TypeError(f"split sizes must be ints, got {sizes!r}")
    if len(sizes) != modules or any(s < 1 for s in sizes) or sum(sizes) != num_stages:
        raise ValueError(
            f"split={sizes} must be {modules} positive module sizes (modules={modules}) summing to "
            f"the {num_stages} stages"
        )
    return sizes


class StageSequence(nn.Module):
    """One module's runner: its stages applied in order, ``state <- stage(state, context)``.

    The default ``module_wrapper`` of :class:`~greedytrain.GreedyTrainer`. With
    ``check_shapes=True`` every stage must return a state with the nesting and tensor shapes of the
    state it received; a stage that does not raises ``ValueError`` naming it.

    Parameters
    ----------
    stages
        The stages, each called as ``stage(state, context) -> state``.
    offset
        The index of the first stage in the whole network (used in error messages).
    check_shapes
        Compare each stage's output layout with its input layout.
    """

    def __init__(
        self, stages: Sequence[nn.Module], offset: int = 0, check_shapes: bool = True
    ) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.offset = offset
        self.check_shapes = check_shapes

    def forward(self, state: Any, context: Any) -> Any:
        for i, stage in enumerate(self.stages):
            new_state = stage(state, context)
            if self.check_shapes:
                check_same_layout(state, new_state, f"stage {self.offset + i}")
            state = new_state
        return state


def check_same_layout(before: Any, after: Any, who: str) -> None:
    """Raise ``ValueError`` when ``after`` does not have the nesting and shapes of ``before``."""
    if tree_layout(before) != tree_layout(after):
        raise ValueError(
            f"{who} returned a state {describe_layout(after)} from the state "
            f"{describe_layout(before)}; every stage must keep the state's nesting and tensor "
            "shapes (lift and project outside the stages, or pass check_shapes=False)"
        )
