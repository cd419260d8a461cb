r"""The measured configurations of ``memroll bench``, run in a process of their own.

``python -m memroll.bench.worker`` reads a JSON *spec* (or a list of specs) on standard input,
runs it and prints one JSON line of results per spec. :mod:`memroll.bench` starts one such
process per configuration on CPU (with ``MALLOC_MMAP_THRESHOLD_=65536`` so freed tensors leave
the resident set, and no configuration inherits another's memory) and one per table on CUDA
(:func:`run_many`: the peak statistics are reset between specs).

Kinds of spec
-------------
=============  ===================================================================================
``memory``     training memory and time of one model and strategy: a warm-up step, then the peak
               memory (:class:`unrolled.training.MemoryProbe`: ``VmHWM`` after writing ``5`` to
               ``/proc/self/clear_refs`` on CPU, ``torch.cuda.max_memory_allocated`` on CUDA) and
               the wall time of each of ``steps`` steps. *Step memory* is the peak minus the
               memory held just before the measured steps (model, Adam state, batch)
``deepinv``    the same protocol for deepinv's MoDL (issue 7's peer), optionally with
               ``torch.utils.checkpoint`` around its denoiser
``quality``    :func:`unrolled.train` for ``train["steps"]`` steps, or to a plateau of the
               validation PSNR when ``train["plateau"]`` is given
               (:mod:`memroll.bench._convergence`); the model of the best validation nRMSE is
               scored on the test split (PSNR, SSIM, nRMSE, PSNR after every stage, and with
               BatchNorm the PSNR under batch statistics); memory and time as
               ``unrolled.train`` records them
``cs``         the l1-wavelet CS baseline (:func:`unrolled.cs_reconstruct`), its weight chosen on
               the validation split, and the zero-filled reconstruction, on the test split
``accuracy``   relative error of reversible gradients against backprop at the same weights, for
               several depths, with and without hybrid checkpoints (MEL's accuracy study)
=============  ===================================================================================
"""

from __future__ import annotations

import copy
import gc
import json
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

import unrolled
from unrolled.training import MemoryProbe, load_buffers, make_engine, median, timed

from ..config import new_model
from ..runs import InputBaseline
from ._convergence import Plateau, train_to_plateau
from ._peers import deepinv_modl, deepinv_physics, import_deepinv, off_device
from ._synthetic import make_dataset

__all__ = ["build_model", "dataset", "main", "run_many", "run_spec"]

MiB = 2.0**20


# ------------------------------------------------------------------------------------------------
# models and data
# ------------------------------------------------------------------------------------------------
def build_model(
    name: str, kwargs: dict[str, Any], data: unrolled.TaskDataset
) -> unrolled.UnrolledModel:
    """Return a model of the application's registry by name, for the image type of ``data``."""
    return new_model(name, kwargs, data, what="unknown benchmark model")


def dataset(spec: dict[str, Any], split: str, **extra: Any) -> unrolled.TaskDataset:
    """Return the ``split`` of the spec's task (with the spec's ``data`` options and ``extra``).

    A task of :func:`unrolled.make_dataset`, or one of the paper-scale tables' synthetic tasks
    (:mod:`memroll.bench._synthetic`).
    """
    return make_dataset(spec["task"], split, **spec.get("data", {}), **extra)


