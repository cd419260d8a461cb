"""Benchmark of physops' acquisition side: masks, coil maps, CT and Fourier ptychography.

``main(out_dir, quick)`` writes ``acquisition.md`` under ``out_dir`` and returns its text
(``benchmarks/run.py`` discovers this module); ``python bench_acquisition.py --out DIR [--quick]``
runs it alone. Single-threaded (``torch.set_num_threads(1)``); times are medians after a warm-up.

Memory: each configuration runs in a FRESH worker process (this script in ``--worker`` mode,
``MALLOC_MMAP_THRESHOLD_=65536``), which writes ``5`` to ``/proc/self/clear_refs`` before the
measured part and reads ``VmHWM`` from ``/proc/self/status`` after it.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from common import command_line, run_worker, write_report

import physops


def _median_time(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up (also JIT compiles sigpy's numba kernels)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ------------------------------------------------------------------------------------------------
# masks
# ------------------------------------------------------------------------------------------------


def bench_masks(quick: bool) -> list[str]:
    import sigpy.mri

    shape = (128, 128) if quick else (320, 256)
    accels = (4,) if quick else (4, 8, 12, 16)
    repeats = 1 if quick else 3
    rows = [
        f"Poisson-disc masks, {shape[0]}x{shape[1]} grid, 20x20 calibration (GLEAM's knee "
        f"setting), median of {repeats}:",
        "",
        "| R | ours: time (s) | ours: achieved R error | sigpy: time (s) | sigpy: achieved R "
        "error | time ratio ours/sigpy |",
        "|---|---|---|---|---|---|",
    ]
    for accel in accels:
        ours = physops.poisson_disc_mask(shape, accel, calibration=20, seed=0)
        theirs = np.abs(sigpy.mri.poisson(shape, accel, calib=(20, 20), seed=0))
        t_ours = _median_time(
            lambda a=accel: physops.poisson_disc_mask(shape, a, calibration=20, seed=0), repeats
        )
        t_theirs = _median_time(
            lambda a=accel: sigpy.mri.poisson(shape, a, calib=(20, 20), seed=0), repeats
        )
        e_ours = abs(ours.numel() / float(ours.sum()) - accel) / accel
        e_theirs = abs(theirs.size / theirs.sum() - accel) / accel
        rows.append(
            f"| {accel} | {t_ours:.3f} | {e_ours:.2e} | {t_theirs:.3f} | {e_theirs:.2e} | "
            f"{t_ours / t_theirs:.2f} |"
        )
    return rows


# ------------------------------------------------------------------------------------------------
# ESPIRiT
# ------------------------------------------------------------------------------------------------


def bench_espirit(quick: bool) -> list[str]:
    size, coils, batch = (32, 4, 1) if quick else (128, 8, 4)
    images = physops.real_anatomy_images("test", image_size=size)[:batch]
    maps = physops.birdcage_maps((size, size), coils)
    gen = torch.Generator().manual_seed(0)
    kspace = torch.stack(
        [
            physops.simulate_kspace(im.to(torch.complex64), maps, snr_db=30, generator=gen)[0]
            for im in images
        ]
    )
    repeats = 1 if quick else 3
    calib = 16 if quick else 24
    iters = 20 if quick else 100
    t_ours = _median_time(lambda: physops.espirit_maps(kspace, calibration=calib), repeats)
    t_theirs = _median_time(  # one timed run: sigpy takes tens of seconds here
        lambda: physops.espirit_maps_sigpy(kspace, calibration=calib, max_iter=iters), 1
    )
    ours = physops.espirit_maps(kspace, calibration=calib)
    theirs = physops.espirit_maps_sigpy(kspace, calibration=calib, max_iter=iters)
    support = images > 0.1
    agreement = (ours.conj() * theirs).sum(1).abs()[support]
    return [
        f"ESPIRiT maps, batch {batch}, {coils} coils, {size}x{size}, real anatomy, "
        f"{calib}x{calib} calibration, kernel 6 (median of {repeats}):",
        "",
        "| implementation | time (s) | ratio to sigpy | min per-pixel agreement with sigpy |",
        "|---|---|---|---|",
        f"| physops.espirit_maps (torch, batched, eigh) | {t_ours:.3f} | "
        f"{t_ours / t_theirs:.2f} | {float(agreement.min()):.4f} |",
        f"| sigpy EspiritCalib (per sample, {iters} power iterations) | {t_theirs:.3f} | 1.00 "
        f"| - |",
    ]


# ------------------------------------------------------------------------------------------------
# Radon
# ------------------------------------------------------------------------------------------------


def bench_radon(quick: bool) -> list[str]:
    from skimage.transform import iradon, radon

    size, batch = (64, 2) if quick else (128, 4)
    angles = physops.uniform_angles(1000, keep=200)
    op = physops.Radon(size, angles)
    images = physops.real_anatomy_images("test", image_size=size)[:batch]
    sino = op(images)
    repeats = 1 if quick else 3
    t_fwd = _median_time(lambda: op(images), repeats)
    t_adj = _median_time(lambda: op.adjoint(sino), repeats)
    degrees = np.rad2deg(angles.double().numpy())
    np_images = images.double().numpy()
    np_sino = sino.double().numpy()
    t_sk_fwd = _median_time(lambda: [radon(im, degrees, circle=True) for im in np_images], repeats)
    t_sk_bp = _median_time(
        lambda: [iradon(s.T, degrees, circle=True, filter_name=None) for s in np_sino], repeats
    )
    ours64 = physops.Radon(size, angles.double())(images.double())
    errors = [
        float(
            torch.linalg.norm(ours64[i] - torch.from_numpy(radon(np_images[i], degrees)).T)
            / np.linalg.norm(radon(np_images[i], degrees))
        )
        for i in range(batch)
    ]
    rec = physops.fbp(op, sino)
    fbp_err = float((rec - images).norm() / images.norm())
    return [
        f"Radon, {size}x{size}, 200 of 1000 angles (LUSER), batch {batch}, float32 "
        f"(median of {repeats}):",
        "",
        "| operation | physops (s) | scikit-image (s) | ratio physops/skimage |",
        "|---|---|---|---|",
        f"| forward (radon) | {t_fwd:.3f} | {t_sk_fwd:.3f} | {t_fwd / t_sk_fwd:.2f} |",
        f"| back-projection (adjoint vs unfiltered iradon) | {t_adj:.3f} | {t_sk_bp:.3f} | "
        f"{t_adj / t_sk_bp:.2f} |",
        "",
        f"Sinogram relative error against `skimage.transform.radon` (float64, real images): "
        f"max {max(errors):.1e}. FBP (ramp) relative error on the same images: {fbp_err:.3f}.",
    ]


# ------------------------------------------------------------------------------------------------
# memory of unrolled CT data-consistency steps: custom autograd Functions vs plain autograd
# ------------------------------------------------------------------------------------------------


def _peak_rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return -1


def _worker(config: dict[str, Any]) -> dict[str, Any]:
    """Run K unrolled gradient steps on the CT data term and backprop; report peak RSS."""
    from physops import _radon

    torch.set_num_threads(1)
    size, steps, batch = config["size"], config["steps"], config["batch"]
    op = physops.Radon(size, physops.uniform_angles(1000, keep=200))
    x0 = torch.zeros(batch, size, size)
    target = physops.real_anatomy_images("train", image_size=size)[:batch]
    y = op(target)
    if config["mode"] == "plain":  # the same gather/scatter, differentiated by plain autograd
        geometry, angles = op._geometry, op.angles

        def forward(v: torch.Tensor) -> torch.Tensor:
            return _radon._project(v, angles, geometry)

        def adjoint(v: torch.Tensor) -> torch.Tensor:
            return _radon._backproject(v, angles, geometry)
    else:
        forward, adjoint = op, op.adjoint
    lipschitz = float(physops.power_iteration(op, x0, iterations=30).max())
    weight = torch.tensor(1.0 / lipschitz, requires_grad=True)  # a convergent step size
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    base = _peak_rss_kib()
    x = x0
    for _ in range(steps):
        x = x - weight * adjoint(forward(x) - y)
    loss = (x - target).square().mean()
    loss.backward()
    return {"peak_kib": _peak_rss_kib(), "base_kib": base, "grad": float(weight.grad)}


def bench_radon_memory(quick: bool) -> list[str]:
    size, batch = (48, 1) if quick else (64, 2)
    steps_list = (2, 4) if quick else (5, 10, 20)
    rows = [
        f"Peak RSS of K unrolled CT gradient steps `x - w R^T(R x - y)` plus backward, {size}x"
        f"{size}, 200 angles, batch {batch} (fresh process each; growth over the pre-loop RSS). "
        f"'plain' differentiates the same sampling code with autograd, which keeps each call's "
        f"sampling grid:",
        "",
        "| K | plain autograd (MiB) | physops.Radon (MiB) | ratio Radon/plain | gradient rel. "
        "difference |",
        "|---|---|---|---|---|",
    ]
    for steps in steps_list:
        res = {
            mode: run_worker(__file__, {"size": size, "steps": steps, "batch": batch, "mode": mode})
            for mode in ("plain", "radon")
        }
        grow = {m: (r["peak_kib"] - r["base_kib"]) / 1024 for m, r in res.items()}
        diff = abs(res["plain"]["grad"] - res["radon"]["grad"]) / abs(res["plain"]["grad"])
        rows.append(
            f"| {steps} | {grow['plain']:.1f} | {grow['radon']:.1f} | "
            f"{grow['radon'] / max(grow['plain'], 1e-9):.2f} | {diff:.1e} |"
        )
    return rows


# ------------------------------------------------------------------------------------------------
# Fourier ptychography
# ------------------------------------------------------------------------------------------------


def bench_ptycho(quick: bool) -> list[str]:
    size = 64 if quick else 128
    op = physops.FourierPtychography(size, physops.led_grid(9), design=torch.rand(8, 81))
    images = physops.real_anatomy_images("train", image_size=size)
    x = physops.ptychography_object(images[:2], images[2:4])
    y = op.simulate(physops.ptychography_object(images[4:6], images[6:8]))  # a mismatched guess
    repeats = 1 if quick else 5
    t_closed = _median_time(lambda: op.gradient(x, y), repeats)

    def autograd_gradient() -> torch.Tensor:
        v = x.detach().requires_grad_()
        (grad,) = torch.autograd.grad(op.data_loss(v, y).sum(), v)
        return grad

    t_auto = _median_time(autograd_gradient, repeats)
    with torch.no_grad():
        closed = op.gradient(x, y)
    auto = autograd_gradient().detach()
    diff = float((closed - auto).norm() / auto.norm())
    return [
        f"Fourier ptychography data-term gradient, {size}x{size} object, 81 LEDs, 8 multiplexed "
        f"measurements, batch 2 (median of {repeats}):",
        "",
        "| method | time (s) | ratio to autograd | relative difference |",
        "|---|---|---|---|",
        f"| `FourierPtychography.gradient` (closed form) | {t_closed:.4f} | "
        f"{t_closed / t_auto:.2f} | {diff:.1e} |",
        f"| `torch.autograd.grad(data_loss)` | {t_auto:.4f} | 1.00 | - |",
    ]


def main(out_dir: str | os.PathLike[str] = "bench-results/physops", quick: bool = False) -> str:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    sections: list[str] = []
    for bench in (bench_masks, bench_espirit, bench_radon, bench_radon_memory, bench_ptycho):
        sections += ["## " + bench.__name__.removeprefix("bench_"), "", *bench(quick), ""]
    return write_report(out_dir, "acquisition", quick, sections, setup="1 thread, CPU")


if __name__ == "__main__":
    command_line(__doc__, main, _worker)
