"""The benchmark's settings: what each table measures, as one worker spec per configuration.

Specs name models by the application's one registry (:data:`memroll.config.MODELS`: ``MoDL``,
``UnrolledPGD``, ``lu_dncnn``, ``LUSER``, ``IRIM``) and say which worker ``kind`` measures them
(:mod:`memroll.bench.worker`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["T5_MODL", "TABLES", "Job", "configs", "jobs"]

TABLES = ("1", "2", "3", "4", "5")


# ------------------------------------------------------------------------------------------------
# configurations
# ------------------------------------------------------------------------------------------------
def configs(quick: bool) -> dict[str, Any]:
    """Return the settings: tiny ones for ``--quick`` (a smoke test), else the full run's."""
    if quick:
        mri = {"image_size": 32, "num_coils": 4}
        return {
            "t1": {
                "task": "multicoil_mri",
                "data": mri,
                "model_kwargs": {"iterations": 2, "features": 4, "layers": 3, "mu": 4.0},
                "train": {"steps": 4, "batch_size": 2, "lr": 1e-3, "loss": "l1", "val_every": 2},
                "cs": {"lamdas": [0.003, 0.01], "iterations": 5},
            },
            "t2": {
                "task": "multicoil_mri",
                "data": mri,
                "depths": [2, 4],
                "modl_kwargs": {"features": 4, "layers": 3},
                "luser_data": {"image_size": 16, "num_coils": 4},
                "luser_kwargs": {"features": 8, "groups": 4},
                "steps": 2,
            },
            "t3": {
                "task": "multicoil_mri",
                "data": {"image_size": 16, "num_coils": 4},
                "depths": [2, 4],
                "checkpoint_unrolls": 2,
                "mus": [4.0],
                "features": 4,
            },
            "t4": {
                "task": "multicoil_mri",
                "data": {"image_size": 16, "num_coils": 4},
                "irim_steps": [1, 2],
                "irim_kwargs": {"channels": 8, "blocks": 2, "hidden": 8},
                "steps": 2,
                "luser_task": "singlecoil_mri",
                "luser_data": {"image_size": 16},
                "luser_kwargs": {"iterations": 2, "features": 8, "groups": 4},
                "dncnn_kwargs": {"iterations": 2, "features": 8},
                "train": {"steps": 3, "batch_size": 2, "lr": 1e-3, "loss": "mse"},
            },
            "t5": {
                "task": "multicoil_mri",
                "data": {"image_size": 32, "num_coils": 4},
                "unrolls": [2],
                "steps": 2,
            },
        }
    return {
        "t1": {
            "task": "multicoil_mri",
            "data": {"image_size": 64, "num_coils": 8, "acceleration": 4.0},
            # GLEAM 2D MoDL: N = 8, the invertible coupling prior, features 16 instead of 70 to
            # fit the CPU budget; the demo's settings (configs/demo.toml). mu starts at 0.25 and
            # is learned: GLEAM's mu = 4 made 100 steps plateau at 28 dB (3 dB over zero-filling),
            # the CG data consistency barely moving the prior's output at that weight
            "model_kwargs": {
                "iterations": 8,
                "features": 16,
                "layers": 3,
                "couplings": 4,
                "mu": 0.25,
            },
            "train": {"steps": 150, "batch_size": 2, "lr": 3e-3, "loss": "l1", "val_every": 50},
            # as configs/demo.toml: at mu ~ 0.25 the CG step's inverse loses about 5x per unroll
            # (table 3), so reversible keeps the exact state every unroll (5 layers: MEL's hybrid
            # scheme) and recomputes a segment past the drift tolerance
            "strategy_options": {
                "checkpoint": {"checkpoint_every": 1},
                "reversible": {"checkpoint_every": 5, "check_drift": 1e-4, "on_drift": "recompute"},
            },
            # the README's sweep on this task: 5e-4 to 1e-3 is best at 64 px
            "cs": {"lamdas": [2e-4, 5e-4, 1e-3, 2e-3], "iterations": 100},
        },
        "t2": {
            "task": "multicoil_mri",
            "data": {"image_size": 64, "num_coils": 8},
            "depths": [4, 8, 16, 32, 64],
            "modl_kwargs": {"features": 16, "layers": 5},
            "luser_data": {"image_size": 32, "num_coils": 8},
            "luser_kwargs": {"features": 16, "groups": 8},
            "steps": 2,
        },
        "t3": {
            "task": "multicoil_mri",
            "data": {"image_size": 32, "num_coils": 4},
            "depths": [10, 20, 30, 50, 100],
            "checkpoint_unrolls": 10,
            # GLEAM's mu at R = 4 and R = 16, and deepinv's (table 5); table 1 and the demo start
            # from 0.25
            "mus": [4.0, 1.0, 0.25, 0.05],
            "features": 8,
        },
        "t4": {
            "task": "multicoil_mri",
            "data": {"image_size": 32, "num_coils": 4},
            # 5 invertible layers per step (gradient injection + 4 IRIMBlocks): 50 .. 400 layers
            "irim_steps": [10, 20, 40, 80],
            "irim_kwargs": {"channels": 16, "blocks": 4, "hidden": 16},
            "steps": 2,
            "luser_task": "singlecoil_mri",
            "luser_data": {"image_size": 32, "acceleration": 4.0},
            # the paper's sizes: K = 8, F = 32 (LUSER), 17-layer 64-feature DnCNN (LU-DnCNN)
            "luser_kwargs": {"iterations": 8, "features": 32},
            "dncnn_kwargs": {"iterations": 8, "features": 64},
            # 150 steps: at 40 no network had reached the zero-filled image (17 dB) yet
            "train": {"steps": 150, "batch_size": 2, "lr": 1e-3, "loss": "mse", "val_every": 50},
            # LU-DnCNN's 8 unrolls of one shared 17-layer DnCNN with BatchNorm diverged at lr 1e-3
            # (training loss 1.1 -> 5, test PSNR -1 dB); at 1e-4 it trains (19.5 dB at 150 steps)
            "dncnn_train": {"lr": 1e-4},
        },
        "t5": {
            "task": "multicoil_mri",
            "data": {"image_size": 320, "num_coils": 8},
            "unrolls": [2, 4, 8],
            "steps": 2,
        },
    }