def _setup(spec: dict[str, Any]) -> torch.device:
    torch.set_num_threads(int(spec.get("threads", 1)))
    torch.manual_seed(int(spec.get("seed", 0)))
    device = torch.device(spec.get("device", "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available")
    return device


def _engine(
    model: unrolled.UnrolledModel, batch: unrolled.Batch, spec: dict[str, Any], steps: int
) -> unrolled.training.Engine:
    """Return the optimizer step of :func:`unrolled.train` for the spec's strategy."""
    options = spec.get("strategy_options", {})
    strategy = unrolled.as_strategy(spec.get("strategy", "backprop"), **options)
    if strategy.forward_name == "reversible":
        model.certify(batch.physics, batch.target)
    model.set_strategy(strategy)
    opts = unrolled.TrainOptions.from_kwargs(
        {"steps": steps, "lr": float(spec.get("lr", 1e-4)), "progress": False}
    )
    return make_engine(model, unrolled.get_loss(spec.get("loss", "mse")), opts, strategy)


def _measure(step: Callable[[int], float], device: torch.device, steps: int) -> dict[str, Any]:
    """One warm-up step, then ``steps`` measured steps: peak and step memory, wall times."""
    probe = MemoryProbe(device)
    warm_times: list[float] = []
    with timed(device, warm_times):
        step(0)
    gc.collect()
    probe.reset()
    base = probe.current()
    times: list[float] = []
    losses = []
    for k in range(steps):
        with timed(device, times):
            losses.append(step(k + 1))
    peak = probe.peak()
    return {
        "memory_kind": probe.kind,
        "peak_mb": None if peak is None else peak / MiB,
        "base_mb": None if base is None else base / MiB,
        "step_mb": None if peak is None or base is None else (peak - base) / MiB,
        "time_s": median(times),
        "times": times,
        "warmup_s": warm_times[0],
        "loss": losses[-1],
    }


# ------------------------------------------------------------------------------------------------
# kinds
# ------------------------------------------------------------------------------------------------
def _memory(spec: dict[str, Any]) -> dict[str, Any]:
    device = _setup(spec)
    data = dataset(spec, "train")
    batch = data.batch(list(range(int(spec.get("batch", 2))))).to(device)
    model = build_model(spec["model"], spec.get("model_kwargs", {}), data).to(device)
    engine = _engine(model, batch, spec, int(spec["steps"]) + 1)
    out = _measure(lambda k: engine.step(batch, k)[0], device, int(spec["steps"]))
    out["params"] = unrolled.count_parameters(model)
    return out


def _deepinv(spec: dict[str, Any]) -> dict[str, Any]:
    device = _setup(spec)
    dinv, note = import_deepinv()
    data = dataset(spec, "train")
    samples = [data[i] for i in range(int(spec.get("batch", 2)))]
    maps = torch.stack([s["maps"] for s in samples]).to(device)
    mask = torch.stack([s["mask"] for s in samples]).float().to(device)
    target = torch.stack([s["target"] for s in samples]).to(device)
    kspace = torch.stack([s["kspace"] for s in samples]).to(device)
    with warnings.catch_warnings():
        # deepinv warns that its implicit CG backward needs enough CG iterations; its default
        # (50) is what the issue measured
        warnings.simplefilter("ignore")
        physics = deepinv_physics(dinv, maps, mask)
    y = torch.view_as_real(kspace).movedim(-1, 1).contiguous()
    x = torch.view_as_real(target).movedim(-1, 1).contiguous()
    # the same problem as physops.Sense: deepinv's operator on the target against the data's
    ours = data.collate(samples)
    with torch.no_grad():
        theirs = torch.view_as_complex(physics(x).movedim(1, -1).contiguous())
        mine = ours.physics.to(device)(target)
        operator_error = float((theirs - mine).abs().max() / mine.abs().max())
    model = deepinv_modl(dinv, int(spec["iterations"]), bool(spec.get("checkpointed"))).to(device)
    stray = off_device(physics, device) + [f"model.{n}" for n in off_device(model, device)]
    if stray:
        raise RuntimeError(
            f"deepinv's physics or model holds tensors off {device}: {', '.join(stray[:8])}"
        )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=float(spec.get("lr", 1e-4)))

    def step(k: int) -> float:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss = (model(y, physics) - x).square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    out = _measure(step, device, int(spec["steps"]))
    out.update(
        params=unrolled.count_parameters(model),
        deepinv_version=str(getattr(dinv, "__version__", "?")),
        torchvision_note=note,
        operator_error=operator_error,
        cg={
            "max_iter": int(physics.max_iter),
            "tol": float(physics.tol),
            "implicit_backward": bool(physics.implicit_backward_solver),
        },
    )
    return out


def _summary(table: Any) -> dict[str, Any]:
    return dict(table.summary())


def _batch_statistics_psnr(
    model: unrolled.UnrolledModel, test: unrolled.TaskDataset, device: torch.device
) -> float | None:
    """Test PSNR with every BatchNorm normalising by its batch's statistics (``None`` without).

    A diagnostic for weight-shared BatchNorm (LU-DnCNN: one DnCNN for all unrolls, whose inputs
    differ from unroll to unroll, so one set of running statistics fits none of them): a copy of
    the model whose BatchNorms keep no running statistics, scored on batches of 4 test images.
    """
    norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    if not any(isinstance(m, norms) for m in model.modules()):
        return None
    twin = copy.deepcopy(model)
    for m in twin.modules():
        if isinstance(m, norms):
            m.running_mean, m.running_var, m.track_running_stats = None, None, False
    return float(unrolled.evaluate(twin, test, batch_size=4, device=device).mean()["psnr"])


