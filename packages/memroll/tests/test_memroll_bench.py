"""``memroll bench`` (memroll.bench): arguments, worker kinds, the report, and a smoke run."""

from __future__ import annotations

import argparse
import json
import math
import sys

import pytest
import torch

import unrolled
from memroll import bench as _bench
from memroll.bench import _comparisons, _format
from memroll.bench import _peers as _bench_peers
from memroll.bench import worker as _bench_worker


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memroll bench")
    _bench.add_arguments(parser)
    return parser


# ------------------------------------------------------------------------------------------------
# arguments
# ------------------------------------------------------------------------------------------------
def test_defaults():
    args = _parser().parse_args([])
    assert args.out == "bench-results/unrolled"
    assert args.quick is False
    assert args.tables == list(_bench.TABLES)
    assert (args.device, args.threads, args.jobs) == ("auto", 1, 1)


def test_tables_parsed():
    assert _parser().parse_args(["--tables", "5, 1"]).tables == ["5", "1"]


def test_unknown_table_is_refused(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["--tables", "1,9"])
    assert "unknown table(s) 9; choose from 1, 2, 3, 4, 5" in capsys.readouterr().err


def test_nonpositive_jobs_is_refused(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["--jobs", "0"])
    assert "expected a positive integer, got '0'" in capsys.readouterr().err


def test_run_checks_a_namespace(tmp_path):
    args = _parser().parse_args(["--out", str(tmp_path)])
    args.jobs = 0
    with pytest.raises(ValueError, match="--jobs must be a positive integer, got 0"):
        _bench.run(args)


def test_run_checks_table_names(tmp_path):
    args = _parser().parse_args(["--out", str(tmp_path)])
    args.tables = "7"
    with pytest.raises(argparse.ArgumentTypeError, match="unknown table"):
        _bench.run(args)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_cuda_without_cuda_is_refused(tmp_path):
    args = _parser().parse_args(["--out", str(tmp_path), "--device", "cuda"])
    with pytest.raises(ValueError, match="CUDA is not available; use --device cpu"):
        _bench.run(args)


def test_every_table_has_jobs():
    for quick in (True, False):
        jobs = _bench.jobs(list(_bench.TABLES), _bench.configs(quick), {"device": "cpu"})
        assert {j.table for j in jobs} == set(_bench.TABLES)
        # the full run measures i-RIM from 50 to 400 invertible layers and MoDL up to 64 unrolls
    full = _bench.jobs(list(_bench.TABLES), _bench.configs(False), {"device": "cpu"})
    layers = {j.labels["layers"] for j in full if j.labels.get("part") == "irim"}
    assert (min(layers), max(layers)) == (50, 400)
    depths = {j.labels["depth"] for j in full if j.table == "2"}
    assert depths == {4, 8, 16, 32, 64}


# ------------------------------------------------------------------------------------------------
# worker kinds, in this process (tiny)
# ------------------------------------------------------------------------------------------------
def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown benchmark kind 'nope'; valid kinds: memory"):
        _bench_worker.run_spec({"kind": "nope"})


def test_unknown_model_is_refused():
    data = unrolled.make_dataset("multicoil_mri", "train", image_size=16, num_coils=2)
    with pytest.raises(ValueError, match="unknown benchmark model 'vit'; valid models: MoDL"):
        _bench_worker.build_model("vit", {}, data)


def test_memory_kind_measures_a_step():
    out = _bench_worker.run_spec(
        {
            "kind": "memory",
            "task": "multicoil_mri",
            "data": {"image_size": 16, "num_coils": 2},
            "model": "MoDL",
            "model_kwargs": {"iterations": 2, "features": 4, "layers": 3},
            "strategy": "reversible",
            "steps": 2,
        }
    )
    assert len(out["times"]) == 2
    assert all(t > 0 for t in out["times"])
    assert out["time_s"] == pytest.approx(sum(out["times"]) / 2)  # the median of two
    if out["memory_kind"] == "cpu_peak_rss" and out["peak_mb"] is not None:
        assert out["peak_mb"] >= out["base_mb"] > 0
    assert math.isfinite(out["loss"])


