r"""``memroll bench --scale paper``: the papers' own sizes, and the figures the papers report.

Every table measures memory and time of training steps (quality needs the papers' weeks of
training) at the sizes the papers state, on the synthetic tasks of
:mod:`memroll.bench._synthetic`, and prints them beside the papers' figures
(:data:`PAPER_FIGURES`, each with its table and column):

=====  ==========================================================================================
table  what runs
=====  ==========================================================================================
1      GLEAM Table II (2D MoDL: coupling prior of 5 convolutions, 70 features, 10 CG steps,
       mu = 4; 8 coils, 320 x 256, batch 4, R = 4 Poisson disc; N = 8) with backprop,
       checkpoint, reversible (MEL) and greedy (GLEAM); GLEAM Table V (3D MoDL on 2D+time: 8 coils,
       20 frames of 216 x 242, N_f = 50, N = 4, mu = 0.05, batch 1, R = 10 k-t mask); MEL's MoDL
       at 10 unrolls (invertible residual prior inverted by fixed-point iteration) against
       backprop
2      GLEAM Table II's MoDL at N = 8, 16, 32, 64 per strategy: memory against depth
3      MEL's accuracy study: reversible gradients against backprop at 10 to 100 unrolls (with and
       without a checkpoint every 10 unrolls) at GLEAM Table II's size, batch 1
4      i-RIM Table 1 (3D: 64 state channels, 10 blocks per step, T = 1 / 4 / 8, single-coil
       volumes of 32 x 480 x 320): reversible; LUSER-SW/-DW against LU-DnCNN on single-coil
       320 x 320 slices at batch 2 and 4, and the largest batch each fits in 8 / 10 / 24 GB
       (LUSER Table 3)
5      deepinv's MoDL at GLEAM Table II's configuration (N = 2, 4, 8) against memroll's MoDL
=====  ==========================================================================================

Budget: about 5 minutes on one H200 (estimated from issue 15's measurements: backprop MoDL at
N = 8 takes 0.206 s and 6 GB a step), under the 8 the issue allows; the README's bench section
lists the estimate per table.
"""

from __future__ import annotations

from typing import Any

from ._specs import T5_MODL, deepinv_spec

__all__ = ["PAPER_FIGURES", "PAPER_SPECS", "paper_configs", "shrink"]

Spec = dict[str, Any]
Specs = list[tuple[dict[str, Any], Spec]]

