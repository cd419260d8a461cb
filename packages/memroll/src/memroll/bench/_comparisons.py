"""The benchmark's tables 4 and 5 in Markdown, with their figures.

I-RIM memory against depth and LUSER against LU-DnCNN, and issue 7's comparison with deepinv's MoDL.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unrolled.training import median

from .. import plots
from ._format import (
    ISSUE_DEEPINV,
    JobRecord,
    cell,
    find,
    get,
    grid,
    image,
    memory_panel,
    metric,
    num,
    ok,
    point,
    ratio,
    short,
    verdict,
)
from ._specs import T5_MODL
from ._trained import Claim, claim, curves_figure, runs, seed_metric, stopped

__all__ = ["T5_METHODS", "t5_targets", "table4", "table5"]


# ------------------------------------------------------------------------------------------------
# table 4
# ------------------------------------------------------------------------------------------------
def _dncnn_lr(c: dict[str, Any]) -> str:
    lr = c.get("dncnn_train", {}).get("lr")
    if lr is None or lr == c["train"]["lr"]:
        return ""
    high = c["train"]["lr"]
    return f"; LU-DnCNN {lr:g}: its 8 unrolls of one BatchNorm DnCNN diverged at {high:g}"


def table4(jobs: Sequence[JobRecord], cfg: dict[str, Any], out: Path) -> list[str]:
    """Table 4 in Markdown: i-RIM's memory against depth, then LUSER against LU-DnCNN."""
    c = cfg["t4"]
    return [*_t4_irim(jobs, c, out), *_t4_luser(jobs, c, out)]


def _t4_irim(jobs: Sequence[JobRecord], c: dict[str, Any], out: Path) -> list[str]:
    """i-RIM's step memory and time against its number of invertible layers."""
    k = c["irim_kwargs"]
    strategies = ("backprop", "checkpoint", "reversible")
    lines = [
        "## 4. i-RIM memory against depth; LUSER against LU-DnCNN",
        "",
        f"i-RIM with {k['channels']} state channels and {k['blocks']} IRIMBlocks of {k['hidden']} "
        "hidden channels per time step (plus the gradient injection: "
        f"{1 + k['blocks']} invertible layers per step), {c['data']['image_size']} x "
        f"{c['data']['image_size']}, {c['data']['num_coils']} coils, batch 2: step memory (MB, "
        "ratio to backprop) and time per step (s, ratio).",
        "",
        "| layers (steps) | " + " | ".join(strategies) + " | "
        + " | ".join(f"{s} time" for s in strategies) + " |",
        "|---|" + "---|" * (2 * len(strategies)),
    ]  # fmt: skip
    for t in c["irim_steps"]:
        ref = find(jobs, "4", part="irim", strategy="backprop", steps=t)
        runs = [find(jobs, "4", part="irim", strategy=s, steps=t) for s in strategies]
        layers = t * (1 + k["blocks"])
        lines.append(
            f"| {layers} ({t}) | "
            + " | ".join(cell(j, "step_mb", ref) for j in runs)
            + " | "
            + " | ".join(cell(j, "time_s", ref, ".2f") for j in runs)
            + " |"
        )
    bp = [find(jobs, "4", part="irim", strategy="backprop", steps=t) for t in c["irim_steps"]]
    lines += [""]
    for s in ("checkpoint", "reversible"):
        runs = [find(jobs, "4", part="irim", strategy=s, steps=t) for t in c["irim_steps"]]
        lines.append(verdict(f"i-RIM {s}", runs, bp, "depth"))
    series = {}
    for s in strategies:
        runs = [find(jobs, "4", part="irim", strategy=s, steps=t) for t in c["irim_steps"]]
        layers = [t * (1 + k["blocks"]) for t in c["irim_steps"]]
        series[s] = [point(n, j) for n, j in zip(layers, runs)]
    panel = memory_panel("invertible layers", series, title="i-RIM: training memory against depth")
    plots.line_panels(out / "t4_irim_memory.png", [panel], size=(6.5, 3.8))
    lines += ["", image("t4_irim_memory.png")]
    return lines


T4_LUSER = ("LUSER-SW", "LUSER-DW", "LU-DnCNN")


