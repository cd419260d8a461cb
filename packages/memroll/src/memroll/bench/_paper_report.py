"""The report of ``memroll bench --scale paper``: measured figures beside the papers' own.

Memory is the peak of a training step as the worker measures it (on CUDA
``torch.cuda.max_memory_allocated``: model, optimizer state, data and activations; the papers
report the "maximum GPU memory during training", which also holds the CUDA context, a few hundred
MB, so measured / paper ratios somewhat below 1 are expected). Times are medians of the measured
steps; the papers' GPUs (Titan Xp, RTX 6000) are several times slower than an H200, so times
compare as ratios to backprop, not in seconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._format import JobRecord, find, get, grid, num, ok, ratio, short
from ._paper import PAPER_FIGURES

__all__ = ["PAPER_SECTIONS"]

GB = 1024.0  # MB per GB


def _gb(job: JobRecord | None, key: str = "peak_mb") -> float | None:
    value = get(job, key)
    return None if value is None else value / GB


def _failed(job: JobRecord | None) -> str:
    if job is None:
        return "not run"
    return f"failed: {short(job['result']['error'], 70)}"


def _strategy_rows(
    jobs: Sequence[JobRecord], table: str, figures: dict[str, Any], strategies: Sequence[str],
    **labels: Any,
) -> list[str]:  # fmt: skip
    """Rows of strategy, measured peak and time (ratios to backprop) and the paper's figures."""
    ref = find(jobs, table, strategy="backprop", **labels)
    paper_ref = figures.get("backprop")
    lines = [
        "| strategy | peak memory (GB) | / backprop | time / step (s) | / backprop | paper "
        "memory (GB) | paper / backprop | paper time ratio | measured / paper memory |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in strategies:
        job = find(jobs, table, strategy=s, **labels)
        paper = figures.get(s)
        p_mem = f"{paper[0]:g}" if paper else "—"
        p_ratio = ratio(paper[0], paper_ref[0]) if paper and paper_ref else "—"
        p_time = ratio(paper[1], paper_ref[1]) if paper and paper_ref else "—"
        if not ok(job):
            lines.append(f"| {s} | {_failed(job)} |||| {p_mem} | {p_ratio} | {p_time} | — |")
            continue
        mem, sec = _gb(job), get(job, "time_s")
        lines.append(
            f"| {s} | {num(mem, '.2f')} | {ratio(mem, _gb(ref))} | {num(sec, '.3f')} | "
            f"{ratio(sec, get(ref, 'time_s'))} | {p_mem} | {p_ratio} | {p_time} | "
            f"{ratio(mem, paper[0]) if paper else '—'} |"
        )
    return lines


# ------------------------------------------------------------------------------------------------
# tables
# ------------------------------------------------------------------------------------------------
def _table1(jobs: Sequence[JobRecord], cfg: dict[str, Any], out: Path) -> list[str]:
    c = cfg["t1"]
    g2, g5 = c["gleam2"], c["gleam5"]
    d2, d5 = g2["data"], g5["data"]
    f2, f5 = PAPER_FIGURES["gleam_table2"], PAPER_FIGURES["gleam_table5"]
    mel = PAPER_FIGURES["mel_mri"]
    lines = [
        "## 1. GLEAM Table II, GLEAM Table V and MEL's MoDL at the papers' sizes",
        "",
        f"GLEAM Table II: MoDL, N = {g2['model_kwargs']['iterations']}, coupling prior of "
        f"{g2['model_kwargs']['layers']} convolutions, {g2['model_kwargs']['features']} features, "
        f"{g2['model_kwargs']['cg_max_iter']} CG steps, mu = {g2['model_kwargs']['mu']:g}; "
        f"{d2['num_coils']} coils, {d2['height']} x {d2['width']}, batch {g2['batch']}, R = "
        f"{d2['acceleration']:g} Poisson disc; median of {c['steps']} steps after a warm-up step. "
        f"Paper: {f2['source']}, a 12 GB Titan Xp.",
        "",
        *_strategy_rows(jobs, "1", f2, ("backprop", "checkpoint", "reversible", "greedy"),
                        part="gleam2"),
        "",
        f"GLEAM Table V: 3D MoDL (3 x 3 x 3 convolutions) on 2D+time, {d5['frames']} frames of "
        f"{d5['height']} x {d5['width']} (the largest matrix of the cine data), "
        f"{d5['num_coils']} coils, k-t mask R = {d5['acceleration']:g}, N = "
        f"{g5['model_kwargs']['iterations']}, N_f = {g5['model_kwargs']['features']}, mu = "
        f"{g5['model_kwargs']['mu']:g}, batch 1. Paper: {f5['source']}.",
        "",
        *_strategy_rows(jobs, "1", f5, ("backprop", "checkpoint", "greedy"), part="gleam5"),
        "",
        "MEL's MoDL at 10 unrolls (invertible residual prior inverted by fixed-point iteration) at "
        f"GLEAM Table II's size. Paper: {mel['source']}: {mel['backprop'][0]:g} GB against "
        f"{mel['reversible'][0]:g} GB ({mel['reversible'][0] / mel['backprop'][0]:.2f}x), training "
        f"{mel['reversible'][1] / mel['backprop'][1]:.2f}x as long (total times, no per-step "
        "figure; the paper's image size is not stated).",
        "",
        *_strategy_rows(jobs, "1", mel, ("backprop", "reversible"), part="mel"),
    ]  # fmt: skip
    return lines


def _table2(jobs: Sequence[JobRecord], cfg: dict[str, Any], out: Path) -> list[str]:
    c = cfg["t2"]
    issue = PAPER_FIGURES["issue15_depth"]
    strategies = ("backprop", "checkpoint", "reversible", "greedy")
    lines = [
        "## 2. Memory against depth at GLEAM Table II's size",
        "",
        "Peak memory (GB; ratio to backprop at the same N) of GLEAM Table II's MoDL (table 1) at "
        "N unrolls; in brackets issue 15's measurement through memroll on an H200 where it has "
        "one (MB).",
        "",
    ]
    rows, columns = ("N", "depth", c["depths"]), ("strategy", strategies, "backprop")

    def memory(job: JobRecord | None, ref: JobRecord | None, s: str, n: int) -> str:
        before = issue[s].get(n)
        tail = f" [{before} MB]" if before else ""
        if not ok(job):
            return _failed(job) + tail
        mem = _gb(job)
        return f"{num(mem, '.2f')} ({ratio(mem, _gb(ref))}){tail}"

    def time(job: JobRecord | None, ref: JobRecord | None, s: str, n: int) -> str:
        sec = get(job, "time_s")
        rel = ratio(sec, get(ref, "time_s"))
        return f"{num(sec, '.3f')} ({rel})" if ok(job) else "—"

    lines += grid(jobs, "2", rows, columns, memory)
    lines += ["", "Time per step (s; ratio to backprop):", ""]
    return lines + grid(jobs, "2", rows, columns, time)


def _sci(value: Any) -> str:
    if value is None:
        return "failed"
    value = float(value)
    return "nan (diverged)" if not math.isfinite(value) else f"{value:.1e}"


def _table3(jobs: Sequence[JobRecord], cfg: dict[str, Any], out: Path) -> list[str]:
    c = cfg["t3"]
    ref = PAPER_FIGURES["mel_accuracy"]
    job = find(jobs, "3")
    lines = [
        "## 3. MEL's accuracy study at GLEAM Table II's size",
        "",
        "Relative error of reversible gradients against float32 backprop (all parameters, batch "
        f"{c['batch']}), without checkpoints and with one every {c['checkpoint_unrolls']} "
        f"unrolls; the float32 floor is float32 against float64 backprop (on CUDA with the "
        f"run's TF32 settings). {ref['source']}: checkpoints every 10 unrolls kept "
        f"~{ref['checkpointed']:g}.",
        "",
    ]
    if not ok(job):
        return [*lines, _failed(job)]
    lines += [
        "| N | float32 floor | reversible | MEL reference code | reversible + checkpoints |",
        "|---|---|---|---|---|",
    ]
    for r in job["result"]["rows"]:  # type: ignore[index]
        mel = ref["plain"].get(r["depth"])
        lines.append(
            f"| {r['depth']} | {_sci(r['float32_floor'])} | {_sci(r['plain'])} | "
            f"{_sci(mel) if mel is not None else '—'} | {_sci(r['checkpointed'])} |"
        )
    return lines


def _max_batch(fixed: float, per: float, gb: float) -> int | None:
    """Return the largest batch whose predicted peak fits ``gb`` (``None``: not even batch 1)."""
    if per <= 0:
        return None
    b = math.floor((gb - fixed) / per)
    return b if b >= 1 else None


def _luser_rows(jobs: Sequence[JobRecord], c: dict[str, Any]) -> list[str]:
    paper = PAPER_FIGURES["luser_table3"]
    b1, b2 = c["batches"][0], c["batches"][-1]
    sizes = c["gpu_gb"]
    lines = [
        "| method | parameters (paper) | "
        + " | ".join(f"peak at batch {b} (GB)" for b in (b1, b2))
        + " | GB per sample | "
        + " | ".join(f"max batch in {g} GB (paper)" for g in sizes)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(sizes),
    ]
    for label in ("LU-DnCNN", "LUSER-SW", "LUSER-DW"):
        small = find(jobs, "4", part="luser", method=label, batch=b1)
        large = find(jobs, "4", part="luser", method=label, batch=b2)
        want = paper["batch"][label]
        mine = f"{int(get(small, 'params') or 0):,}" if ok(small) else "—"
        head = f"| {label} | {mine} ({paper['params'][label]:,}) | "
        m1, m2 = _gb(small), _gb(large)
        if m1 is None or m2 is None or b2 == b1:
            lines.append(head + f"{_failed(small if m1 is None else large)} |||" + "|" * len(sizes))
            continue
        per = (m2 - m1) / (b2 - b1)
        fixed = m1 - per * b1
        fits = [_max_batch(fixed, per, g) for g in sizes]
        cells = [f"{f if f else '-'} ({want[g] if want[g] else '-'})" for f, g in zip(fits, sizes)]
        lines.append(head + f"{m1:.2f} | {m2:.2f} | {per:.2f} | " + " | ".join(cells) + " |")
    return lines


def _table4(jobs: Sequence[JobRecord], cfg: dict[str, Any], out: Path) -> list[str]:
    c = cfg["t4"]
    irim = PAPER_FIGURES["irim_table1"]
    d, k = c["irim_data"], c["irim_kwargs"]
    lines = [
        "## 4. i-RIM Table 1 (3D) and LUSER Table 3 at the papers' sizes",
        "",
        f"i-RIM 3D: {k['channels']} state channels, {k['blocks']} IRIMBlocks of {k['hidden']} "
        f"hidden channels per step, single-coil volumes of {d['depth']} x {d['height']} x "
        f"{d['width']}, batch 1. Paper: {irim['source']} (machine state {irim['state_gb']} GB; "
        "the paper counts 50 layers per step).",
        "",
        "| strategy | T | paper's layers | peak memory (GB) | time / step (s) | paper (GB) | "
        "measured / paper |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in ("reversible", "backprop"):
        for t in c["irim_steps"] if s == "reversible" else c["irim_backprop_steps"]:
            job = find(jobs, "4", part="irim", strategy=s, steps=t)
            paper = irim["steps"].get(t) if s == "reversible" else None
            head = f"| {s} | {t} | {irim['layers'].get(t, '—')} |"
            if not ok(job):
                lines.append(f"{head} {_failed(job)} || {paper or '—'} | — |")
                continue
            mem = _gb(job)
            lines.append(
                f"{head} {num(mem, '.2f')} | {num(get(job, 'time_s'), '.2f')} | "
                f"{paper or '—'} | {ratio(mem, paper) if paper else '—'} |"
            )
    ld = c["luser_data"]
    lines += [
        "",
        f"LUSER against LU-DnCNN on single-coil {ld['height']} x {ld['width']} slices (fastMRI's "
        "crop; the paper does not state the size): peak memory at two batch sizes, the memory a "
        "sample adds, and the largest batch the line through them predicts in 8 / 10 / 24 GB "
        f"(in brackets: {PAPER_FIGURES['luser_table3']['source']}; '-': not even batch 1).",
        "",
        *_luser_rows(jobs, c),
    ]
    return lines


def _table5(jobs: Sequence[JobRecord], cfg: dict[str, Any], out: Path) -> list[str]:
    c = cfg["t5"]
    d = c["data"]
    methods = ("deepinv", "memroll backprop", "memroll checkpoint", "memroll reversible")
    lines = [
        "## 5. deepinv's MoDL at GLEAM Table II's configuration",
        "",
        f"{d['num_coils']} coils, {d['height']} x {d['width']}, batch {c['batch']}: deepinv's "
        "MoDL (a 7-layer DnCNN shared by the unrolls, CG with its implicit backward) against "
        "memroll's MoDL configured as close to it as it gets (table 5 of the miniature). Peak "
        "memory (GB) and time per step (s), ratios to deepinv.",
        "",
    ]

    def fill(job: JobRecord | None, ref: JobRecord | None, m: str, n: int) -> str:
        if not ok(job):
            return _failed(job)
        mem, sec = _gb(job), get(job, "time_s")
        return (
            f"{num(mem, '.2f')} GB ({ratio(mem, _gb(ref))}), {num(sec, '.3f')} s "
            f"({ratio(sec, get(ref, 'time_s'))})"
        )

    rows, columns = ("unrolls", "unrolls", c["unrolls"]), ("method", methods, "deepinv")
    return lines + grid(jobs, "5", rows, columns, fill)


#: table -> the paper-scale report section
PAPER_SECTIONS = {"1": _table1, "2": _table2, "3": _table3, "4": _table4, "5": _table5}
