"""Formatting shared by the benchmark's tables.

Finding a job's result, cells with ratios, flatness verdicts, and the figures' panels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from .. import plots

__all__ = [
    "FLAT_MB",
    "FLAT_SHARE",
    "ISSUE_DEEPINV",
    "cell",
    "find",
    "finite",
    "finite_points",
    "get",
    "grid",
    "growth",
    "image",
    "mem_label",
    "memory_panel",
    "metric",
    "num",
    "ok",
    "point",
    "ratio",
    "short",
    "slope",
    "verdict",
]

#: deepinv's MoDL as issue 7 measured it: unrolls -> (GB of training memory, s per step).
ISSUE_DEEPINV = {2: (0.75, 3.3), 4: (1.38, 6.6), 8: (2.67, 16.1)}
#: a strategy is "flat" in depth when its memory grows by less than this share of backprop's
#: growth over the same depths (and by less than FLAT_MB)
FLAT_SHARE = 0.1
FLAT_MB = 5.0

JobRecord = dict[str, Any]


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def find(jobs: Sequence[JobRecord], table: str, **labels: Any) -> JobRecord | None:
    for job in jobs:
        if job["table"] == table and all(job["labels"].get(k) == v for k, v in labels.items()):
            return job
    return None


def ok(job: JobRecord | None) -> bool:
    return job is not None and "error" not in job["result"]


def get(job: JobRecord | None, key: str) -> float | None:
    if not ok(job):
        return None
    value = job["result"].get(key)  # type: ignore[index]
    return None if value is None else float(value)


def num(value: float | None, digits: str = ".1f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return format(value, digits)


def ratio(value: float | None, ref: float | None) -> str:
    if value is None or ref is None or ref <= 0:
        return "—"
    return f"{value / ref:.2f}x"


def cell(job: JobRecord | None, key: str, ref: JobRecord | None, digits: str = ".1f") -> str:
    if job is None:
        return "—"
    if not ok(job):
        return f"failed: {short(job['result']['error'])}"
    value, base = get(job, key), get(ref, key)
    if value is None:
        return "—"
    return f"{format(value, digits)} ({ratio(value, base)})"


def grid(
    jobs: Sequence[JobRecord],
    table: str,
    rows: tuple[str, str, Sequence[Any]],
    columns: tuple[str, Sequence[str], str],
    fill: Callable[[JobRecord | None, JobRecord | None, str, Any], str],
    **labels: Any,
) -> list[str]:
    """Return a Markdown table of ``table``'s jobs: a row per value, a column per label value.

    ``rows`` is ``(header, label, values)`` and ``columns`` is ``(label, values, reference)``;
    cell ``(row, column)`` is ``fill(job, ref, column, row)``, ``job`` the job with those two
    labels (and ``labels``), ``ref`` the one of the ``reference`` column in the same row.
    """
    header, row_label, row_values = rows
    column_label, column_values, reference = columns
    lines = [f"| {header} | " + " | ".join(column_values) + " |"]
    lines.append("|---|" + "---|" * len(column_values))
    for r in row_values:
        ref = find(jobs, table, **labels, **{row_label: r, column_label: reference})
        cells = [
            fill(find(jobs, table, **labels, **{row_label: r, column_label: c}), ref, c, r)
            for c in column_values
        ]
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return lines


def short(text: str, n: int = 90) -> str:
    text = text.replace("|", "/").replace("\n", " ")
    return text if len(text) <= n else text[: n - 1] + "…"


def metric(job: JobRecord | None, name: str, digits: str) -> str:
    if not ok(job):
        return "—"
    m = job["result"]["test"][name]  # type: ignore[index]
    return f"{format(m['mean'], digits)} ({format(m['std'], digits)})"


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys against xs."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den > 0 else float("nan")


def growth(jobs: Sequence[JobRecord | None], key: str = "step_mb") -> float | None:
    values = [get(j, key) for j in jobs]
    if len(values) < 2 or values[0] is None or values[-1] is None:
        return None
    return values[-1] - values[0]


def verdict(name: str, jobs: list[JobRecord | None], ref: list[JobRecord | None], unit: str) -> str:
    if len(jobs) < 2:
        return f"- {name}: flatness needs two depths or more (this run measured one)"
    grow, ref_grow = growth(jobs), growth(ref)
    if grow is None or ref_grow is None:
        return f"- {name}: not measured at the smallest and largest depth"
    limit = max(FLAT_MB, FLAT_SHARE * ref_grow)
    flat = grow <= limit
    return (
        f"- {name}: {'flat' if flat else 'NOT flat'}: {grow:+.1f} MB from the smallest to the "
        f"largest {unit} (backprop: {ref_grow:+.1f} MB; flat means below {limit:.1f} MB)"
    )


def image(name: str) -> str:
    """Return the Markdown that shows the figure ``name`` (a file beside the report)."""
    return f"![{name}]({name})"


def point(x: float, job: JobRecord | None) -> tuple[float, float] | None:
    value = get(job, "step_mb")
    return None if value is None else (x, value)


def memory_panel(
    xlabel: str,
    series: dict[str, list[tuple[float, float] | None]],
    *,
    title: str,
    xlog2: bool = False,
) -> plots.LinePanel:
    """Step memory against depth, one line per strategy (unmeasured points left out)."""
    lines = [plots.Line(s, [p for p in pts if p is not None]) for s, pts in series.items()]
    return plots.LinePanel(xlabel, "step memory (MB)", lines, title=title, xlog2=xlog2)


def finite_points(rows: list[dict[str, Any]], key: str) -> list[tuple[float, float]]:
    points = [(r["depth"], finite(r[key])) for r in rows]
    return [(d, v) for d, v in points if v is not None]


def mem_label(meta: dict[str, Any]) -> str:
    if meta["device"] == "cuda":
        return "torch.cuda.max_memory_allocated"
    return "peak RSS (VmHWM)"


def finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) and value > 0 else None