def _quality(spec: dict[str, Any]) -> dict[str, Any]:
    device = _setup(spec)
    splits = {s: dataset(spec, s) for s in ("train", "val")}
    model = build_model(spec["model"], spec.get("model_kwargs", {}), splits["train"])
    options = dict(spec["train"])
    rule = options.pop("plateau", None)
    common = {
        "strategy": spec.get("strategy", "backprop"),
        "strategy_options": spec.get("strategy_options", {}),
        "device": str(device),
    }
    with tempfile.TemporaryDirectory() as run_dir:
        if rule is None:
            result = unrolled.train(
                model, splits["train"], splits["val"], run_dir=run_dir, progress=False,
                **common, **options,
            )  # fmt: skip
            peak, base = result.peak_memory_bytes, result.memory_baseline_bytes
            stop: dict[str, Any] = {
                "stopped": "steps",
                "steps": result.steps,
                "time_s": result.median_step_time_s,
            }
        else:
            result, stop = train_to_plateau(
                model, splits["train"], splits["val"], run_dir=run_dir,
                plateau=Plateau.from_spec(rule), options=options, **common,
            )  # fmt: skip
            peak, base = stop.pop("peak_bytes"), stop.pop("baseline_bytes")
        info = unrolled.load_model(model, f"{run_dir}/best.pt", map_location=device)
    del splits
    test = dataset(spec, "test")
    table = unrolled.evaluate(model, test, batch_size=int(spec.get("eval_batch", 4)), device=device)
    zero = unrolled.evaluate(InputBaseline(), test, batch_size=4, device=device)
    return {
        "params": unrolled.count_parameters(model),
        "test": _summary(table),
        "zero_filled": _summary(zero),
        "stage_psnr": unrolled.psnr_per_stage(model, test, batch_size=4, device=device),
        "test_psnr_batch_statistics": _batch_statistics_psnr(model, test, device),
        "best_step": info.get("step"),
        "peak_mb": None if peak is None else peak / MiB,
        "step_mb": None if peak is None or base is None else (peak - base) / MiB,
        "memory_kind": result.memory_kind,
        "time_s": stop.pop("time_s"),
        "training": stop,
        "losses": [float(r["loss"]) for r in result.history],
        "val": [dict(r) for r in result.val_history],
    }


def _cs(spec: dict[str, Any]) -> dict[str, Any]:
    device = _setup(spec)
    val = dataset(spec, "val")
    test = dataset(spec, "test")
    iterations = int(spec.get("iterations", 100))
    grid = []
    for lamda in spec["lamdas"]:
        cs = unrolled.CompressedSensing(float(lamda), iterations)
        grid.append({"lamda": float(lamda), **unrolled.evaluate(cs, val, batch_size=4).mean()})
    best = min(grid, key=lambda r: r["nrmse"])
    cs = unrolled.CompressedSensing(best["lamda"], iterations)
    start = time.perf_counter()
    table = unrolled.evaluate(cs, test, batch_size=4)
    elapsed = time.perf_counter() - start
    zero = unrolled.evaluate(InputBaseline(), test, batch_size=4, device=device)
    return {
        "grid": grid,
        "lamda": best["lamda"],
        "iterations": iterations,
        "test": _summary(table),
        "time_per_slice_s": elapsed / len(table),
        "zero_filled": _summary(zero),
    }


def _relative(a: list[Tensor], b: list[Tensor]) -> float:
    num = math.sqrt(sum(float((x.double() - y.double()).square().sum()) for x, y in zip(a, b)))
    den = math.sqrt(sum(float(y.double().square().sum()) for y in b))
    return num / den if den > 0 else float("nan")


def _gradients(
    model: unrolled.UnrolledModel, batch: unrolled.Batch, strategy: str, **options: Any
) -> list[Tensor]:
    model.set_strategy(strategy, **options)
    model.zero_grad(set_to_none=True)
    loss = unrolled.get_loss("mse")(model(batch.y, batch.physics, batch.x0), batch.target)
    loss.backward()
    return [
        torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
        for p in model.parameters()
    ]