def _t4_text(c: dict[str, Any]) -> str:
    t = c["train"]
    lk, dk = c["luser_kwargs"], c["dncnn_kwargs"]
    rule = t.get("plateau")
    stop = (
        f"trained until the best validation PSNR (every {t['val_every']} steps) gained no more "
        f"than {rule['delta']:g} dB over {rule['patience']} validations (at least "
        f"{rule['min_steps']}, at most {rule['max_steps']} steps)"
        if rule
        else f"{t.get('steps')} steps"
    )
    seeds = len(c.get("seeds", [0]))
    return (
        f"LUSER (K = {lk['iterations']} stages, F = {lk['features']}, Anderson, implicit "
        f"gradients) against LU-DnCNN (K = {dk['iterations']}, one shared 17-layer DnCNN of "
        f"{dk['features']} features, backprop) on single-coil MRI (`singlecoil_mri`, 1D random "
        f"columns R = {c['luser_data'].get('acceleration', 4.0):g}, "
        f"{c['luser_data']['image_size']} x {c['luser_data']['image_size']}); Adam (lr "
        f"{t['lr']:g}{_dncnn_lr(c)}, batch {t['batch_size']}, {t['loss'].upper()} loss) {stop}; "
        f"the model of the lowest validation nRMSE scored on the test split. {seeds} seed(s) per "
        "method: mean ± standard deviation over seeds of the test-split means. Memory and time "
        "as in table 1 (ratios to LU-DnCNN); the training loss at the first and the last step "
        "(first seed)."
    )


