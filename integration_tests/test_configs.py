"""Every shipped config trains end to end through ``memroll train`` (shrunk to a few steps), and
every MRI config also on fastMRI files with the one option ``--fastmri``."""

from __future__ import annotations

import csv
import json
import math
from importlib import resources
from pathlib import Path

import pytest
import torch
from memroll_helpers import TINY, memroll, tiny

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

SHIPPED = {
    Path(entry.name).stem: tomllib.loads(entry.read_text())
    for entry in (resources.files("memroll") / "configs").iterdir()
    if entry.name.endswith(".toml")
}
MRI = sorted(n for n, c in SHIPPED.items() if c["task"]["name"].endswith("_mri"))


def test_every_shipped_config_has_a_tiny_version():
    assert set(SHIPPED) == set(TINY)


def test_the_papers_settings_ship():
    models = {(c["model"]["name"], c["task"]["name"]) for c in SHIPPED.values()}
    assert ("MoDL", "multicoil_mri") in models  # GLEAM, MEL
    assert ("UnrolledPGD", "multicoil_mri") in models  # GLEAM
    assert ("FPMNet", "ptychography") in models  # MEL
    assert {("LUSER", "deblur"), ("LUSER", "ct"), ("LUSER", "singlecoil_mri")} <= models
    assert {("IRIM", "singlecoil_mri"), ("IRIM", "mri3d")} <= models  # i-RIM 2D and 3D


def _losses(run: Path) -> list[float]:
    with open(run / "log.csv", newline="") as handle:
        return [float(row["loss"]) for row in csv.DictReader(handle)]


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_config_trains_end_to_end(name, tmp_path):
    run = tmp_path / "run"
    done = memroll("train", name, *tiny(name), "--run-dir", run, "--no-progress")
    assert f"training {name}:" in done.stdout
    assert "trained 2 steps" in done.stdout
    checkpoint = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert checkpoint["step"] == 2
    losses = _losses(run)
    assert len(losses) == 2
    assert all(math.isfinite(v) for v in losses)
    result = json.loads((run / "train_result.json").read_text())
    assert result["peak_memory_bytes"] is None or result["peak_memory_bytes"] > 0
    report = json.loads((run / "metrics_test.json").read_text())
    assert report["samples"] == 1
    assert math.isfinite(report["psnr"]["mean"])
    assert (run / "recon_test.png").stat().st_size > 1000


@pytest.mark.parametrize("name", MRI)
def test_mri_config_trains_on_fastmri_files(name, fastmri_root, tmp_path):
    challenge = "multicoil" if SHIPPED[name]["task"]["name"] == "multicoil_mri" else "singlecoil"
    run = tmp_path / "run"
    options = tiny(name, "task.acceleration=4.0")
    memroll("train", name, *options, "--fastmri", fastmri_root[challenge], "--run-dir", run)
    config = tomllib.loads((run / "config.toml").read_text())
    assert config["task"]["root"] == str(fastmri_root[challenge])
    report = json.loads((run / "metrics_test.json").read_text())
    assert math.isfinite(report["psnr"]["mean"])


def test_fastmri_option_is_refused_where_it_does_not_apply(fastmri_root):
    done = memroll("train", "luser_ct", "--fastmri", fastmri_root["multicoil"], expect=2)
    assert "only the MRI tasks" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_bad_key_is_one_line_naming_it():
    done = memroll("train", "gleam_modl_2d", "--set", "model.unrolls=4", expect=2)
    assert "unknown configuration key model.unrolls" in done.stderr
    assert "Traceback" not in done.stderr
