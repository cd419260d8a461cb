r"""Training to convergence for the benchmark's quality tables (issue 16 item 4).

A table that tests a paper's claim about quality ("GLEAM on par with end-to-end", "LUSER-DW at
least LU-DnCNN") must compare trained networks, not networks stopped at an arbitrary step. The
worker's ``quality`` kind therefore trains with a *plateau rule* on the validation PSNR:

.. math::

    \text{stop after validation } k \quad\text{when}\quad
    \max_{k - P < j \le k} \mathrm{PSNR}_j \;\le\; \max_{j \le k - P} \mathrm{PSNR}_j + \delta

(the best validation PSNR has not improved by more than :math:`\delta` dB over the last :math:`P`
validations), with a step cap ``max_steps`` and a floor ``min_steps``. The run proceeds in
chunks of ``val_every`` steps through :func:`unrolled.train`'s exact resume (``run_dir`` and
``resume=True``): the data order is a function of ``(seed, step)`` and a checkpoint holds the
optimizer and RNG states, so the chunks train exactly the run that one call of ``steps =
max_steps`` would, and the rule only decides where it ends. The model of the lowest validation
nRMSE (``best.pt``, GLEAM's selection rule) is what the test split scores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import unrolled
from unrolled.training import median

__all__ = ["Plateau", "plateaued", "train_to_plateau"]


@dataclass(frozen=True)
class Plateau:
    """The plateau rule: ``patience`` validations, ``delta`` dB, ``min_steps`` to ``max_steps``."""

    patience: int = 4
    delta: float = 0.05
    max_steps: int = 2000
    min_steps: int = 0

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Plateau:
        """Build from a spec's ``plateau`` dict; an unknown key or a bad value is refused."""
        unknown = sorted(set(spec) - {"patience", "delta", "max_steps", "min_steps"})
        if unknown:
            raise ValueError(
                f"unknown plateau option {unknown[0]!r}; valid: patience, delta, max_steps, "
                "min_steps"
            )
        out = cls(**spec)
        for name in ("patience", "max_steps"):
            value = getattr(out, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"plateau {name} must be a positive integer, got {value!r}")
        if isinstance(out.min_steps, bool) or not isinstance(out.min_steps, int):
            raise ValueError(f"plateau min_steps must be an integer, got {out.min_steps!r}")
        if not isinstance(out.delta, (int, float)) or not math.isfinite(out.delta) or out.delta < 0:
            raise ValueError(f"plateau delta must be a finite number >= 0 (dB), got {out.delta!r}")
        return out


def plateaued(psnrs: Sequence[float], patience: int, delta: float) -> bool:
    """Tell whether the last ``patience`` values failed to beat the earlier best by ``delta``.

    ``False`` while there are ``patience`` values or fewer.
    """
    if len(psnrs) <= patience:
        return False
    return max(psnrs[-patience:]) <= max(psnrs[:-patience]) + delta


def train_to_plateau(
    model: unrolled.UnrolledModel,
    train_data: Any,
    val_data: Any,
    *,
    run_dir: str,
    plateau: Plateau,
    options: dict[str, Any],
    **kwargs: Any,
) -> tuple[unrolled.TrainResult, dict[str, Any]]:
    """Train ``model`` until the plateau rule or the step cap stops it.

    ``options`` are :func:`unrolled.train`'s options (``val_every`` is the chunk; ``steps`` is
    ignored: ``plateau.max_steps`` caps the run); ``kwargs`` go to every call (``strategy``,
    ``strategy_options``, ``device``). Returns the last call's result and how the run stopped:
    ``{"stopped": "plateau" | "cap", "steps": ..., "peak_bytes": ..., "baseline_bytes": ...}``
    (memory of the first chunk, which holds the first step: the optimizer state is allocated
    there, as in one uninterrupted run).
    """
    chunk = options.get("val_every")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"training to a plateau needs val_every (a positive int), got {chunk!r}")
    options = {k: v for k, v in options.items() if k != "steps"}
    done = 0
    first: unrolled.TrainResult | None = None
    while True:
        target = min(done + chunk, plateau.max_steps)
        result = unrolled.train(
            model,
            train_data,
            val_data,
            run_dir=run_dir,
            resume=done > 0,
            steps=target,
            progress=False,
            **options,
            **kwargs,
        )
        first = first or result
        done = target
        psnrs = [float(v["psnr"]) for v in result.val_history]
        if done >= plateau.min_steps and plateaued(psnrs, plateau.patience, plateau.delta):
            stopped = "plateau"
            break
        if done >= plateau.max_steps:
            stopped = "cap"
            break
    info = {
        "stopped": stopped,
        "steps": done,
        "rule": asdict(plateau),
        "peak_bytes": first.peak_memory_bytes,
        "baseline_bytes": first.memory_baseline_bytes,
        "memory_kind": first.memory_kind,
        # every step's time, the chunks' first steps included (they pay no warm-up of their own
        # beyond reading the checkpoint, which is outside the timed step)
        "time_s": median([float(r["time_s"]) for r in result.history[1:]] or [math.nan]),
    }
    return result, info