def test_accuracy_kind_reversible_matches_backprop():
    out = _bench_worker.run_spec(
        {
            "kind": "accuracy",
            "task": "multicoil_mri",
            "data": {"image_size": 16, "num_coils": 2},
            "depths": [2, 3],
            "checkpoint_unrolls": 1,
            "models": [
                {"label": "MoDL", "model": "MoDL", "kwargs": {"features": 4, "layers": 3}},
                {
                    "label": "PGD",
                    "model": "UnrolledPGD",
                    "kwargs": {"features": 4, "prior": "coupling"},
                },
            ],
        }
    )
    rows = out["rows"]
    assert [(r["label"], r["depth"]) for r in rows] == [
        ("MoDL", 2),
        ("MoDL", 3),
        ("PGD", 2),
        ("PGD", 3),
    ]
    for r in rows:
        # a few invertible layers in float32: reversible gradients equal backprop to rounding
        assert r["plain"] < 1e-4
        assert r["checkpointed"] < 1e-4
        assert 0 < r["float32_floor"] < 1e-3
        assert r["layers"] == 3 * r["depth"]  # 2 couplings and a physics step per unroll


# ------------------------------------------------------------------------------------------------
# the report and the peers
# ------------------------------------------------------------------------------------------------
def _job(table, labels, **result):
    return {"table": table, "labels": labels, "spec": {}, "result": result}


def test_flatness_verdict():
    bp = [_job("2", {}, step_mb=10.0), _job("2", {}, step_mb=110.0)]
    flat = [_job("2", {}, step_mb=5.0), _job("2", {}, step_mb=9.0)]
    grows = [_job("2", {}, step_mb=5.0), _job("2", {}, step_mb=60.0)]
    assert "- x: flat: +4.0 MB" in _format.verdict("x", flat, bp, "N")
    assert "- y: NOT flat: +55.0 MB" in _format.verdict("y", grows, bp, "N")
    assert "needs two depths" in _format.verdict("z", flat[:1], bp[:1], "N")


def test_deepinv_figures_from_the_issue_are_labelled():
    jobs = [
        _job("5", {"method": "deepinv", "unrolls": 8}, error="ImportError: No module named x"),
        _job("5", {"method": "memroll reversible", "unrolls": 8}, step_mb=100.0, time_s=2.0),
        _job("5", {"method": "memroll backprop", "unrolls": 8}, step_mb=900.0, time_s=1.5),
    ]
    lines = _comparisons.t5_targets(jobs, [8], 320)
    assert "the issue's 2.67 GB (from the issue, not measured here)" in lines[0]
    assert "time at 8 unrolls <= 1.5x memroll backprop: met: 2.00 s against 1.50 s" in lines[-1]


def test_torchvision_placeholder_raises_when_used():
    finder = _bench_peers._TorchvisionPlaceholder()
    spec = finder.find_spec("torchvision.transforms", None)
    assert spec is not None
    assert finder.find_spec("torch", None) is None
    module = finder.create_module(spec)
    mode = module.InterpolationMode.NEAREST  # attribute chains resolve at import time
    with pytest.raises(_bench_peers.TorchvisionUnavailable, match=r"InterpolationMode\.NEAREST"):
        mode()
    # importing the peers module installs nothing: only deepinv's worker process does
    assert not any(isinstance(f, _bench_peers._TorchvisionPlaceholder) for f in sys.meta_path)


# ------------------------------------------------------------------------------------------------
# the smoke run: every table, tiny, in fresh processes
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_quick_run_writes_every_table(tmp_path, capsys):
    args = _parser().parse_args(["--quick", "--jobs", "2", "--out", str(tmp_path)])
    assert _bench.run(args, log=lambda line: None) == 0
    report = (tmp_path / "report.md").read_text()
    assert capsys.readouterr().out.strip() == report.strip()
    for heading in (
        "## 1. GLEAM Table II",
        "## 2. Training memory against depth",
        "## 3. MEL's accuracy against depth",
        "## 4. i-RIM memory against depth",
        "## 5. Issue 7's comparison",
    ):
        assert heading in report
    results = json.loads((tmp_path / "results.json").read_text())
    jobs = results["jobs"]
    for job in jobs:
        if job["spec"]["kind"] == "deepinv" and "error" in job["result"]:
            continue  # a peer that cannot be installed here is reported, not required
        assert "error" not in job["result"], job
        r = job["result"]
        if "time_s" in r:
            assert r["time_s"] > 0
        if r.get("peak_mb") is not None:
            assert r["peak_mb"] > 0
    for name in ("t1_modl_strategies", "t2_memory_vs_depth", "t3_reversible_accuracy"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
    # what the strategies promise, seen through the benchmark: checkpointing trains exactly the
    # model backprop trains, reversible training the same one up to float32 rounding
    t1 = {j["labels"]["method"]: j["result"] for j in jobs if j["table"] == "1"}
    bp = t1["backprop"]["losses"]
    assert t1["checkpoint"]["losses"] == pytest.approx(bp, rel=1e-6)
    assert t1["reversible"]["losses"] == pytest.approx(bp, rel=1e-4)
