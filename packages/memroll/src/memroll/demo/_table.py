"""The demo's table: each method's metrics, memory and time, with ratios to backprop's."""

from __future__ import annotations

from typing import Any

__all__ = ["HEADER", "format_table", "markdown_table", "table_row"]

HEADER = ["method", "PSNR (dB)", "SSIM", "nRMSE", "peak training memory (MB)", "time/iter (ms)"]


def table_row(
    name: str,
    metrics: dict[str, Any] | None,
    memory: float | None,
    step_time: float | None,
    reference: dict[str, Any],
    std: dict[str, float] | None = None,
) -> list[str]:
    """One row: each value with its ratio to backprop's (``reference``).

    Metrics are given as their mean or, with ``std``, as mean ± standard deviation over the
    test slices; ``memory`` in bytes and ``step_time`` in seconds (``None``: no training).
    """

    def cell(value: float | None, ref: float | None, fmt: str, spread: float | None = None) -> str:
        if value is None:
            return "-"
        ratio = f" ({value / ref:.2f}x)" if ref else ""
        plus = "" if spread is None else f" ± {spread:{fmt}}"
        return f"{value:{fmt}}{plus}{ratio}"

    m, s = metrics or {}, std or {}
    return [
        name,
        cell(m.get("psnr"), reference.get("psnr"), ".2f", s.get("psnr")),
        cell(m.get("ssim"), reference.get("ssim"), ".4f", s.get("ssim")),
        cell(m.get("nrmse"), reference.get("nrmse"), ".4f", s.get("nrmse")),
        cell(None if memory is None else memory / 1e6, reference.get("memory"), ".1f"),
        cell(None if step_time is None else step_time * 1e3, reference.get("time"), ".0f"),
    ]


def format_table(rows: list[list[str]]) -> str:
    """Return the rows under :data:`HEADER` as aligned plain text."""
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(HEADER, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def markdown_table(rows: list[list[str]]) -> str:
    """Return the rows under :data:`HEADER` as a Markdown table."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
