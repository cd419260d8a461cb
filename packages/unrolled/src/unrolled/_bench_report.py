"""The Markdown report and PNG plots of ``memroll bench`` (:mod:`unrolled._bench`).

Every figure in the report comes from ``results.json`` of the same run; nothing is typed in by
hand except deepinv's figures from issue 7, which are always labelled "from the issue, not
measured here".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["write_report"]

#: deepinv's MoDL as issue 7 measured it: unrolls -> (GB of training memory, s per step).
ISSUE_DEEPINV = {2: (0.75, 3.3), 4: (1.38, 6.6), 8: (2.67, 16.1)}
#: a strategy is "flat" in depth when its memory grows by less than this share of backprop's
#: growth over the same depths (and by less than FLAT_MB)
FLAT_SHARE = 0.1
FLAT_MB = 5.0

Job = dict[str, Any]


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def _find(jobs: Sequence[Job], table: str, **labels: Any) -> Job | None:
    for job in jobs:
        if job["table"] == table and all(job["labels"].get(k) == v for k, v in labels.items()):
            return job
    return None


def _ok(job: Job | None) -> bool:
    return job is not None and "error" not in job["result"]


def _get(job: Job | None, key: str) -> float | None:
    if not _ok(job):
        return None
    value = job["result"].get(key)  # type: ignore[index]
    return None if value is None else float(value)


def _num(value: float | None, digits: str = ".1f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return format(value, digits)


def _ratio(value: float | None, ref: float | None) -> str:
    if value is None or ref is None or ref <= 0:
        return "—"
    return f"{value / ref:.2f}x"


def _cell(job: Job | None, key: str, ref: Job | None, digits: str = ".1f") -> str:
    if job is None:
        return "—"
    if not _ok(job):
        return f"failed: {_short(job['result']['error'])}"
    value, base = _get(job, key), _get(ref, key)
    if value is None:
        return "—"
    return f"{format(value, digits)} ({_ratio(value, base)})"


def _short(text: str, n: int = 90) -> str:
    text = text.replace("|", "/").replace("\n", " ")
    return text if len(text) <= n else text[: n - 1] + "…"


def _metric(job: Job | None, name: str, digits: str) -> str:
    if not _ok(job):
        return "—"
    m = job["result"]["test"][name]  # type: ignore[index]
    return f"{format(m['mean'], digits)} ({format(m['std'], digits)})"


def _slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys against xs."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den > 0 else float("nan")


def _growth(jobs: Sequence[Job | None], key: str = "step_mb") -> float | None:
    values = [_get(j, key) for j in jobs]
    if len(values) < 2 or values[0] is None or values[-1] is None:
        return None
    return values[-1] - values[0]


def _verdict(name: str, jobs: list[Job | None], ref: list[Job | None], unit: str) -> str:
    if len(jobs) < 2:
        return f"- {name}: flatness needs two depths or more (this run measured one)"
    grow, ref_grow = _growth(jobs), _growth(ref)
    if grow is None or ref_grow is None:
        return f"- {name}: not measured at the smallest and largest depth"
    limit = max(FLAT_MB, FLAT_SHARE * ref_grow)
    flat = grow <= limit
    return (
        f"- {name}: {'flat' if flat else 'NOT flat'}: {grow:+.1f} MB from the smallest to the "
        f"largest {unit} (backprop: {ref_grow:+.1f} MB; flat means below {limit:.1f} MB)"
    )


def _plt() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save(fig: Any, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f"![{name}]({name})"


def _mem_label(meta: dict[str, Any]) -> str:
    if meta["device"] == "cuda":
        return "torch.cuda.max_memory_allocated"
    return "peak RSS (VmHWM)"


# ------------------------------------------------------------------------------------------------
# table 1
# ------------------------------------------------------------------------------------------------
T1_METHODS = [
    ("backprop", "end-to-end backprop"),
    ("checkpoint", "checkpoint (torch.utils.checkpoint per unroll)"),
    ("reversible", "MEL reversible (exact state every unroll)"),
    ("greedy", "GLEAM greedy (M = N)"),
]


def _table1(jobs: Sequence[Job], cfg: dict[str, Any], out: Path, plt: Any) -> list[str]:
    c = cfg["t1"]
    k, t = c["model_kwargs"], c["train"]
    ref = _find(jobs, "1", method="backprop")
    lines = [
        "## 1. GLEAM Table II in miniature: 2D MoDL",
        "",
        f"Real-anatomy multi-coil task (`multicoil_mri`), {c['data']['image_size']} x "
        f"{c['data']['image_size']}, {c['data']['num_coils']} coils, Poisson-disc R = "
        f"{c['data'].get('acceleration', 4.0):g}. MoDL with N = {k['iterations']} unrolls, the "
        f'invertible residual CNN of GLEAM (`prior="coupling"`, {k["layers"]} convolutions of '
        f"{k['features']} features, {k.get('couplings', 2)} couplings), mu learned from "
        f"{k['mu']:g}, CG to 1e-6. "
        f"{t['steps']} Adam steps (lr {t['lr']:g}, batch {t['batch_size']}, complex "
        f"{t['loss'].upper()} loss), the model of the lowest validation nRMSE (checked every "
        f"{t['val_every']} steps) scored on the test split: mean (std) over its slices, magnitude "
        "images. Memory: the peak of `unrolled.train`'s loop above the memory at its start (model, "
        "data and Adam state included from the first step); time: median step time. GLEAM's "
        "numbers come from 50000 steps on a 12 GB GPU at 320 x 320 with 70 features: this is the "
        "same comparison at a size a 2-core CPU trains in minutes.",
        "",
        "| method | PSNR (dB) | SSIM | nRMSE | training memory (MB) | memory / backprop | "
        "time / iteration (s) | time / backprop | best step |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, label in T1_METHODS:
        job = _find(jobs, "1", method=key)
        if not _ok(job):
            error = job["result"]["error"] if job else "not run"
            lines.append(f"| {label} | failed: {_short(error)} ||||||||")
            continue
        r = job["result"]  # type: ignore[index]
        lines.append(
            f"| {label} | {_metric(job, 'psnr', '.2f')} | {_metric(job, 'ssim', '.3f')} | "
            f"{_metric(job, 'nrmse', '.3f')} | {_num(r['step_mb'])} | "
            f"{_ratio(r['step_mb'], _get(ref, 'step_mb'))} | {_num(r['time_s'], '.3f')} | "
            f"{_ratio(r['time_s'], _get(ref, 'time_s'))} | {r['best_step']} |"
        )
    cs = _find(jobs, "1", method="cs")
    if _ok(cs):
        r = cs["result"]  # type: ignore[index]
        lines.append(
            f"| CS (l1-wavelet, lambda = {r['lamda']:g}, {r['iterations']} iterations) | "
            f"{_metric(cs, 'psnr', '.2f')} | {_metric(cs, 'ssim', '.3f')} | "
            f"{_metric(cs, 'nrmse', '.3f')} | N/A | N/A | {r['time_per_slice_s']:.3f} per slice "
            "(no training) | N/A | — |"
        )
        z = {"result": {"test": r["zero_filled"]}}
        lines.append(
            f"| zero-filled (A^H y) | {_metric(z, 'psnr', '.2f')} | {_metric(z, 'ssim', '.3f')} | "
            f"{_metric(z, 'nrmse', '.3f')} | N/A | N/A | N/A | N/A | — |"
        )
        grid = ", ".join(f"{g['lamda']:g}: {g['nrmse']:.3f}" for g in r["grid"])
        lines += ["", f"CS weight chosen on the validation split (lambda: nRMSE): {grid}."]
        if _ok(ref):
            gap = r["test"]["psnr"]["mean"] - ref["result"]["test"]["psnr"]["mean"]  # type: ignore[index]
            if gap > 0:
                lines.append(
                    f"After {t['steps']} steps (GLEAM trained 50000) the networks are far from "
                    f"converged and CS is {gap:.1f} dB above end-to-end backprop: this table "
                    "compares the memory strategies with one another (the same network, the same "
                    "quality, different memory and time), not deep learning with CS."
                )
            else:
                lines.append(f"End-to-end backprop is {-gap:.1f} dB above CS.")
    elif cs is not None:
        lines.append(f"| CS | failed: {_short(cs['result']['error'])} ||||||||")
    if plt is not None:
        names = [(key, label) for key, label in T1_METHODS if _ok(_find(jobs, "1", method=key))]
        if names:
            fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
            mem = [_get(_find(jobs, "1", method=key), "step_mb") or 0.0 for key, _ in names]
            sec = [_get(_find(jobs, "1", method=key), "time_s") or 0.0 for key, _ in names]
            short = [key for key, _ in names]
            axes[0].bar(short, mem, color="tab:blue")
            axes[0].set_ylabel("training memory (MB)")
            axes[1].bar(short, sec, color="tab:orange")
            axes[1].set_ylabel("time per iteration (s)")
            for key, _ in names:
                losses = _find(jobs, "1", method=key)["result"]["losses"]  # type: ignore[index]
                axes[2].plot(range(1, len(losses) + 1), losses, label=key)
            axes[2].set_xlabel("step")
            axes[2].set_ylabel("training loss")
            axes[2].set_yscale("log")
            axes[2].legend()
            fig.suptitle("Table 1: 2D MoDL, memory strategies")
            lines += ["", _save(fig, out, "t1_modl_strategies.png")]
    return lines


# ------------------------------------------------------------------------------------------------
# table 2
# ------------------------------------------------------------------------------------------------
def _table2(jobs: Sequence[Job], cfg: dict[str, Any], out: Path, plt: Any) -> list[str]:
    c = cfg["t2"]
    depths = c["depths"]
    modl = ("backprop", "checkpoint", "reversible", "greedy")
    lines = [
        "## 2. Training memory against depth",
        "",
        f"Step memory (MB; the peak of a training step minus the memory before it, after a warm-up "
        f"step; ratio to backprop at the same N) and the median of {c['steps']} step times. MoDL "
        f"(coupling prior, {c['modl_kwargs']['features']} features) on {c['data']['image_size']} x "
        f"{c['data']['image_size']}, {c['data']['num_coils']} coils, batch 2. Greedy uses M = N "
        "modules (one unroll each: GLEAM's setting when the architecture is fixed).",
        "",
        "| N | " + " | ".join(modl) + " |",
        "|---|" + "---|" * len(modl),
    ]
    for n in depths:
        ref = _find(jobs, "2", model="MoDL", strategy="backprop", depth=n)
        cells = [
            _cell(_find(jobs, "2", model="MoDL", strategy=s, depth=n), "step_mb", ref) for s in modl
        ]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += ["", "Time per step (s; ratio to backprop):", ""]
    lines += ["| N | " + " | ".join(modl) + " |", "|---|" + "---|" * len(modl)]
    for n in depths:
        ref = _find(jobs, "2", model="MoDL", strategy="backprop", depth=n)
        cells = [
            _cell(_find(jobs, "2", model="MoDL", strategy=s, depth=n), "time_s", ref, ".2f")
            for s in modl
        ]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    k = c["luser_kwargs"]
    lines += [
        "",
        f"`implicit` needs an equilibrium model: LUSER-DW (F = {k['features']}, Anderson to 1e-4) "
        f"on {c['luser_data']['image_size']} x {c['luser_data']['image_size']}, "
        f"{c['luser_data']['num_coils']} coils, batch 2, N = number of stages; `backprop` "
        "differentiates through every solver iteration (step memory MB, ratio; time s):",
        "",
        "| N | backprop | implicit | backprop time | implicit time |",
        "|---|---|---|---|---|",
    ]
    for n in depths:
        ref = _find(jobs, "2", model="LUSER", strategy="backprop", depth=n)
        imp = _find(jobs, "2", model="LUSER", strategy="implicit", depth=n)
        lines.append(
            f"| {n} | {_cell(ref, 'step_mb', ref)} | {_cell(imp, 'step_mb', ref)} | "
            f"{_cell(ref, 'time_s', ref, '.2f')} | {_cell(imp, 'time_s', ref, '.2f')} |"
        )
    lines += ["", f"Verdicts (N = {depths[0]} to {depths[-1]}):", ""]
    bp = [_find(jobs, "2", model="MoDL", strategy="backprop", depth=n) for n in depths]
    for s in ("checkpoint", "reversible", "greedy"):
        runs = [_find(jobs, "2", model="MoDL", strategy=s, depth=n) for n in depths]
        lines.append(_verdict(f"MoDL {s}", runs, bp, "N"))
    lbp = [_find(jobs, "2", model="LUSER", strategy="backprop", depth=n) for n in depths]
    limp = [_find(jobs, "2", model="LUSER", strategy="implicit", depth=n) for n in depths]
    lines.append(_verdict("LUSER implicit", limp, lbp, "N"))
    per = [(n, _get(j, "step_mb"), _get(b, "step_mb")) for n, j, b in zip(depths, limp, lbp)]
    if all(v is not None and b is not None for _, v, b in per):
        xs = [float(n) for n, _, _ in per]
        s_imp = _slope(xs, [float(v) for _, v, _ in per])  # type: ignore[arg-type]
        s_bp = _slope(xs, [float(b) for _, _, b in per])  # type: ignore[arg-type]
        lines.append(
            f"- LUSER implicit keeps one differentiable block evaluation per stage, so its memory "
            f"is per stage, not flat in N: {s_imp:.2f} MB per stage against {s_bp:.2f} MB per "
            "stage for backprop through the solver iterations (it is flat in the solver's "
            "iteration count, which backprop is not)."
        )
    if plt is not None:
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        for s in modl:
            pts = [
                (n, _get(_find(jobs, "2", model="MoDL", strategy=s, depth=n), "step_mb"))
                for n in depths
            ]
            pts = [(n, v) for n, v in pts if v is not None]
            if pts:
                axes[0].plot(*zip(*pts), marker="o", label=s)
        for s in ("backprop", "implicit"):
            pts = [
                (n, _get(_find(jobs, "2", model="LUSER", strategy=s, depth=n), "step_mb"))
                for n in depths
            ]
            pts = [(n, v) for n, v in pts if v is not None]
            if pts:
                axes[1].plot(*zip(*pts), marker="o", label=s)
        for ax, title in zip(axes, ("MoDL", "LUSER-DW")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("unrolls N")
            ax.set_ylabel("step memory (MB)")
            ax.set_title(title)
            ax.legend()
        lines += ["", _save(fig, out, "t2_memory_vs_depth.png")]
    return lines


# ------------------------------------------------------------------------------------------------
# table 3
# ------------------------------------------------------------------------------------------------
def _sci(value: Any) -> str:
    if value is None:
        return "failed"
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        return "nan (diverged)"
    return f"{value:.1e}"


def _table3(jobs: Sequence[Job], cfg: dict[str, Any], out: Path, plt: Any) -> list[str]:
    c = cfg["t3"]
    job = _find(jobs, "3")
    lines = [
        "## 3. MEL's accuracy against depth",
        "",
        f"Relative error ||g_rev - g_bp|| / ||g_bp|| over all parameter gradients of one batch "
        f"(float32, batch 2, {c['data']['image_size']} x {c['data']['image_size']}, "
        f"{c['data']['num_coils']} coils, {c['features']} features, the same weights), reversible "
        f"without checkpoints and with hybrid checkpoints every {c['checkpoint_unrolls']} unrolls "
        "(MEL Sec. 4), against float32 backprop. The floor is the difference between float32 and "
        "float64 backprop: errors below it are rounding. MoDL inverts CG algebraically (CG to "
        "1e-6); unrolled PGD inverts each gradient step by Anderson fixed-point iteration (MEL "
        "Alg. 2) with alpha * L < 1 certified by power iteration. MEL's reference code lost "
        "accuracy past about 20 unrolls without checkpoints (MoDL: 2e-9 at 10, 4e-4 at 20, 0.21 at "
        "25, 9e2 at 30 unrolls).",
        "",
    ]
    if not _ok(job):
        error = job["result"]["error"] if job else "not run"
        return [*lines, f"failed: {_short(error, 300)}"]
    rows = job["result"]["rows"]  # type: ignore[index]
    lines += [
        "| model | N | layers | float32 floor | reversible | reversible + checkpoints |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        plain = _sci(r["plain"]) + (" †" if r.get("plain_warnings") else "")
        ckpt = _sci(r["checkpointed"]) + (" †" if r.get("checkpointed_warnings") else "")
        lines.append(
            f"| {r['label']} | {r['depth']} | {r['layers']} | {_sci(r['float32_floor'])} | "
            f"{plain} | {ckpt} |"
        )
    if any(r.get("plain_warnings") or r.get("checkpointed_warnings") for r in rows):
        lines += ["", "† a fixed-point inversion warned that it did not converge."]
    lines += [
        "",
        "Verdicts (holds = error <= 1e-4, issue 7's float32 bound at 10 unrolls, or within twice "
        "the float32 floor: float32 backprop itself differs that much from float64):",
        "",
    ]
    for label in dict.fromkeys(r["label"] for r in rows):
        mine = [r for r in rows if r["label"] == label]
        for key, name in (("plain", "without checkpoints"), ("checkpointed", "with checkpoints")):
            bad = [r["depth"] for r in mine if not _holds(r[key], r["float32_floor"])]
            if not bad:
                text = f"holds up to N = {mine[-1]['depth']}"
            elif bad[0] == mine[0]["depth"]:
                text = f"does not hold even at N = {bad[0]}"
            else:
                last = max(r["depth"] for r in mine if r["depth"] < bad[0])
                text = f"holds up to N = {last}, lost from N = {bad[0]}"
            lines.append(f"- {label}, {name}: {text}")
    if plt is not None:
        fig, ax = plt.subplots(figsize=(7.5, 4.2))
        for i, label in enumerate(dict.fromkeys(r["label"] for r in rows)):
            mine = [r for r in rows if r["label"] == label]
            color = f"C{i}"
            for key, style in (("plain", "-"), ("checkpointed", "--")):
                pts = [(r["depth"], _finite(r[key])) for r in mine]
                pts = [(d, v) for d, v in pts if v is not None]
                if pts:
                    tag = "" if key == "plain" else " + ckpt"
                    ax.plot(*zip(*pts), style, marker="o", color=color, label=label + tag)
            floor = [(r["depth"], _finite(r["float32_floor"])) for r in mine]
            floor = [(d, v) for d, v in floor if v is not None]
            if floor:
                ax.plot(*zip(*floor), ":", color=color, alpha=0.6)
        ax.axhline(1e-4, color="grey", lw=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("unrolls N")
        ax.set_ylabel("relative gradient error")
        ax.set_title("Reversible vs backprop (dotted: float32 floor)")
        ax.legend(fontsize=7)
        lines += ["", _save(fig, out, "t3_reversible_accuracy.png")]
    return lines


def _dncnn_lr(c: dict[str, Any]) -> str:
    lr = c.get("dncnn_train", {}).get("lr")
    if lr is None or lr == c["train"]["lr"]:
        return ""
    high = c["train"]["lr"]
    return f"; LU-DnCNN {lr:g}: its 8 unrolls of one BatchNorm DnCNN diverged at {high:g}"


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) and value > 0 else None


def _holds(value: Any, floor: Any) -> bool:
    v, f = _finite(value), _finite(floor)
    return v is not None and v <= max(1e-4, 2 * (f or 0.0))


# ------------------------------------------------------------------------------------------------
# table 4
# ------------------------------------------------------------------------------------------------
def _table4(jobs: Sequence[Job], cfg: dict[str, Any], out: Path, plt: Any) -> list[str]:
    c = cfg["t4"]
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
        ref = _find(jobs, "4", part="irim", strategy="backprop", steps=t)
        runs = [_find(jobs, "4", part="irim", strategy=s, steps=t) for s in strategies]
        layers = t * (1 + k["blocks"])
        lines.append(
            f"| {layers} ({t}) | "
            + " | ".join(_cell(j, "step_mb", ref) for j in runs)
            + " | "
            + " | ".join(_cell(j, "time_s", ref, ".2f") for j in runs)
            + " |"
        )
    bp = [_find(jobs, "4", part="irim", strategy="backprop", steps=t) for t in c["irim_steps"]]
    lines += [""]
    for s in ("checkpoint", "reversible"):
        runs = [_find(jobs, "4", part="irim", strategy=s, steps=t) for t in c["irim_steps"]]
        lines.append(_verdict(f"i-RIM {s}", runs, bp, "depth"))
    if plt is not None:
        fig, ax = plt.subplots(figsize=(6.5, 3.8))
        for s in strategies:
            runs = [_find(jobs, "4", part="irim", strategy=s, steps=t) for t in c["irim_steps"]]
            layers = [t * (1 + k["blocks"]) for t in c["irim_steps"]]
            pts = [(n, _get(j, "step_mb")) for n, j in zip(layers, runs)]
            pts = [(n, v) for n, v in pts if v is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=s)
        ax.set_xlabel("invertible layers")
        ax.set_ylabel("step memory (MB)")
        ax.set_title("i-RIM: training memory against depth")
        ax.legend()
        lines += ["", _save(fig, out, "t4_irim_memory.png")]
    t = c["train"]
    lk, dk = c["luser_kwargs"], c["dncnn_kwargs"]
    ref = _find(jobs, "4", part="luser", method="LU-DnCNN")
    lines += [
        "",
        f"LUSER (K = {lk['iterations']} stages, F = {lk['features']}, Anderson, implicit "
        f"gradients) against LU-DnCNN (K = {dk['iterations']}, one shared 17-layer DnCNN of "
        f"{dk['features']} features, backprop) on single-coil MRI (`singlecoil_mri`, 1D random "
        f"columns R = {c['luser_data'].get('acceleration', 4.0):g}, "
        f"{c['luser_data']['image_size']} x {c['luser_data']['image_size']}); {t['steps']} Adam "
        f"steps (lr {t['lr']:g}{_dncnn_lr(c)}, batch {t['batch_size']}, {t['loss'].upper()} loss), "
        "test split; "
        "memory and time as in table 1 (ratios to LU-DnCNN); the training loss at the first "
        "and the last step:",
        "",
        "| method | strategy | parameters | PSNR (dB) | SSIM | nRMSE | training memory (MB) | "
        "time / iteration (s) | training loss (first, last) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label in ("LUSER-SW", "LUSER-DW", "LU-DnCNN"):
        job = _find(jobs, "4", part="luser", method=label)
        if job is None:
            continue
        if not _ok(job):
            lines.append(f"| {label} | failed: {_short(job['result']['error'])} |||||||")
            continue
        r = job["result"]
        lines.append(
            f"| {label} | {job['labels']['strategy']} | {r['params']:,} | "
            f"{_metric(job, 'psnr', '.2f')} | {_metric(job, 'ssim', '.3f')} | "
            f"{_metric(job, 'nrmse', '.3f')} | {_cell(job, 'step_mb', ref)} | "
            f"{_cell(job, 'time_s', ref, '.3f')} | {r['losses'][0]:.3g}, {r['losses'][-1]:.3g} |"
        )
    zero = next(
        (j for j in jobs if j["table"] == "4" and _ok(j) and "zero_filled" in j["result"]), None
    )
    if zero is not None:
        z = {"result": {"test": zero["result"]["zero_filled"]}}
        lines.append(
            f"| zero-filled (A^H y) | — | 0 | {_metric(z, 'psnr', '.2f')} | "
            f"{_metric(z, 'ssim', '.3f')} | {_metric(z, 'nrmse', '.3f')} | N/A | N/A | — |"
        )
        best = max(
            (j for j in jobs if j["table"] == "4" and _ok(j) and "test" in j["result"]),
            key=lambda j: j["result"]["test"]["psnr"]["mean"],
        )
        if best["result"]["test"]["psnr"]["mean"] < zero["result"]["zero_filled"]["psnr"]["mean"]:
            lines += [
                "",
                f"After {t['steps']} steps no network has reached the zero-filled image's quality: "
                "this training is too short to rank LUSER and LU-DnCNN by quality (the paper "
                "trains to convergence); the parameters, memory and time are what this table "
                "measures.",
            ]
    return lines


# ------------------------------------------------------------------------------------------------
# table 5
# ------------------------------------------------------------------------------------------------
T5_METHODS = ("deepinv", "memroll backprop", "memroll checkpoint", "memroll reversible")


def _table5(jobs: Sequence[Job], cfg: dict[str, Any], out: Path, plt: Any) -> list[str]:
    from ._bench import T5_MODL

    c = cfg["t5"]
    unrolls = c["unrolls"]
    size = c["data"]["image_size"]
    dinv = [_find(jobs, "5", method="deepinv", unrolls=n) for n in unrolls]
    dinv_ok = [j for j in dinv if j is not None and _ok(j)]
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
        "| unrolls | " + " | ".join(T5_METHODS) + " |",
        "|---|" + "---|" * len(T5_METHODS),
    ]
    for n in unrolls:
        ref = _find(jobs, "5", method="deepinv", unrolls=n)
        ref = ref if _ok(ref) else None
        cells = []
        for m in T5_METHODS:
            job = _find(jobs, "5", method=m, unrolls=n)
            if m == "deepinv" and not _ok(job):
                cells.append("not measured (see below)")
            else:
                cells.append(_cell(job, "step_mb", ref))
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += ["", "Peak resident memory of the process (MB; includes torch, the data, the model):"]
    lines += ["", "| unrolls | " + " | ".join(T5_METHODS) + " |"]
    lines += ["|---|" + "---|" * len(T5_METHODS)]
    for n in unrolls:
        ref = _find(jobs, "5", method="deepinv", unrolls=n)
        ref = ref if _ok(ref) else None
        cells = [
            _cell(_find(jobs, "5", method=m, unrolls=n), "peak_mb", ref)
            if m != "deepinv" or ref is not None
            else "—"
            for m in T5_METHODS
        ]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += ["", "Time per training step (s; ratio to deepinv):", ""]
    lines += ["| unrolls | " + " | ".join(T5_METHODS) + " |"]
    lines += ["|---|" + "---|" * len(T5_METHODS)]
    for n in unrolls:
        ref = _find(jobs, "5", method="deepinv", unrolls=n)
        ref = ref if _ok(ref) else None
        cells = [
            _cell(_find(jobs, "5", method=m, unrolls=n), "time_s", ref, ".2f")
            if m != "deepinv" or ref is not None
            else "—"
            for m in T5_METHODS
        ]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
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
    lines += _t5_targets(jobs, unrolls, size)
    notes = []
    for job in dinv:
        if job is not None and not _ok(job):
            notes.append(f"deepinv could not run here: {_short(job['result']['error'], 300)}")
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
                f"here: {_short(r['torchvision_note'], 400)}. PyPI's torchvision wheels are built "
                "against the CUDA build of torch; this machine has the CPU-only torch wheel. The "
                "deepinv worker therefore answered torchvision imports with inert placeholder "
                "modules that raise if anything calls them (unrolled._bench_peers): deepinv's "
                "MoDL, DnCNN, MultiCoilMRI and CG ran without calling torchvision, so the figures "
                "above are deepinv's own code, measured here."
            )
    if notes:
        lines += [""] + [f"Note: {n}" for n in notes]
    if plt is not None:
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        width = 0.8 / len(T5_METHODS)
        for i, m in enumerate(T5_METHODS):
            mem = [_get(_find(jobs, "5", method=m, unrolls=n), "step_mb") for n in unrolls]
            sec = [_get(_find(jobs, "5", method=m, unrolls=n), "time_s") for n in unrolls]
            xs = [j + (i - (len(T5_METHODS) - 1) / 2) * width for j in range(len(unrolls))]
            axes[0].bar(xs, [v or 0.0 for v in mem], width, label=m)
            axes[1].bar(xs, [v or 0.0 for v in sec], width, label=m)
        for ax, name in zip(axes, ("step memory (MB)", "time per step (s)")):
            ax.set_xticks(range(len(unrolls)), [str(n) for n in unrolls])
            ax.set_xlabel("unrolls")
            ax.set_ylabel(name)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"MoDL at {size} x {size}, 8 coils, batch 2: memroll vs deepinv")
        lines += ["", _save(fig, out, "t5_deepinv_comparison.png")]
    return lines


def _params(jobs: Sequence[Job], unrolls: Sequence[int]) -> str:
    job = _find(jobs, "5", method="memroll reversible", unrolls=unrolls[0])
    return f"{int(job['result']['params']):,}" if _ok(job) else "—"  # type: ignore[index]


def _t5_targets(jobs: Sequence[Job], unrolls: Sequence[int], size: int) -> list[str]:
    top = unrolls[-1]
    rev = [_find(jobs, "5", method="memroll reversible", unrolls=n) for n in unrolls]
    bp = [_find(jobs, "5", method="memroll backprop", unrolls=n) for n in unrolls]
    dinv = _find(jobs, "5", method="deepinv", unrolls=top)
    out = []
    rev_top = _get(rev[-1], "step_mb")
    if _ok(dinv) and rev_top is not None:
        d_step, d_peak = _get(dinv, "step_mb"), _get(dinv, "peak_mb")
        r_peak = _get(rev[-1], "peak_mb")
        ok = d_step is not None and rev_top <= d_step / 5
        out.append(
            f"- memory at {top} unrolls <= 1/5 of deepinv's: {'met' if ok else 'NOT met'}: "
            f"{rev_top:.0f} MB against {_num(d_step, '.0f')} MB step memory "
            f"({_ratio(rev_top, d_step)}); whole-process peak {_num(r_peak, '.0f')} MB against "
            f"{_num(d_peak, '.0f')} MB ({_ratio(r_peak, d_peak)})"
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
    out.append(_verdict("memroll reversible in unrolls", rev, bp, "unroll count"))
    for n, r, b in zip(unrolls, rev, bp):
        tr, tb = _get(r, "time_s"), _get(b, "time_s")
        if tr is not None and tb is not None:
            out.append(
                f"- time at {n} unrolls <= 1.5x memroll backprop: "
                f"{'met' if tr <= 1.5 * tb else 'NOT met'}: {tr:.2f} s against {tb:.2f} s "
                f"({tr / tb:.2f}x)"
            )
    return out


# ------------------------------------------------------------------------------------------------
# the report
# ------------------------------------------------------------------------------------------------
def write_report(results: dict[str, Any], out: Path) -> str:
    """Write ``report.md`` (and the plots) to ``out`` from a run's results; return the text."""
    meta, cfg, jobs = results["meta"], results["configs"], results["jobs"]
    plt = _plt()
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
        f"Memory: {_mem_label(meta)}"
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
    sections = {"1": _table1, "2": _table2, "3": _table3, "4": _table4, "5": _table5}
    for table in meta["tables"]:
        lines += ["", *sections[table](jobs, cfg, out, plt)]
    if plt is None:
        lines += ["", "(matplotlib is not installed: no plots; pip install matplotlib)"]
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    return text