#: memroll's MoDL configured as close to deepinv's MoDL as it gets: one regulariser shared by
#: every unroll (deepinv shares its DnCNN), 64 features, mu = 1 (deepinv's HQS with stepsize 1
#: solves (A^H A + I) x = A^H y + z). The invertible regulariser is two additive couplings of
#: 4 convolutions each (8 convolutions, 150k parameters) against deepinv's DnCNN of 7
#: convolutions (186k parameters).
T5_MODL = {
    "prior": "coupling",
    "features": 64,
    "layers": 4,
    "couplings": 2,
    "mu": 1.0,
    "share_weights": True,
}


# ------------------------------------------------------------------------------------------------
# jobs
# ------------------------------------------------------------------------------------------------
@dataclass
class Job:
    """One worker process: the table it belongs to, its labels, its spec, and its result."""

    table: str
    labels: dict[str, Any]
    spec: dict[str, Any]
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return "error" not in self.result


Spec = dict[str, Any]


def _memory(
    c: dict[str, Any], data: dict[str, Any], model: str, kwargs: Spec, strategy: str
) -> Spec:
    """Return a ``memory`` spec: a training step's memory and time of ``model``, ``strategy``."""
    return {
        "kind": "memory",
        "task": c["task"],
        "data": data,
        "model": model,
        "model_kwargs": kwargs,
        "strategy": strategy,
        "steps": c["steps"],
    }


def _table1(c: dict[str, Any]) -> list[tuple[dict[str, Any], Spec]]:
    out = []
    for strategy in ("backprop", "checkpoint", "reversible", "greedy"):
        spec = {
            "kind": "quality",
            "task": c["task"],
            "data": c["data"],
            "model": "MoDL",
            "model_kwargs": c["model_kwargs"],
            "strategy": strategy,
            "strategy_options": c.get("strategy_options", {}).get(strategy, {}),
            "train": c["train"],
        }
        out.append(({"method": strategy}, spec))
    cs = {"kind": "cs", "task": c["task"], "data": c["data"], **c["cs"]}
    return [*out, ({"method": "cs"}, cs)]


