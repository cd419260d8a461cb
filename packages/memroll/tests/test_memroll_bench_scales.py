"""``memroll bench``: training to a plateau, seeds and claims, processes per table, the paper
scale, its synthetic tasks and the deepinv device fix (issues 15 and 16)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import physops
import unrolled
from memroll import bench as _bench
from memroll.bench import _convergence, _paper, _paper_report, _processes, _trained
from memroll.bench import _peers as _bench_peers
from memroll.bench import _synthetic as _bench_synthetic
from memroll.cli import main as memroll_main


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memroll bench")
    _bench.add_arguments(parser)
    return parser


def _job(table, labels, **result):
    return {"table": table, "labels": labels, "spec": {}, "result": result}


# ------------------------------------------------------------------------------------------------
# the plateau rule
# ------------------------------------------------------------------------------------------------
def test_plateau_rule():
    rising = [30.0, 31.0, 32.0, 33.0]
    assert not _convergence.plateaued(rising, patience=2, delta=0.05)
    flat = [30.0, 33.0, 33.02, 33.04]  # the last two gain 0.04 dB over the best before them
    assert _convergence.plateaued(flat, patience=2, delta=0.05)
    assert not _convergence.plateaued(flat, patience=2, delta=0.01)
    assert not _convergence.plateaued(flat[:2], patience=2, delta=0.05)  # too few validations
    dropped = [30.0, 33.0, 32.0, 32.5]  # worse than the best: plateaued
    assert _convergence.plateaued(dropped, patience=2, delta=0.0)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"patience": 0}, "plateau patience must be a positive integer, got 0"),
        ({"max_steps": True}, "plateau max_steps must be a positive integer, got True"),
        ({"delta": -1.0}, "plateau delta must be a finite number >= 0 \\(dB\\), got -1.0"),
        ({"wait": 3}, "unknown plateau option 'wait'; valid: patience, delta"),
    ],
)
def test_plateau_refuses_bad_settings(spec, message):
    with pytest.raises(ValueError, match=message):
        _convergence.Plateau.from_spec(spec)


def _tiny():
    train = unrolled.make_dataset("multicoil_mri", "train", image_size=16, num_coils=2)
    val = unrolled.make_dataset("multicoil_mri", "val", image_size=16, num_coils=2)
    torch.manual_seed(0)
    model = unrolled.MoDL(iterations=2, features=4, layers=3, mu=1.0)
    return model, train, val


def test_training_in_chunks_is_one_run(tmp_path):
    """The chunks of train_to_plateau train exactly what one uninterrupted run trains."""
    options = {"batch_size": 2, "lr": 1e-3, "loss": "l1", "val_every": 2, "seed": 3}
    model, train, val = _tiny()
    whole = unrolled.train(model, train, val, steps=6, progress=False, **options)
    model, train, val = _tiny()
    rule = _convergence.Plateau(patience=1, delta=0.0, max_steps=6, min_steps=6)
    chunked, info = _convergence.train_to_plateau(
        model, train, val, run_dir=str(tmp_path / "run"), plateau=rule, options=options
    )
    assert info["stopped"] == "cap"  # min_steps = max_steps: the cap ends it
    assert info["steps"] == 6
    assert [r["loss"] for r in chunked.history] == [r["loss"] for r in whole.history]
    assert [v["psnr"] for v in chunked.val_history] == [v["psnr"] for v in whole.val_history]


def test_training_stops_at_the_plateau(tmp_path):
    model, train, val = _tiny()
    rule = _convergence.Plateau(patience=1, delta=1e3, max_steps=20, min_steps=4)
    options = {"batch_size": 2, "lr": 1e-3, "loss": "l1", "val_every": 2}
    result, info = _convergence.train_to_plateau(
        model, train, val, run_dir=str(tmp_path / "run"), plateau=rule, options=options
    )
    # any gain is below 1000 dB: the rule stops at the first validation past min_steps
    assert (info["stopped"], info["steps"], result.steps) == ("plateau", 4, 4)
    assert len(result.val_history) == 2
    assert info["time_s"] > 0


def test_training_to_a_plateau_needs_val_every(tmp_path):
    model, train, val = _tiny()
    with pytest.raises(ValueError, match="needs val_every \\(a positive int\\), got None"):
        _convergence.train_to_plateau(
            model, train, val, run_dir=str(tmp_path), plateau=_convergence.Plateau(),
            options={"batch_size": 2},
        )  # fmt: skip


# ------------------------------------------------------------------------------------------------
# seeds and claims
# ------------------------------------------------------------------------------------------------
def _trained_job(method, seed, psnr):
    test = {k: {"mean": v, "std": 0.0} for k, v in (("psnr", psnr), ("ssim", 0.9), ("nrmse", 0.1))}
    return _job("1", {"method": method, "seed": seed}, test=test, training={"steps": 300})


def test_mean_and_spread_over_seeds():
    assert _trained.mean_sd([1.0, 3.0]) == (2.0, math.sqrt(2.0), 2)
    assert _trained.mean_sd([5.0]) == (5.0, 0.0, 1)
    found = [_trained_job("greedy", 0, 40.0), _trained_job("greedy", 1, 41.0)]
    assert _trained.seed_metric(found, "psnr", ".2f") == "40.50 ± 0.71"
    assert _trained.runs(found, "1", method="greedy", seed=1) == found[1:]


def test_claim_verdicts():
    bp = [_trained_job("backprop", s, p) for s, p in ((0, 40.0), (1, 40.1))]
    close = [_trained_job("greedy", s, p) for s, p in ((0, 39.95), (1, 40.05))]
    far = [_trained_job("greedy", s, p) for s, p in ((0, 38.0), (1, 38.1))]
    on_par = _trained.Claim(close, bp)
    assert on_par.on_par()
    assert on_par.tolerance == pytest.approx(_trained.TOLERANCE_DB)
    line = _trained.claim("c", "greedy", "backprop", _trained.Claim(far, bp), "on par")
    assert "does NOT hold: greedy is below backprop by more than the tolerance" in line
    assert "greedy − backprop = -2.00 dB over 2 and 2 seeds" in line
    better = _trained.claim("c", "backprop", "greedy", _trained.Claim(bp, far), "at least")
    assert "holds: backprop is above greedy by more than the tolerance" in better
    assert "not measured" in _trained.claim("c", "a", "b", _trained.Claim([], bp), "on par")


def test_trained_tables_have_seeds_and_a_rule():
    cfg = _bench.configs(False)
    assert cfg["t1"]["seeds"] == [0, 1]
    assert cfg["t1"]["train"]["plateau"]["max_steps"] >= cfg["t1"]["train"]["plateau"]["min_steps"]
    jobs = _bench.jobs(["1", "4"], cfg, {"device": "cpu"})
    greedy = [j for j in jobs if j.labels.get("method") == "greedy"]
    assert sorted(j.spec["seed"] for j in greedy) == [0, 1]
    assert all(j.spec["train"]["seed"] == j.spec["seed"] for j in greedy)
    dw = [j for j in jobs if j.labels.get("method") == "LUSER-DW"]
    assert len(dw) == 2
    assert _bench.configs(False, seeds=3)["t4"]["seeds"] == [0, 1, 2]


# ------------------------------------------------------------------------------------------------
# processes: one per configuration, or one per table
# ------------------------------------------------------------------------------------------------
def test_groups_of_processes():
    jobs = _bench.jobs(["2", "3"], _bench.configs(True), {"device": "cpu"})
    assert [len(g) for g in _processes.groups(jobs, "config")] == [1] * len(jobs)
    per_table = _processes.groups(jobs, "table")
    assert [{j.table for j in g} for g in per_table] == [{"2"}, {"3"}]
    with pytest.raises(ValueError, match="isolation must be 'config' or 'table', got 'auto'"):
        _processes.groups(jobs, "auto")


def test_a_dying_process_loses_only_its_configuration(tmp_path, monkeypatch):
    # a stand-in worker: answers the first spec it is given, then dies with an error line
    fake = tmp_path / "python"
    fake.write_text(
        '#!/bin/sh\ncat > /dev/null\necho \'{"index": 0, "time_s": 1.0}\'\n'
        "echo 'SegmentationFault: boom' >&2\nexit 139\n"
    )
    fake.chmod(0o755)
    monkeypatch.setattr(_processes.sys, "executable", str(fake))
    jobs = [_bench.Job("2", {"n": n}, {"kind": "memory"}) for n in range(3)]
    seen = []
    _processes.run_group(jobs, dict(os.environ), seen.append)
    assert jobs[0].result["time_s"] == 1.0
    assert jobs[1].result["error"] == (
        "the worker process ended while measuring this: SegmentationFault: boom"
    )
    assert jobs[2].result["time_s"] == 1.0  # measured by a new process
    assert seen == [jobs[0], jobs[1], jobs[2]]


@pytest.mark.slow
def test_one_process_per_table_on_cpu(tmp_path):
    """The CUDA path's structure on CPU: every configuration of a table in one process."""
    args = _parser().parse_args(
        ["--quick", "--tables", "2,3", "--isolation", "table", "--out", str(tmp_path)]
    )
    assert _bench.run(args, log=lambda line: None) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["meta"]["isolation"] == "table"
    pids = {}
    for job in results["jobs"]:
        assert "error" not in job["result"], job
        pids.setdefault(job["table"], set()).add(job["result"]["pid"])
    assert all(len(p) == 1 for p in pids.values())
    assert pids["2"] != pids["3"]
    assert "one process per table (`--isolation table`)" in (tmp_path / "report.md").read_text()


