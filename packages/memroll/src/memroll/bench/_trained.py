r"""The trained tables' seeds: mean and spread per method, and the papers' claims as verdicts.

Tables 1 and 4 of the miniature train every method with several seeds (model initialisation and
data order) to a plateau (:mod:`memroll.bench._convergence`). A method's figure is the mean over
seeds of its test-split mean, with the seeds' sample standard deviation as its spread. A claim
compares two methods' means with a tolerance

.. math::

    t = \max\bigl(t_0,\; 2\sqrt{s_a^2 / n_a + s_b^2 / n_b}\bigr)

(two standard errors of the difference, and never below :math:`t_0 = 0.2` dB, the size of the
differences GLEAM Table II calls on par).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import plots
from ._format import JobRecord, image, ok, short

__all__ = [
    "TOLERANCE_DB",
    "Claim",
    "claim",
    "curves_figure",
    "mean_sd",
    "runs",
    "seed_metric",
    "stopped",
]

#: the smallest PSNR difference a claim's verdict treats as real (dB)
TOLERANCE_DB = 0.2


def runs(jobs: Sequence[JobRecord], table: str, **labels: Any) -> list[JobRecord]:
    """Every job of ``table`` with these labels (one per seed), in run order."""
    return [
        j
        for j in jobs
        if j["table"] == table and all(j["labels"].get(k) == v for k, v in labels.items())
    ]


def mean_sd(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count; ``nan`` when empty."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, sd, n


def _values(found: Sequence[JobRecord], name: str) -> list[float]:
    return [float(j["result"]["test"][name]["mean"]) for j in found if ok(j)]


def seed_metric(found: Sequence[JobRecord], name: str, digits: str) -> str:
    """``mean ± sd`` over the seeds of a test metric (``—`` when none ran)."""
    mean, sd, n = mean_sd(_values(found, name))
    if n == 0:
        return "—"
    return f"{format(mean, digits)} ± {format(sd, digits)}"


def stopped(found: Sequence[JobRecord]) -> str:
    """Return the steps each seed trained and why it stopped: ``"650 (plateau), 900 (cap)"``."""
    parts = []
    for j in found:
        if ok(j):
            t = j["result"].get("training", {})
            parts.append(f"{t.get('steps', '?')} ({t.get('stopped', '?')})")
        else:
            parts.append(f"failed: {short(j['result']['error'], 60)}")
    return ", ".join(parts) or "—"


class Claim:
    """A paper's claim that method ``a`` is on par with / at least method ``b`` (test PSNR)."""

    def __init__(self, a: Sequence[JobRecord], b: Sequence[JobRecord]):
        self.a = _values(a, "psnr")
        self.b = _values(b, "psnr")
        ma, sa, na = mean_sd(self.a)
        mb, sb, nb = mean_sd(self.b)
        self.gap = ma - mb
        spread = math.sqrt(sa**2 / na + sb**2 / nb) if na and nb else math.nan
        self.tolerance = max(TOLERANCE_DB, 2 * spread) if na and nb else math.nan
        self.measured = bool(na and nb)

    def on_par(self) -> bool:
        return self.measured and abs(self.gap) <= self.tolerance

    def at_least(self) -> bool:
        return self.measured and self.gap >= -self.tolerance


def claim(text: str, a_name: str, b_name: str, result: Claim, kind: str) -> str:
    """One verdict line: ``kind`` is ``"on par"`` or ``"at least"``."""
    if not result.measured:
        return f"- {text}: not measured (a method did not run)"
    holds = result.on_par() if kind == "on par" else result.at_least()
    if kind == "at least" and result.gap > result.tolerance:
        what = f"holds: {a_name} is above {b_name} by more than the tolerance"
    elif holds:
        what = f"holds: {a_name} and {b_name} are within the tolerance"
    else:
        side = "below" if result.gap < 0 else "above"
        what = f"does NOT hold: {a_name} is {side} {b_name} by more than the tolerance"
    return (
        f"- {text}: {what} ({a_name} − {b_name} = {result.gap:+.2f} dB over "
        f"{len(result.a)} and {len(result.b)} seeds; tolerance {result.tolerance:.2f} dB)"
    )


def curves_figure(
    path: Path,
    series: Mapping[str, Sequence[JobRecord]],
    *,
    title: str,
    zero_filled: float | None = None,
) -> list[str]:
    """Draw validation PSNR against step per method and seed, and test PSNR per stage.

    Returns the Markdown that shows the figure (nothing when no run finished).
    """
    curves = plots.LinePanel("training step", "validation PSNR (dB)", title=title)
    stages = plots.LinePanel("stage (unroll) used as output", "test PSNR (dB)", title="per stage")
    for i, (label, found) in enumerate(series.items()):
        for k, job in enumerate(j for j in found if ok(j)):
            r = job["result"]
            color = f"C{i}"
            name = label if k == 0 else None
            points = [(float(v["step"]), float(v["psnr"])) for v in r.get("val", [])]
            curves.lines.append(plots.Line(name, points, color=color, marker=None, alpha=0.8))
            per_stage = [(float(s + 1), float(p)) for s, p in enumerate(r.get("stage_psnr", []))]
            stages.lines.append(plots.Line(name, per_stage, color=color, alpha=0.8))
    if not any(line.points for line in curves.lines):
        return []
    if zero_filled is not None:
        stages.hline = zero_filled
        stages.title = "per stage (grey: zero-filled)"
    plots.line_panels(path, [curves, stages], size=(11.0, 3.8), legend_size=7)
    return ["", image(path.name)]
