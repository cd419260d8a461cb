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
from ._paper_report import PAPER_SECTIONS
from ._tables import table1, table2, table3

__all__ = ["write_report"]

MINIATURE_SECTIONS = {"1": table1, "2": table2, "3": table3, "4": table4, "5": table5}


# ------------------------------------------------------------------------------------------------
# the report
# ------------------------------------------------------------------------------------------------
def _method(meta: dict[str, Any]) -> list[str]:
    """Return the report's paragraph on how memory and time were measured in this run."""
    cuda = meta["device"] == "cuda"
    per_table = meta.get("isolation") == "table"
    where = (
        "the configurations of each table ran one after another in one process per table"
        + (", `torch.cuda.reset_peak_memory_stats` between them" if cuda else "")
        if per_table
        else "every configuration ran in a fresh process"
    )
    text = (
        f"Method: {where} (`MALLOC_MMAP_THRESHOLD_=65536`). Memory: {mem_label(meta)}"
        + (
            " after reset_peak_memory_stats"
            if cuda
            else ", reset by writing 5 to /proc/self/clear_refs before the measured part"
        )
        + ". Times: medians of several steps after a warm-up step, as ratios to plain backprop "
        "of the same run"
        + ("." if cuda else "; the machine is shared, so timings are noisy: compare ratios.")
    )
    lines = [text]
    if per_table and not cuda:
        lines.append(
            "**This CPU run used one process per table (`--isolation table`)**: the resident set "
            "of a process keeps memory an earlier configuration freed, so its CPU memory figures "
            "are not per configuration (a fresh process per configuration is the CPU rule)."
        )
    if meta["jobs"] > 1:
        lines.append(
            f"Timings of this run are contended: {meta['jobs']} measured processes ran at once."
        )
    if not cuda:
        lines.append(
            "The same code measures `torch.cuda.max_memory_allocated` on a CUDA device "
            "(`--device cuda`); that path was not exercised in this run."
        )
    if meta.get("max_size"):
        lines.append(
            f"Every image was scaled down to at most {meta['max_size']} pixels a side "
            "(`--max-size`): the tables' structure, not their sizes."
        )
    return lines


def write_report(results: dict[str, Any], out: Path) -> str:
    """Write ``report.md`` (and the plots) to ``out`` from a run's results; return the text."""
    meta, cfg, jobs = results["meta"], results["configs"], results["jobs"]
    scale = meta.get("scale", "miniature")
    gpu = f" ({meta['gpu']}, TF32 {meta.get('tf32')})" if meta.get("gpu") else ""
    cpu = meta.get("table_cpu_s", {})
    minutes = ", ".join(
        f"table {t}: {s / 60:.1f}" + (f" wall, {cpu[t] / 60:.1f} CPU" if t in cpu else "")
        for t, s in meta.get("table_s", {}).items()
    )
    lines = [
        f"# memroll bench ({meta['mode']}, {scale} scale)",
        "",
        f"{meta['date']}; device {meta['device']}{gpu}; {meta['cpu']}, {meta['cores']} cores; "
        f"{meta['threads']} intra-op thread(s) per measured process, {meta['jobs']} process(es) "
        f"at a time; Python {meta['python']}, torch {meta['torch']}; load average "
        f"{meta['load_start']} at the start, {meta['load_end']} at the end; "
        f"{meta['wall_s'] / 60:.1f} minutes" + (f" ({minutes})." if minutes else "."),
        "",
        *_method(meta),
    ]
    sections = PAPER_SECTIONS if scale == "paper" else MINIATURE_SECTIONS
    for table in meta["tables"]:
        lines += ["", *sections[table](jobs, cfg, out)]
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    return text
