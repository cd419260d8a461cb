"""``memroll demo --quick``: the whole pipeline of the demo in seconds (its numbers mean
nothing at that size; ``nox -s demo`` runs the real one)."""

from __future__ import annotations

import json

from memroll_helpers import memroll


def test_demo_pipeline(tmp_path):
    out = tmp_path / "demo"
    shown = memroll("demo", "--quick", "--out", out).stdout
    for text in ("PSNR (dB)", "peak training memory", "zero-filled", "backprop", "reversible"):
        assert text in shown
    assert f"Files in {out.resolve()}" in shown
    for name in (
        "results.md",
        "results.json",
        "reconstructions.png",
        "loss_curves.png",
        "memory.png",
        "gleam_psnr_per_module.png",
        "config.toml",
    ):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    strategies = results["strategies"]
    assert set(strategies) == {"backprop", "checkpoint", "reversible", "greedy"}
    for name, r in strategies.items():
        assert r["memory_bytes"] is None or r["memory_bytes"] > 0, name
        assert r["step_time_s"] > 0, name
        assert (out / "runs" / name / "metrics_test.json").is_file()
    # every strategy trained the same network: checkpointing changes nothing but memory
    assert strategies["checkpoint"]["metrics"] == strategies["backprop"]["metrics"]
