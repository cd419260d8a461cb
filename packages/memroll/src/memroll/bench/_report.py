"""The Markdown report and PNG plots of ``memroll bench`` (:mod:`memroll.bench`).

Every figure in the report comes from ``results.json`` of the same run; nothing is typed in by
hand except deepinv's figures from issue 7, which are always labelled "from the issue, not
measured here".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._comparisons import table4, table5
from ._format import mem_label
from ._tables import table1, table2, table3

__all__ = ["write_report"]


# ------------------------------------------------------------------------------------------------
# the report
# ------------------------------------------------------------------------------------------------
def write_report(results: dict[str, Any], out: Path) -> str:
    """Write ``report.md`` (and the plots) to ``out`` from a run's results; return the text."""
    meta, cfg, jobs = results["meta"], results["configs"], results["jobs"]
    gpu = f" ({meta['gpu']})" if meta.get("gpu") else ""
    lines = [
        f"# memroll bench ({meta['mode']})",
        "",
        f"{meta['date']}; device {meta['device']}{gpu}; {meta['cpu']}, {meta['cores']} cores; "
        f"{meta['threads']} intra-op thread(s) per measured process, {meta['jobs']} process(es) "
        f"at a time; Python {meta['python']}, torch {meta['torch']}; load average "
        f"{meta['load_start']} at the start, {meta['load_end']} at the end; "
        f"{meta['wall_s'] / 60:.1f} minutes.",
        "",
        f"Method: every configuration ran in a fresh process (`MALLOC_MMAP_THRESHOLD_=65536`). "
        f"Memory: {mem_label(meta)}"
        + (
            ", reset by writing 5 to /proc/self/clear_refs before the measured part"
            if meta["device"] != "cuda"
            else " after reset_peak_memory_stats"
        )
        + ". Times: medians of several steps after a warm-up step, as ratios to plain backprop "
        "of the same run"
        + (
            "; the machine is shared, so timings are noisy: compare ratios rather than seconds."
            if meta["device"] != "cuda"
            else "."
        ),
    ]
    if meta["jobs"] > 1:
        lines.append(
            f"Timings of this run are contended: {meta['jobs']} measured processes ran at once."
        )
    if meta["device"] != "cuda":
        lines.append(
            "The same code measures `torch.cuda.max_memory_allocated` on a CUDA device "
            "(`--device cuda`); that path was not exercised in this run."
        )
    sections = {"1": table1, "2": table2, "3": table3, "4": table4, "5": table5}
    for table in meta["tables"]:
        lines += ["", *sections[table](jobs, cfg, out)]
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    return text