# ------------------------------------------------------------------------------------------------
# the papers' own figures (GB of training memory; seconds per iteration)
# ------------------------------------------------------------------------------------------------
#: What the papers report, by table. Memory in GB, time in s per training iteration.
PAPER_FIGURES: dict[str, Any] = {
    # GLEAM (Ozturkler et al.), Table II, R = 4 rows, columns "Memory (GB)" and "Timing": the
    # column is headed iter/sec but the values rise for the slower methods (checkpointing 2.83
    # against end-to-end 2.09; the text: GLEAM "1.4x faster per iteration" than checkpointing),
    # so they are seconds per iteration. One 12 GB Titan Xp.
    "gleam_table2": {
        "source": "GLEAM Table II (2D MoDL, R = 4; Memory (GB), Timing columns)",
        "backprop": (11.4, 2.09),
        "checkpoint": (1.67, 2.83),
        "reversible": (1.67, 2.96),
        "greedy": (1.57, 2.08),
    },
    # GLEAM Table V (3D MoDL on cardiac cine, R = 10; Memory (GB), Timing columns); MEL "did not
    # converge for this application" and has no row
    "gleam_table5": {
        "source": "GLEAM Table V (3D MoDL, cine, R = 10; Memory (GB), Timing columns)",
        "backprop": (11.2, 4.26),
        "checkpoint": (3.3, 5.75),
        "greedy": (3.1, 4.29),
    },
    # MEL (Kellman et al.), Sec. 5.2 and Fig. 2: 10.77 GB and 3:50 hours with backprop against
    # 2.11 GB and 8:25 hours memory-efficient (T = 6 fixed-point iterations, no checkpoints); the
    # paper gives totals, not seconds per iteration, so only the time ratio compares
    "mel_mri": {
        "source": "MEL Sec. 5.2 / Fig. 2 (multi-channel MRI, 10 unrolls)",
        "backprop": (10.77, 230.0),  # minutes of the whole training
        "reversible": (2.11, 505.0),
    },
    # issue 15's measurement of GLEAM Table II's MoDL through memroll on one H200 (MB)
    "issue15_depth": {
        "source": "issue 15 (memroll on an H200, MB)",
        "backprop": {8: 6013, 16: 11725},
        "checkpoint": {8: 1055, 32: 1189},
        "reversible": {8: 704, 32: 803, 64: 934},
        "greedy": {8: 1043, 32: 1117},
    },
    # MEL's public reference code (papers/README.md): relative gradient error of reverse
    # recalculation in MoDL without checkpoints; checkpoints every 10 unrolls kept ~1e-10
    "mel_accuracy": {
        "source": "MEL reference code (papers/README.md), MoDL without checkpoints",
        "plain": {10: 2e-9, 20: 4e-4, 25: 0.21, 30: 9e2},
        "checkpointed": 1e-10,
    },
    # i-RIM (Putzky & Welling) Table 1, column "i-RIM 3D": T = 1/4/8 steps, 50/200/400 layers
    "irim_table1": {
        "source": "i-RIM Table 1, i-RIM 3D column (Memory during Training, GB)",
        "steps": {1: 11.51, 4: 11.76, 8: 11.89},
        "layers": {1: 50, 4: 200, 8: 400},
        "state_gb": 1.258,
    },
    # LUSER (Guan et al.) Table 3, MRI rows: parameters and the largest training batch that fits
    # (None: "-", not even batch 1)
    "luser_table3": {
        "source": "LUSER Table 3, MRI rows (max batch size per GPU RAM)",
        "params": {"LU-DnCNN": 557185, "LUSER-SW": 95107, "LUSER-DW": 760849},
        "batch": {
            "LU-DnCNN": {8: None, 10: 2, 24: 4},
            "LUSER-SW": {8: 4, 10: 4, 24: 12},
            "LUSER-DW": {8: 4, 10: 4, 24: 12},
        },
    },
}

# ------------------------------------------------------------------------------------------------
# the settings
# ------------------------------------------------------------------------------------------------
#: GLEAM Table II's data and MoDL (Sec. V-A1, V-C2)
_GLEAM2_DATA = {"height": 320, "width": 256, "num_coils": 8, "acceleration": 4.0, "samples": 4}
_GLEAM2_MODL = {
    "iterations": 8,
    "prior": "coupling",
    "features": 70,
    "layers": 5,
    "mu": 4.0,
    "cg_max_iter": 10,
}