def _accuracy(spec: dict[str, Any]) -> dict[str, Any]:
    device = _setup(spec)
    data32 = dataset(spec, "train", dtype="float32")
    data64 = dataset(spec, "train", dtype="float64")
    indices = list(range(int(spec.get("batch", 2))))
    b32, b64 = data32.batch(indices).to(device), data64.batch(indices).to(device)
    rows = []
    for config in spec["models"]:
        for depth in spec["depths"]:
            torch.manual_seed(int(spec.get("seed", 0)))
            kwargs = {**config["kwargs"], "iterations": depth}
            model = build_model(config["model"], kwargs, data32).to(device)
            model.certify(b32.physics, b32.target)
            layers = len(model.invertible_layers())
            row: dict[str, Any] = {"label": config["label"], "depth": depth, "layers": layers}
            start = time.perf_counter()
            reference = _gradients(model, b32, "backprop")
            row["backprop_s"] = time.perf_counter() - start
            twin = build_model(config["model"], kwargs, data64).to(device)
            twin.load_state_dict(model.state_dict())
            load_buffers(twin, dict(model.named_buffers()))
            twin.double()
            row["float32_floor"] = _relative(reference, _gradients(twin, b64, "backprop"))
            every = int(spec["checkpoint_unrolls"]) * (layers // depth)
            for key, options in (("plain", {}), ("checkpointed", {"checkpoint_every": every})):
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    start = time.perf_counter()
                    try:
                        grads = _gradients(model, b32, "reversible", **options)
                        row[key] = _relative(grads, reference)
                    except (RuntimeError, ValueError, FloatingPointError) as err:
                        row[key] = None
                        row[f"{key}_error"] = f"{type(err).__name__}: {err}"[:200]
                    row[f"{key}_s"] = time.perf_counter() - start
                row[f"{key}_warnings"] = len(caught)
            row["checkpoint_every_layers"] = every
            rows.append(row)
    return {"rows": rows}


KINDS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "memory": _memory,
    "deepinv": _deepinv,
    "quality": _quality,
    "cs": _cs,
    "accuracy": _accuracy,
}


def run_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one spec (see the module docstring) and return its results."""
    kind = spec.get("kind")
    if kind not in KINDS:
        raise ValueError(f"unknown benchmark kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    return KINDS[kind](spec)


def _fresh(device: str) -> None:
    """Free what the previous configuration of this process left, and reset the CUDA peak."""
    gc.collect()
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def run_many(specs: list[dict[str, Any]], emit: Callable[[str], None]) -> None:
    """Run ``specs`` one after another in this process; ``emit`` one JSON line per spec.

    Each line holds the spec's results (or ``{"error": ...}``: one configuration's failure, a
    CUDA out-of-memory error included, does not end the others), its ``index`` in ``specs`` and
    this process's ``pid``. Between specs the garbage is collected and, on CUDA, the cache
    emptied and the peak statistics reset (``torch.cuda.max_memory_allocated`` is then the
    spec's own).
    """
    for index, spec in enumerate(specs):
        _fresh(str(spec.get("device", "cpu")))
        start, cpu = time.perf_counter(), time.process_time()
        try:
            out = run_spec(spec)
        except Exception as err:  # reported in the configuration's row; the table goes on
            out = {"error": f"{type(err).__name__}: {err}"[:300]}
        out.update(
            wall_s=time.perf_counter() - start,
            cpu_s=time.process_time() - cpu,  # the process's CPU time: a loaded machine's measure
            index=index,
            pid=os.getpid(),
        )
        emit(json.dumps(out, default=float))


def main() -> None:
    """Read a spec (or a list of specs) from standard input, print JSON lines of results.

    One spec: its results on one line (an error ends the process with a traceback). A list: one
    line per spec as :func:`run_many` writes them (the benchmark's one process per table).
    """
    specs = json.loads(sys.stdin.read())
    if isinstance(specs, list):
        run_many(specs, lambda line: print(line, flush=True))
        return
    start = time.perf_counter()
    out = run_spec(specs)
    out["wall_s"] = time.perf_counter() - start
    out["pid"] = os.getpid()
    print(json.dumps(out, default=float))


if __name__ == "__main__":
    main()