def test_isolation_follows_the_device():
    args = _parser().parse_args(["--device", "cpu"])
    assert args.isolation == "auto"
    from memroll.bench import _runner

    assert _runner._check_args(args)[1:] == ("cpu", "config")


# ------------------------------------------------------------------------------------------------
# the paper scale
# ------------------------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_paper_scale_without_a_gpu_is_refused(tmp_path, capsys):
    status = memroll_main(["bench", "--scale", "paper", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert err == [
        "memroll bench: error: --scale paper needs a CUDA GPU (the papers' sizes: about 5 "
        "minutes on an H200, hours on a CPU); say --device cpu to run it on the CPU anyway"
    ]
    assert not (tmp_path / "results.json").exists()


def test_paper_sizes():
    cfg = _bench.configs(False, scale="paper")
    g2 = cfg["t1"]["gleam2"]
    assert g2["data"] == {
        "height": 320, "width": 256, "num_coils": 8, "acceleration": 4.0, "samples": 4,
    }  # fmt: skip
    assert g2["model_kwargs"] == {
        "iterations": 8, "prior": "coupling", "features": 70, "layers": 5, "mu": 4.0,
        "cg_max_iter": 10,
    }  # fmt: skip
    assert cfg["t2"]["depths"] == [8, 16, 32, 64]
    assert cfg["t1"]["gleam5"]["data"]["frames"] == 20
    assert cfg["t4"]["irim_data"]["depth"] == 32
    jobs = _bench.jobs(list(_bench.TABLES), cfg, {"device": "cuda"})
    assert {j.table for j in jobs} == set(_bench.TABLES)
    assert all(j.spec["task"] in ("bench_sense", "bench_single") for j in jobs)


def test_shrink_keeps_the_aspect_and_the_structure():
    small = _paper.shrink(_bench.configs(False, scale="paper"), 32)
    assert small["t1"]["gleam2"]["data"]["height"] == 32
    assert small["t1"]["gleam2"]["data"]["width"] == 24  # 256 * 32 / 320 = 25.6 -> 24
    assert small["t4"]["irim_data"]["depth"] == 4  # 32 slices * 32 / 480, at least 4
    assert small["t1"]["gleam2"]["model_kwargs"]["features"] == 70  # only sizes change
    assert _paper.shrink({"data": {"image_size": 320}}, 8) == {"data": {"image_size": 16}}


@pytest.mark.slow
def test_paper_scale_table1_on_cpu_at_reduced_size(tmp_path):
    """``memroll bench --scale paper --device cpu --tables 1`` with every image at 16 px."""
    args = _parser().parse_args(
        ["--scale", "paper", "--device", "cpu", "--tables", "1", "--max-size", "16", "--quick",
         "--isolation", "table", "--out", str(tmp_path)]
    )  # fmt: skip
    assert _bench.run(args, log=lambda line: None) == 0
    report = (tmp_path / "report.md").read_text()
    assert "# memroll bench (quick, paper scale)" in report
    assert "## 1. GLEAM Table II, GLEAM Table V and MEL's MoDL at the papers' sizes" in report
    assert "scaled down to at most 16 pixels a side" in report
    assert "| greedy | " in report
    jobs = json.loads((tmp_path / "results.json").read_text())["jobs"]
    assert len(jobs) == 9
    assert all("error" not in j["result"] for j in jobs), [j["result"] for j in jobs]


def test_paper_report_prints_the_papers_figures():
    jobs = [
        _job("1", {"part": "gleam2", "strategy": "backprop"}, peak_mb=6013.0, time_s=0.206),
        _job("1", {"part": "gleam2", "strategy": "greedy"}, peak_mb=1043.0, time_s=0.204),
        _job("1", {"part": "gleam2", "strategy": "checkpoint"}, error="CUDA out of memory"),
    ]
    cfg = _bench.configs(False, scale="paper")
    lines = _paper_report.PAPER_SECTIONS["1"](jobs, cfg, None)
    rows: dict[str, str] = {}
    for line in lines:  # the first table's rows (GLEAM Table II)
        if line.startswith("| "):
            rows.setdefault(line.split(" | ")[0], line)
    # 6013 MB = 5.87 GB against GLEAM's 11.4 GB; greedy 0.17x of backprop against GLEAM's 0.14x
    assert rows["| backprop"].startswith("| backprop | 5.87 | 1.00x | 0.206 | 1.00x | 11.4 | 1.00x")
    assert "| 1.02 | 0.17x | 0.204 | 0.99x | 1.57 | 0.14x | 1.00x | 0.65x |" in rows["| greedy"]
    assert "failed: CUDA out of memory" in rows["| checkpoint"]


def test_luser_batch_prediction():
    jobs = [
        _job("4", {"part": "luser", "method": "LU-DnCNN", "batch": 2}, peak_mb=6 * 1024.0,
             params=557185),
        _job("4", {"part": "luser", "method": "LU-DnCNN", "batch": 4}, peak_mb=11 * 1024.0),
    ]  # fmt: skip
    cfg = _bench.configs(False, scale="paper")
    lines = _paper_report.PAPER_SECTIONS["4"](jobs, cfg, None)
    row = next(line for line in lines if line.startswith("| LU-DnCNN"))
    # 2.5 GB a sample over 1 GB: 8 GB fits 2, 10 GB 3, 24 GB 9 (paper: -, 2, 4)
    assert row == ("| LU-DnCNN | 557,185 (557,185) | 6.00 | 11.00 | 2.50 | 2 (-) | 3 (2) | 9 (4) |")


# ------------------------------------------------------------------------------------------------
# the synthetic tasks of the paper scale
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("task", "options", "y_shape"),
    [
        ("bench_sense", {"height": 24, "width": 16}, (2, 3, 24, 16)),
        ("bench_sense", {"height": 24, "width": 16, "frames": 5}, (2, 3, 5, 24, 16)),
        ("bench_single", {"height": 24, "width": 16}, (2, 24, 16)),
        ("bench_single", {"height": 24, "width": 16, "depth": 4}, (2, 4, 24, 16)),
    ],
)
def test_synthetic_tasks(task, options, y_shape):
    extra = {"num_coils": 3} if task == "bench_sense" else {}
    data = _bench_synthetic.make_dataset(task, "train", **options, **extra, acceleration=4.0)
    batch = data.batch([0, 1])
    assert tuple(batch.y.shape) == y_shape
    assert data.dims == (3 if ("frames" in options or "depth" in options) else 2)
    assert physops.check_adjoint(batch.physics, batch.target) < 1e-5
    # the measurements are the operator applied to the target, plus noise at 30 dB
    clean = batch.physics(batch.target)
    error = float((batch.y - clean).norm() / clean.norm())
    assert 1e-3 < error < 0.1
    assert data.batch([0]).target.abs().max() == pytest.approx(1.0)


def test_synthetic_tasks_stay_out_of_unrolled_registry():
    _bench_synthetic.make_dataset("bench_single", "train", height=16, width=16)
    assert not set(_bench_synthetic.SYNTHETIC_TASKS) & set(unrolled.TASKS)
    assert _bench_synthetic.make_dataset("ct", "val", image_size=16).task == "ct"


def test_cine_frames_are_encoded_separately():
    """2D+time: a 2D FFT per frame, so an image in one frame gives k-space in that frame only."""
    data = _bench_synthetic.make_dataset("bench_sense", "train", height=16, width=16, frames=4)
    physics = data.batch([0]).physics
    x = torch.zeros(1, 4, 16, 16, dtype=torch.complex64)
    x[0, 2] = torch.randn(16, 16, dtype=torch.complex64)
    y = physics(x)
    energy = y.abs().square().sum(dim=(0, 1, 3, 4))
    assert energy[2] > 0
    assert energy[[0, 1, 3]].sum() == 0


# ------------------------------------------------------------------------------------------------
# deepinv on the measuring device
# ------------------------------------------------------------------------------------------------
def test_off_device_names_stray_tensors():
    module = torch.nn.Linear(2, 2)
    module.register_buffer("kept", torch.zeros(1, device="meta"))
    module.stray = torch.zeros(1)  # a plain attribute: Module.to would not move it
    assert _bench_peers.off_device(module, "meta") == ["weight", "bias", "stray"]
    assert _bench_peers.off_device(module, "cpu") == ["kept"]


def test_deepinv_physics_stays_on_the_maps_device():
    """deepinv's physics move their buffers to their `device` argument (default cpu): the
    benchmark passes the maps' device. The meta device stands in for a GPU here: without the fix
    the constructor tries to copy the maps to the CPU, which meta tensors refuse."""
    if importlib.util.find_spec("deepinv") is None:
        pytest.skip("deepinv is not installed")
    script = textwrap.dedent(
        """
        import torch
        from memroll.bench._peers import deepinv_physics, import_deepinv, off_device
        dinv, _ = import_deepinv()
        maps = torch.randn(2, 4, 16, 12, dtype=torch.complex64, device="meta")
        mask = torch.ones(2, 16, 12, device="meta")
        physics = deepinv_physics(dinv, maps, mask)
        print(off_device(physics, "meta"), physics.coil_maps.device)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["[]", "meta"]


@pytest.mark.gpu
@pytest.mark.slow
def test_quick_bench_on_cuda_runs_deepinv_on_the_gpu(tmp_path):
    """The GPU lane's check of issue 15 item 3: every row of table 5 runs, deepinv's included."""
    if importlib.util.find_spec("deepinv") is None:
        pytest.skip("deepinv is not installed")
    args = _parser().parse_args(["--quick", "--tables", "5", "--out", str(tmp_path)])
    assert _bench.run(args, log=lambda line: None) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["meta"]["isolation"] == "table"
    for job in results["jobs"]:
        assert "error" not in job["result"], job
        assert job["result"]["memory_kind"] == "cuda_max_allocated"
    assert len({job["result"]["pid"] for job in results["jobs"]}) == 1


@pytest.mark.gpu
@pytest.mark.slow
def test_paper_scale_on_cuda_at_reduced_size(tmp_path):
    """Every paper-scale table on the GPU, images at 64 px: the structure before the real run."""
    args = _parser().parse_args(
        ["--scale", "paper", "--quick", "--max-size", "64", "--out", str(tmp_path)]
    )
    status = _bench.run(args, log=lambda line: None)
    results = json.loads((tmp_path / "results.json").read_text())
    failed = [j for j in results["jobs"] if "error" in j["result"]]
    assert status == 0, failed
    assert results["meta"]["isolation"] == "table"
    assert len({j["result"]["pid"] for j in results["jobs"] if j["table"] == "2"}) == 1