def paper_configs(steps: int = 3) -> dict[str, Any]:
    """Return the paper-scale settings (``steps`` measured steps per configuration)."""
    single = {"height": 320, "width": 320, "acceleration": 4.0, "samples": 4}
    return {
        "t1": {
            "steps": steps,
            "gleam2": {
                "task": "bench_sense",
                "data": _GLEAM2_DATA,
                "batch": 4,
                "model_kwargs": _GLEAM2_MODL,
            },
            "gleam5": {
                "task": "bench_sense",
                # GLEAM Sec. V-A3: 20 frames, matrices of 144-216 x 180-242, 8 coils, R = 10:
                # the largest matrix, which sets the peak memory
                "data": {
                    "height": 216,
                    "width": 242,
                    "frames": 20,
                    "num_coils": 8,
                    "acceleration": 10.0,
                    "samples": 1,
                },
                "batch": 1,
                "model_kwargs": {**_GLEAM2_MODL, "iterations": 4, "features": 50, "mu": 0.05},
            },
            "mel": {
                "task": "bench_sense",
                "data": _GLEAM2_DATA,
                "batch": 4,
                # MEL's invertible residual CNN prior, inverted by fixed-point iteration
                "model_kwargs": {**_GLEAM2_MODL, "iterations": 10, "prior": "iresnet"},
            },
        },
        "t2": {
            "steps": steps,
            "task": "bench_sense",
            "data": _GLEAM2_DATA,
            "batch": 4,
            "depths": [8, 16, 32, 64],
            "model_kwargs": _GLEAM2_MODL,
        },
        "t3": {
            "task": "bench_sense",
            "data": {**_GLEAM2_DATA, "samples": 1},
            "batch": 1,
            "depths": [10, 20, 25, 30, 50, 100],
            "checkpoint_unrolls": 10,
            "model_kwargs": {k: v for k, v in _GLEAM2_MODL.items() if k != "iterations"},
        },
        "t4": {
            "steps": steps,
            "irim_task": "bench_single",
            # i-RIM Sec. 3.2: volumes of 32 x 480 x 320, 64 state channels, 10 blocks a step
            "irim_data": {
                "height": 480,
                "width": 320,
                "depth": 32,
                "acceleration": 4.0,
                "samples": 1,
            },
            "irim_kwargs": {"channels": 64, "blocks": 10, "hidden": 64},
            "irim_steps": [1, 4, 8],
            # backprop of 50 layers on this volume needs hundreds of GB: measured at T = 1 only,
            # where it is expected to run out of memory (the row says so)
            "irim_backprop_steps": [1],
            "luser_task": "bench_single",
            # LUSER Sec. 4: fastMRI single-coil knees (320 x 320, fastMRI's crop; the paper does
            # not state the size); K = 8, F = 32; LU-DnCNN: 17 layers of 64 features
            "luser_data": single,
            "luser_kwargs": {"iterations": 8, "features": 32},
            "dncnn_kwargs": {"iterations": 8, "features": 64},
            "batches": [2, 4],
            "gpu_gb": [8, 10, 24],
        },
        "t5": {
            "steps": steps,
            "task": "bench_sense",
            "data": _GLEAM2_DATA,
            "batch": 4,
            "unrolls": [2, 4, 8],
        },
    }


# ------------------------------------------------------------------------------------------------
# a smaller copy, for tests and small devices
# ------------------------------------------------------------------------------------------------
_SIDES = ("height", "width")
_STACKS = ("frames", "depth")


def _shrunk_data(data: dict[str, Any], max_size: int) -> dict[str, Any]:
    out = dict(data)
    if "image_size" in out:
        out["image_size"] = min(int(out["image_size"]), max(16, max_size))
    sides = [int(out[k]) for k in _SIDES if k in out]
    if not sides:
        return out
    factor = min(1.0, max_size / max(sides))
    for key in _SIDES:
        if key in out:
            out[key] = max(8, 8 * round(int(out[key]) * factor / 8))
    for key in _STACKS:
        if out.get(key):
            out[key] = max(4, round(int(out[key]) * factor))
    return out


def shrink(cfg: Any, max_size: int) -> Any:
    """Return ``cfg`` with every image scaled so that its largest side is at most ``max_size``.

    Heights and widths are scaled by one factor (to multiples of 8, at least 8), frames and
    slices by the same factor (at least 4); the square miniature tasks' ``image_size`` is capped
    (at least 16). Everything else (depths, features, batch sizes) stays.
    """
    if isinstance(cfg, dict):
        out = {k: shrink(v, max_size) for k, v in cfg.items()}
        if any(k in out for k in (*_SIDES, "image_size")):
            out = _shrunk_data(out, max_size)
        return out
    if isinstance(cfg, list):
        return [shrink(v, max_size) for v in cfg]
    return cfg