def _t4_luser(jobs: Sequence[JobRecord], c: dict[str, Any], out: Path) -> list[str]:
    """LUSER-SW and -DW against LU-DnCNN: parameters, quality, memory, time, and the claim."""
    ref = [j for j in runs(jobs, "4", part="luser", method="LU-DnCNN") if ok(j)]
    lines = [
        "",
        _t4_text(c),
        "",
        "| method | strategy | parameters | PSNR (dB) | SSIM | nRMSE | PSNR per seed | steps "
        "(stop) | training memory (MB) | time / iteration (s) | training loss (first, last) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ref_s = median([float(j["result"]["time_s"]) for j in ref]) if ref else None
    for label in T4_LUSER:
        found = runs(jobs, "4", part="luser", method=label)
        done = [j for j in found if ok(j)]
        if not found:
            continue
        if not done:
            lines.append(f"| {label} | failed: {short(found[0]['result']['error'])} |||||||||")
            continue
        r = done[0]["result"]
        sec = median([float(j["result"]["time_s"]) for j in done])
        per_seed = ", ".join(f"{j['result']['test']['psnr']['mean']:.2f}" for j in done)
        lines.append(
            f"| {label} | {done[0]['labels']['strategy']} | {r['params']:,} | "
            f"{seed_metric(done, 'psnr', '.2f')} | {seed_metric(done, 'ssim', '.3f')} | "
            f"{seed_metric(done, 'nrmse', '.3f')} | {per_seed} | {stopped(found)} | "
            f"{cell(done[0], 'step_mb', ref[0] if ref else None)} | {num(sec, '.3f')} "
            f"({ratio(sec, ref_s)}) | {r['losses'][0]:.3g}, {r['losses'][-1]:.3g} |"
        )
    zero = next(
        (j for j in jobs if j["table"] == "4" and ok(j) and "zero_filled" in j["result"]), None
    )
    if zero is not None:
        z = {"result": {"test": zero["result"]["zero_filled"]}}
        lines.append(
            f"| zero-filled (A^H y) | — | 0 | {metric(z, 'psnr', '.2f')} | "
            f"{metric(z, 'ssim', '.3f')} | {metric(z, 'nrmse', '.3f')} | — | — | N/A | N/A | — |"
        )
    dw = runs(jobs, "4", part="luser", method="LUSER-DW")
    lines += [
        "",
        "The claim, tested (LUSER Table 2, 4x MRI: LUSER-DW 29.86 dB against LU-DnCNN 29.01 dB):",
        "",
        claim(
            "LUSER-DW at least as good as LU-DnCNN",
            "LUSER-DW",
            "LU-DnCNN",
            Claim(dw, ref),
            "at least",
        ),
    ]
    series = {label: runs(jobs, "4", part="luser", method=label) for label in T4_LUSER}
    z_psnr = zero["result"]["zero_filled"]["psnr"]["mean"] if zero is not None else None
    lines += curves_figure(
        out / "t4_luser_training.png", series, title="Table 4: LUSER and LU-DnCNN, every seed",
        zero_filled=z_psnr,
    )  # fmt: skip
    return lines


# ------------------------------------------------------------------------------------------------
# table 5
# ------------------------------------------------------------------------------------------------
T5_METHODS = ("deepinv", "memroll backprop", "memroll checkpoint", "memroll reversible")


def table5(jobs: Sequence[JobRecord], cfg: dict[str, Any], out: Path) -> list[str]:
    c = cfg["t5"]
    unrolls = c["unrolls"]
    size = c["data"]["image_size"]
    lines = [
        "## 5. Issue 7's comparison: memroll's MoDL against deepinv's MoDL",
        "",
        f"deepinv's configuration: its `MoDL` (one DnCNN of depth 7 and 64 features shared by "
        f"every unroll, CG data consistency with its default implicit CG backward), "
        f"{c['data']['num_coils']} coils, {size} x {size}, batch 2, MSE loss, Adam. memroll's "
        f"`MoDL` as close to it as it gets: one shared invertible regulariser "
        f"({T5_MODL['couplings']} additive couplings of {T5_MODL['layers']} convolutions, "
        f"{T5_MODL['features']} features), mu = {T5_MODL['mu']:g} (deepinv's HQS step 1), CG to "
        "1e-6 (tight enough for the algebraic inverse; deepinv stops at 1e-4). `memroll "
        "checkpoint` is torch.utils.checkpoint (non-reentrant) around every unroll: the standard "
        f"peer. Step memory (MB) and the median of {c['steps']} step times after a warm-up step; "
        "ratios to deepinv measured in this run.",
        "",
    ]
    lines += _t5_rows(jobs, unrolls, "step_mb", "not measured (see below)")
    lines += ["", "Peak resident memory of the process (MB; includes torch, the data, the model):"]
    lines += ["", *_t5_rows(jobs, unrolls, "peak_mb", "—")]
    lines += ["", "Time per training step (s; ratio to deepinv):", ""]
    lines += _t5_rows(jobs, unrolls, "time_s", "—", ".2f")
    issue_rows = [n for n in unrolls if n in ISSUE_DEEPINV]
    if issue_rows:
        lines += [
            "",
            "deepinv's MoDL as issue 7 reports it at 320 x 320 (from the issue, not measured here; "
            "its memory is training memory in GB, its machine's thread count unknown): "
            + "; ".join(
                f"{n} unrolls: {ISSUE_DEEPINV[n][0]:.2f} GB, {ISSUE_DEEPINV[n][1]:.1f} s"
                for n in issue_rows
            )
            + ".",
        ]
    lines += ["", "Targets of issue 7:", ""]
    lines += t5_targets(jobs, unrolls, size)
    notes = _t5_notes(jobs, unrolls)
    if notes:
        lines += [""] + [f"Note: {n}" for n in notes]
    _t5_figure(jobs, unrolls, size, out)
    lines += ["", image("t5_deepinv_comparison.png")]
    return lines


def _t5_rows(
    jobs: Sequence[JobRecord], unrolls: Sequence[int], key: str, missing: str, digits: str = ".1f"
) -> list[str]:
    """Return a table of ``key`` per method and unroll count, with ratios to deepinv's.

    Deepinv's cell says ``missing`` when it did not run.
    """

    def fill(job: JobRecord | None, ref: JobRecord | None, m: str, n: int) -> str:
        ref = ref if ok(ref) else None
        return missing if m == "deepinv" and ref is None else cell(job, key, ref, digits)

    rows = ("unrolls", "unrolls", unrolls)
    return grid(jobs, "5", rows, ("method", T5_METHODS, "deepinv"), fill)


def _t5_notes(jobs: Sequence[JobRecord], unrolls: Sequence[int]) -> list[str]:
    """Why deepinv did not run, or its version, size and how it was imported."""
    dinv = [find(jobs, "5", method="deepinv", unrolls=n) for n in unrolls]
    dinv_ok = [j for j in dinv if j is not None and ok(j)]
    notes = []
    for job in dinv:
        if job is not None and not ok(job):
            notes.append(f"deepinv could not run here: {short(job['result']['error'], 300)}")
            break
    if dinv_ok:
        r = dinv_ok[0]["result"]
        notes.append(
            f"deepinv {r['deepinv_version']}, {r['params']:,} parameters (memroll's MoDL: "
            f"{_params(jobs, unrolls)}); its operator and physops.Sense agree to "
            f"{r['operator_error']:.1e} (max relative difference) on the benchmark data; deepinv's "
            f"CG: max_iter {r['cg']['max_iter']}, tol {r['cg']['tol']:g}, implicit backward "
            f"{r['cg']['implicit_backward']}."
        )
        if r.get("torchvision_note"):
            notes.append(
                "deepinv imports torchvision at import time, and torchvision cannot be imported "
                f"here: {short(r['torchvision_note'], 400)}. PyPI's torchvision wheels are built "
                "against the CUDA build of torch; this machine has the CPU-only torch wheel. The "
                "deepinv worker therefore answered torchvision imports with inert placeholder "
                "modules that raise if anything calls them (memroll.bench._peers): deepinv's "
                "MoDL, DnCNN, MultiCoilMRI and CG ran without calling torchvision, so the figures "
                "above are deepinv's own code, measured here."
            )
    return notes


def _t5_figure(jobs: Sequence[JobRecord], unrolls: Sequence[int], size: int, out: Path) -> None:
    panels = [
        (
            name,
            {
                m: [get(find(jobs, "5", method=m, unrolls=n), key) for n in unrolls]
                for m in T5_METHODS
            },
        )
        for key, name in (("step_mb", "step memory (MB)"), ("time_s", "time per step (s)"))
    ]
    plots.grouped_bars(
        out / "t5_deepinv_comparison.png",
        [str(n) for n in unrolls],
        panels,
        xlabel="unrolls",
        title=f"MoDL at {size} x {size}, 8 coils, batch 2: memroll vs deepinv",
    )


def _params(jobs: Sequence[JobRecord], unrolls: Sequence[int]) -> str:
    job = find(jobs, "5", method="memroll reversible", unrolls=unrolls[0])
    return f"{int(job['result']['params']):,}" if ok(job) else "—"  # type: ignore[index]


def t5_targets(jobs: Sequence[JobRecord], unrolls: Sequence[int], size: int) -> list[str]:
    top = unrolls[-1]
    rev = [find(jobs, "5", method="memroll reversible", unrolls=n) for n in unrolls]
    bp = [find(jobs, "5", method="memroll backprop", unrolls=n) for n in unrolls]
    dinv = find(jobs, "5", method="deepinv", unrolls=top)
    out = []
    rev_top = get(rev[-1], "step_mb")
    if ok(dinv) and rev_top is not None:
        d_step, d_peak = get(dinv, "step_mb"), get(dinv, "peak_mb")
        r_peak = get(rev[-1], "peak_mb")
        met = d_step is not None and rev_top <= d_step / 5
        out.append(
            f"- memory at {top} unrolls <= 1/5 of deepinv's: {'met' if met else 'NOT met'}: "
            f"{rev_top:.0f} MB against {num(d_step, '.0f')} MB step memory "
            f"({ratio(rev_top, d_step)}); whole-process peak {num(r_peak, '.0f')} MB against "
            f"{num(d_peak, '.0f')} MB ({ratio(r_peak, d_peak)})"
        )
    elif rev_top is not None and top in ISSUE_DEEPINV and size == 320:
        gb = ISSUE_DEEPINV[top][0]
        out.append(
            f"- memory at {top} unrolls <= 1/5 of deepinv's: deepinv not measured here; against "
            f"the issue's {gb:.2f} GB (from the issue, not measured here): {rev_top:.0f} MB = "
            f"{rev_top / (gb * 1024):.2f}x"
        )
    else:
        out.append("- memory against deepinv: not measured (deepinv did not run)")
    out.append(verdict("memroll reversible in unrolls", rev, bp, "unroll count"))
    for n, r, b in zip(unrolls, rev, bp):
        tr, tb = get(r, "time_s"), get(b, "time_s")
        if tr is not None and tb is not None:
            out.append(
                f"- time at {n} unrolls <= 1.5x memroll backprop: "
                f"{'met' if tr <= 1.5 * tb else 'NOT met'}: {tr:.2f} s against {tb:.2f} s "
                f"({tr / tb:.2f}x)"
            )
    return out
