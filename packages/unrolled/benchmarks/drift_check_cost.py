"""Cost of reversible training's default drift checks on the demo's MoDL (README, CHANGELOG).

The model and data are those of memroll's demo config (``memroll/configs/demo.toml``): MoDL with
8 unrolls, a coupling prior (16 features, 3 layers, 4 couplings), mu = 0.25, 10 CG iterations,
on 64 x 64 8-coil MRI at R = 4, batch 2, L1 loss, Adam. Three configurations train one step at a
time, round robin (interleaved, on the same batches and from the same weights each step):

* ``checks``: ``set_strategy("reversible")`` with its defaults (``check_drift="auto"``, recompute
  a segment whose check fails, hybrid checkpoints chosen by MoDL from mu and cg_tol);
* ``no-checks``: the same with ``check_drift=None``;
* ``0.1-default``: unrolled 0.1's defaults, no checks and no hybrid checkpoints;
* ``backprop``: for scale.

Prints the median step time of each, the per-round ratio checks / no-checks (median and
quartiles), the segments recomputed per step, and each configuration's gradient error against
backprop on the first batch. One thread. Usage:
``python drift_check_cost.py [--steps N] [--cg-max-iter K]``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import unrolled

CONFIGS = {
    "checks": ("reversible", {}),
    "no-checks": ("reversible", {"check_drift": None}),
    "0.1-default": ("reversible", {"check_drift": None, "checkpoint_every": 10**6}),
    "backprop": ("backprop", {}),
}


def demo_model(cg_max_iter: int = 10) -> unrolled.MoDL:
    """The demo's MoDL (``[model]`` of ``demo.toml``)."""
    torch.manual_seed(0)
    return unrolled.MoDL(
        iterations=8,
        prior="coupling",
        features=16,
        layers=3,
        couplings=4,
        mu=0.25,
        cg_max_iter=cg_max_iter,
    )


def step(model: unrolled.MoDL, opt: torch.optim.Optimizer, batch: unrolled.Batch) -> float:
    """One training step (forward, L1 loss, backward, Adam); return its wall time."""
    start = time.perf_counter()
    opt.zero_grad()
    out = model(batch.y, batch.physics, batch.x0)
    (out - batch.target).abs().mean().backward()
    opt.step()
    return time.perf_counter() - start


def gradients(model: unrolled.MoDL, batch: unrolled.Batch) -> torch.Tensor:
    """Every parameter's gradient of the L1 loss, concatenated."""
    model.zero_grad()
    out = model(batch.y, batch.physics, batch.x0)
    (out - batch.target).abs().mean().backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=15, help="rounds (one step per config)")
    parser.add_argument(
        "--cg-max-iter",
        type=int,
        default=10,
        help="CG iterations (the demo's 10 stop near residual 2e-6, above cg_tol = 1e-6, so a "
        "segment or two is recomputed per step; 30 converge, which isolates the checks' cost)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = unrolled.make_dataset(
        "multicoil_mri", "train", image_size=64, num_coils=8, acceleration=4.0
    )
    base = demo_model(args.cg_max_iter)
    models = {}
    for name, (strategy, options) in CONFIGS.items():
        model = copy.deepcopy(base).set_strategy(strategy, **options)
        models[name] = (model, torch.optim.Adam(model.parameters(), lr=3e-3))
    first = data.batch([0, 1])
    reference = gradients(models["backprop"][0], first)
    for name, (model, _) in models.items():
        err = float((gradients(model, first) - reference).norm() / reference.norm())
        print(f"{name:>10}: gradient error vs backprop {err:.2e} (first batch, initial weights)")
    times: dict[str, list[float]] = {name: [] for name in CONFIGS}
    recomputed: list[int] = []
    for k in range(args.steps + 1):  # round 0 warms up
        batch = data.batch([(2 * k) % len(data), (2 * k + 1) % len(data)])
        for name, (model, opt) in models.items():
            t = step(model, opt, batch)
            if k > 0:
                times[name].append(t)
            if k > 0 and name == "checks":
                recomputed.append(model.reverse_diagnostics.recomputed_segments)
    ratios = [c / n for c, n in zip(times["checks"], times["no-checks"])]
    q1, med, q3 = statistics.quantiles(ratios, n=4)
    for name, ts in times.items():
        print(f"{name:>10}: median step {statistics.median(ts):.3f} s over {len(ts)} steps")
    every = models["checks"][0].reversible_checkpoints(torch.float32)
    print(
        f"checks / no-checks: median ratio {med:.3f} (quartiles {q1:.3f} .. {q3:.3f}, "
        f"{len(ratios)} interleaved rounds); checkpoint_every = {every} layers; "
        f"recomputed segments per step: median {statistics.median(recomputed):g}, "
        f"max {max(recomputed)}"
    )
    for other in ("0.1-default", "backprop"):
        r = [c / b for c, b in zip(times["checks"], times[other])]
        print(f"checks / {other}: median ratio {statistics.median(r):.3f}")


if __name__ == "__main__":
    main()