def _table2(c: dict[str, Any]) -> list[tuple[dict[str, Any], Spec]]:
    out = []
    for n in c["depths"]:
        for strategy in ("backprop", "checkpoint", "reversible", "greedy"):
            kwargs = {**c["modl_kwargs"], "iterations": n}
            labels = {"model": "MoDL", "strategy": strategy, "depth": n}
            out.append((labels, _memory(c, c["data"], "MoDL", kwargs, strategy)))
        for strategy in ("backprop", "implicit"):
            kwargs = {**c["luser_kwargs"], "iterations": n}
            labels = {"model": "LUSER", "strategy": strategy, "depth": n}
            out.append((labels, _memory(c, c["luser_data"], "LUSER", kwargs, strategy)))
    return out


def _table3(c: dict[str, Any]) -> list[tuple[dict[str, Any], Spec]]:
    models = [
        {
            "label": f"MoDL, mu = {mu:g}",
            "model": "MoDL",
            "kwargs": {"features": c["features"], "mu": mu},
        }
        for mu in c["mus"]
    ]
    models.append(
        {
            "label": "unrolled PGD (coupling prox)",
            "model": "UnrolledPGD",
            "kwargs": {"features": c["features"], "prior": "coupling"},
        }
    )
    spec = {
        "kind": "accuracy",
        "task": c["task"],
        "data": c["data"],
        "depths": c["depths"],
        "checkpoint_unrolls": c["checkpoint_unrolls"],
        "models": models,
    }
    return [({}, spec)]


def _table4(c: dict[str, Any]) -> list[tuple[dict[str, Any], Spec]]:
    out = []
    per_step = 1 + int(c["irim_kwargs"]["blocks"])
    for t in c["irim_steps"]:
        for strategy in ("backprop", "checkpoint", "reversible"):
            labels = {"part": "irim", "strategy": strategy, "steps": t, "layers": t * per_step}
            kwargs = {**c["irim_kwargs"], "steps": t}
            out.append((labels, _memory(c, c["data"], "IRIM", kwargs, strategy)))
    for label, model, kwargs, strategy in (
        ("LUSER-SW", "LUSER", {**c["luser_kwargs"], "share_weights": True}, "implicit"),
        ("LUSER-DW", "LUSER", c["luser_kwargs"], "implicit"),
        ("LU-DnCNN", "lu_dncnn", c["dncnn_kwargs"], "backprop"),
    ):
        spec = {
            "kind": "quality",
            "task": c["luser_task"],
            "data": c["luser_data"],
            "model": model,
            "model_kwargs": kwargs,
            "strategy": strategy,
            "train": {**c["train"], **(c.get("dncnn_train", {}) if model == "lu_dncnn" else {})},
        }
        out.append(({"part": "luser", "method": label, "strategy": strategy}, spec))
    return out


def _table5(c: dict[str, Any]) -> list[tuple[dict[str, Any], Spec]]:
    out = []
    for n in c["unrolls"]:
        for strategy in ("backprop", "checkpoint", "reversible"):
            kwargs = {**T5_MODL, "iterations": n}
            labels = {"method": f"memroll {strategy}", "unrolls": n}
            out.append((labels, _memory(c, c["data"], "MoDL", kwargs, strategy)))
        spec = {
            "kind": "deepinv",
            "task": c["task"],
            "data": c["data"],
            "iterations": n,
            "steps": c["steps"],
        }
        out.append(({"method": "deepinv", "unrolls": n}, spec))
    return out


_TABLE_SPECS = {"1": _table1, "2": _table2, "3": _table3, "4": _table4, "5": _table5}


def jobs(tables: list[str], cfg: dict[str, Any], common: dict[str, Any]) -> list[Job]:
    """One :class:`Job` per measured configuration of the chosen ``tables``, in table order.

    ``cfg`` is :func:`configs`' output; ``common`` goes into every spec (device, threads, seed).
    """
    return [
        Job(table, labels, {**common, **spec})
        for table in TABLES
        if table in tables
        for labels, spec in _TABLE_SPECS[table](cfg[f"t{table}"])
    ]