# ------------------------------------------------------------------------------------------------
# the measured configurations
# ------------------------------------------------------------------------------------------------
_OPTIONS = {"checkpoint": {"checkpoint_every": 1}}  # GLEAM: a checkpoint per unroll


def _memory(c: dict[str, Any], model: str, kwargs: Spec, strategy: str, **where: Any) -> Spec:
    """Return a ``memory`` spec; ``c`` (or ``where``) gives task, data, batch and steps."""
    get = {**c, **where}
    return {
        "kind": "memory",
        "task": get["task"],
        "data": get["data"],
        "batch": get["batch"],
        "steps": get["steps"],
        "model": model,
        "model_kwargs": kwargs,
        "strategy": strategy,
        "strategy_options": _OPTIONS.get(strategy, {}),
    }


def _table1(c: dict[str, Any]) -> Specs:
    parts = (
        ("gleam2", ("backprop", "checkpoint", "reversible", "greedy")),
        ("gleam5", ("backprop", "checkpoint", "greedy")),
        ("mel", ("backprop", "reversible")),
    )
    return [
        (
            {"part": part, "strategy": s},
            _memory(c[part], "MoDL", c[part]["model_kwargs"], s, steps=c["steps"]),
        )
        for part, strategies in parts
        for s in strategies
    ]


def _table2(c: dict[str, Any]) -> Specs:
    return [
        (
            {"strategy": s, "depth": n},
            _memory(c, "MoDL", {**c["model_kwargs"], "iterations": n}, s),
        )
        for n in c["depths"]
        for s in ("backprop", "checkpoint", "reversible", "greedy")
    ]


def _table3(c: dict[str, Any]) -> Specs:
    model = {"label": "MoDL, mu = 4 (GLEAM Table II)", "model": "MoDL", "kwargs": c["model_kwargs"]}
    spec = {
        "kind": "accuracy",
        "task": c["task"],
        "data": c["data"],
        "batch": c["batch"],
        "depths": c["depths"],
        "checkpoint_unrolls": c["checkpoint_unrolls"],
        "models": [model],
    }
    return [({}, spec)]


def _table4(c: dict[str, Any]) -> Specs:
    irim = {"task": c["irim_task"], "data": c["irim_data"], "batch": 1, "steps": c["steps"]}
    out = [
        (
            {"part": "irim", "strategy": s, "steps": t},
            _memory(irim, "IRIM", {**c["irim_kwargs"], "steps": t}, s),
        )
        for s, steps in (("reversible", c["irim_steps"]), ("backprop", c["irim_backprop_steps"]))
        for t in steps
    ]
    luser = {"task": c["luser_task"], "data": c["luser_data"], "steps": c["steps"]}
    for label, model, kwargs, strategy in (
        ("LU-DnCNN", "lu_dncnn", c["dncnn_kwargs"], "backprop"),
        ("LUSER-SW", "LUSER", {**c["luser_kwargs"], "share_weights": True}, "implicit"),
        ("LUSER-DW", "LUSER", c["luser_kwargs"], "implicit"),
    ):
        for b in c["batches"]:
            spec = _memory(luser, model, kwargs, strategy, batch=b)
            out.append(({"part": "luser", "method": label, "batch": b}, spec))
    return out


def _table5(c: dict[str, Any]) -> Specs:
    out = []
    for n in c["unrolls"]:
        for s in ("backprop", "checkpoint", "reversible"):
            labels = {"method": f"memroll {s}", "unrolls": n}
            out.append((labels, _memory(c, "MoDL", {**T5_MODL, "iterations": n}, s)))
        spec = deepinv_spec(c, n, batch=c["batch"])
        out.append(({"method": "deepinv", "unrolls": n}, spec))
    return out


#: table -> the paper-scale configurations of that table (labels, worker spec)
PAPER_SPECS = {"1": _table1, "2": _table2, "3": _table3, "4": _table4, "5": _table5}
