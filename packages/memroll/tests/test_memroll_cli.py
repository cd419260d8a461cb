"""The memroll command line, run in-process through ``memroll.cli.main``: the run folder of
``train``, ``eval`` against the Python API, ``--resume``, ``recon`` of a fastMRI file against
the model applied directly, and one test per bad input."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from memroll_test_configs import tiny_config
from torch import Tensor

import memroll
import physops
import unrolled
from memroll import config as _config
from memroll.cli import main

h5py = pytest.importorskip("h5py")

CONFIG = tiny_config(steps=3, batch_size=2, checkpoint_every=3, eval_samples=3)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(CONFIG)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny run, trained once for the module's read-only tests."""
    folder = tmp_path_factory.mktemp("cli")
    (folder / "tiny.toml").write_text(CONFIG)
    run = folder / "run"
    assert main(["train", str(folder / "tiny.toml"), "--run-dir", str(run)]) == 0
    return run


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------
def test_train_writes_the_run_folder(trained):
    for name in (
        "config.toml",
        "checkpoint.pt",
        "best.pt",
        "log.csv",
        "val.csv",
        "train_result.json",
        "metrics_test.json",
        "metrics_test.csv",
        "recon_test.png",
    ):
        assert (trained / name).is_file(), name
    assert [r["step"] for r in _rows(trained / "log.csv")] == ["1", "2", "3"]
    result = json.loads((trained / "train_result.json").read_text())
    assert result["steps"] == 3
    assert result["strategy"] == "backprop"


def test_the_run_config_is_the_trained_config(trained, config_file):
    saved = _config.load_config(trained / "config.toml")
    assert saved == _config.load_config(config_file)
    assert "memroll train --resume" in (trained / "config.toml").read_text()


def test_strategy_option_is_recorded(tmp_path, config_file):
    run = tmp_path / "greedy"
    argv = ["train", str(config_file), "--strategy", "greedy", "--run-dir", str(run), "--no-eval"]
    assert main(argv) == 0
    assert _config.load_config(run / "config.toml").strategy.name == "greedy"
    assert json.loads((run / "train_result.json").read_text())["strategy"] == "greedy(M=N)"
    assert not (run / "metrics_test.json").exists()


def test_set_overrides_reach_the_model(tmp_path, config_file):
    run = tmp_path / "run"
    argv = ["train", str(config_file), "--set", "model.iterations=3", "--set", "train.steps=1"]
    assert main([*argv, "--run-dir", str(run), "--no-eval"]) == 0
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 1
    assert any(key.startswith("stages.2.") for key in checkpoint["model"])


# --------------------------------------------------------------------------------------------
# eval
# --------------------------------------------------------------------------------------------
def test_eval_matches_the_python_api(trained, capsys):
    assert main(["eval", str(trained)]) == 0
    out = capsys.readouterr().out
    assert "mean (std)" in out
    assert "zero-filled" in out
    report = json.loads((trained / "metrics_test.json").read_text())
    assert report["split"] == "test"
    assert report["weights"] == "best.pt"
    assert report["samples"] == 3 == len(report["per_sample"])

    config = _config.load_config(trained / "config.toml")
    data = unrolled.make_dataset("multicoil_mri", "test", image_size=16, num_coils=4)
    model = _config.build_model(config, data)
    unrolled.load_model(model, trained / "best.pt")
    table = unrolled.evaluate(model, data, max_samples=3)
    for ours, theirs in zip(report["per_sample"], table.rows):
        assert ours == pytest.approx(theirs, rel=1e-6)
    psnrs = [row["psnr"] for row in report["per_sample"]]
    assert report["psnr"]["mean"] == pytest.approx(np.mean(psnrs))
    assert report["psnr"]["std"] == pytest.approx(np.std(psnrs))
    assert len(report["psnr_per_stage"]) == 2
    assert report["psnr_per_stage"][-1] == pytest.approx(report["psnr"]["mean"])

    batch = data.batch([0, 1, 2])
    zero_filled = unrolled.psnr(batch.physics.adjoint(batch.y), batch.target)
    expected = float(zero_filled.mean())
    assert report["baselines"]["zero-filled"]["psnr"]["mean"] == pytest.approx(expected)


def test_eval_other_split_and_weights(trained):
    assert main(["eval", str(trained), "--split", "val", "--weights", "last"]) == 0
    report = json.loads((trained / "metrics_val.json").read_text())
    assert report["split"] == "val"
    assert report["weights"] == "checkpoint.pt"
    assert (trained / "recon_val.png").is_file()


def test_eval_with_cs_baseline(trained):
    pytest.importorskip("sigpy")
    argv = ["eval", str(trained), "--set", "eval.cs_lamda=0.001", "--set", "eval.cs_iterations=5"]
    assert main([*argv, "--set", "eval.samples=1"]) == 0
    report = json.loads((trained / "metrics_test.json").read_text())
    assert "CS (l1-wavelet)" in report["baselines"]


def test_eval_of_a_folder_that_is_no_run(tmp_path, capsys):
    err = _fails(["eval", str(tmp_path)], capsys)
    assert "is not a run folder of memroll train (no config.toml there)" in err


# --------------------------------------------------------------------------------------------
# resume
# --------------------------------------------------------------------------------------------
def test_resume_continues_the_run(tmp_path, config_file):
    run = tmp_path / "run"
    assert main(["train", str(config_file), "--run-dir", str(run), "--no-eval"]) == 0
    argv = ["train", "--resume", str(run), "--set", "train.steps=5", "--no-eval"]
    assert main(argv) == 0
    result = json.loads((run / "train_result.json").read_text())
    assert result["steps"] == 5
    assert result["resumed_from"] == 3
    assert [r["step"] for r in _rows(run / "log.csv")] == ["1", "2", "3", "4", "5"]
    assert _config.load_config(run / "config.toml").train.steps == 5


def test_resume_refuses_a_changed_model(trained, capsys):
    err = _fails(["train", "--resume", str(trained), "--set", "model.features=8"], capsys)
    assert "cannot resume with model.features changed (the run has 4, now 8)" in err


def test_resume_refuses_fewer_steps_than_done(trained, capsys):
    err = _fails(["train", "--resume", str(trained), "--set", "train.steps=2"], capsys)
    assert "cannot resume with train.steps=2: the run is at step 3" in err
    assert _config.load_config(trained / "config.toml").train.steps == 3  # left as it was


def test_resume_refuses_another_strategy(trained, capsys):
    err = _fails(["train", "--resume", str(trained), "--strategy", "checkpoint"], capsys)
    assert "cannot resume with --strategy checkpoint: the run trains with 'backprop'" in err


def test_resume_needs_a_run_folder(tmp_path, capsys):
    err = _fails(["train", "--resume", str(tmp_path)], capsys)
    assert "no config.toml there; is it a run folder of memroll train?" in err


def test_resume_and_config_together(trained, config_file, capsys):
    err = _fails(["train", str(config_file), "--resume", str(trained)], capsys)
    assert "give either CONFIG (a new run) or --resume RUN_DIR" in err


def test_a_run_folder_is_never_overwritten(trained, config_file, capsys):
    err = _fails(["train", str(config_file), "--run-dir", str(trained)], capsys)
    assert "already holds a run (checkpoint.pt): continue it with memroll train --resume" in err


def test_train_without_config(capsys):
    err = _fails(["train"], capsys)
    assert "give a CONFIG (a TOML file or a shipped config's name) or --resume" in err


def test_train_bad_key_names_it(config_file, capsys):
    err = _fails(["train", str(config_file), "--set", "model.depth=3"], capsys)
    assert "unknown configuration key model.depth" in err


def test_fastmri_option_on_a_task_without_files(capsys, tmp_path):
    err = _fails(["train", "luser_ct", "--fastmri", str(tmp_path)], capsys)
    assert "--fastmri reads fastMRI files, which only the MRI tasks" in err
    assert "this config's task is 'ct'" in err


def test_fastmri_option_with_a_missing_path(config_file, capsys, tmp_path):
    err = _fails(["train", str(config_file), "--fastmri", str(tmp_path / "nope")], capsys)
    assert "does not exist: give a .h5 file or a folder" in err


# --------------------------------------------------------------------------------------------
# recon
# --------------------------------------------------------------------------------------------
HEADER = (
    '<?xml version="1.0"?><ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"><encoding>'
    "<encodedSpace><matrixSize><x>{n}</x><y>{n}</y><z>1</z></matrixSize></encodedSpace>"
    "<reconSpace><matrixSize><x>{n}</x><y>{n}</y><z>1</z></matrixSize></reconSpace>"
    "<encodingLimits><kspace_encoding_step_1><minimum>0</minimum><maximum>{m}</maximum>"
    "<center>{c}</center></kspace_encoding_step_1></encodingLimits></encoding></ismrmrdHeader>"
)


def write_fastmri(path: Path, size: int = 16, slices: int = 2, coils: int = 4) -> Tensor:
    """A fully sampled multicoil fastMRI file of real-anatomy slices; returns the images."""
    images = physops.real_anatomy_images("test", image_size=size)[:slices].to(torch.complex64)
    maps = physops.birdcage_maps((size, size), coils)
    kspace = physops.fftc(maps[None] * images[:, None])
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=kspace.numpy())
        header = HEADER.format(n=size, m=size - 1, c=size // 2)
        f.create_dataset("ismrmrd_header", data=np.bytes_(header.encode()))
        f.create_dataset("reconstruction_rss", data=images.abs().numpy())
    return images


def test_recon_matches_the_model_applied_directly(trained, tmp_path, capsys):
    source, output = tmp_path / "in.h5", tmp_path / "out.h5"
    write_fastmri(source)
    assert main(["recon", str(trained), str(source), str(output), "--no-progress"]) == 0
    assert "reconstructed 2 slices of in.h5" in capsys.readouterr().out
    with h5py.File(output, "r") as f:
        recon = np.asarray(f["reconstruction"])
        assert f.attrs["model"] == "MoDL"
        assert bool(f.attrs["retrospective_undersampling"])
    assert recon.shape == (2, 16, 16)
    assert recon.dtype == np.float32

    config = _config.load_config(trained / "config.toml")
    data = unrolled.make_dataset("multicoil_mri", "test", root=str(source), num_coils=4)
    model = _config.build_model(config, data)
    unrolled.load_model(model, trained / "best.pt")
    model.eval()
    for i in range(2):
        sample = data[i]
        batch = data.collate([sample])
        with torch.no_grad():
            expected = model(batch.y, batch.physics).abs()[0] / float(sample["scale"])
        np.testing.assert_allclose(recon[i], expected.numpy(), rtol=1e-5, atol=1e-6)


def test_recon_refuses_a_run_without_mri(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    text = _config.dump_config(_config.load_config("luser_ct"))
    (run / "config.toml").write_text(text)
    err = _fails(["recon", str(run), str(tmp_path / "a.h5"), str(tmp_path / "b.h5")], capsys)
    assert "memroll recon reads fastMRI files, which only the MRI tasks" in err


def test_recon_refuses_to_overwrite_its_input(trained, tmp_path, capsys):
    source = tmp_path / "in.h5"
    write_fastmri(source, slices=1)
    err = _fails(["recon", str(trained), str(source), str(source)], capsys)
    assert "OUTPUT must differ from INPUT" in err


def test_recon_of_a_missing_input(trained, tmp_path, capsys):
    err = _fails(["recon", str(trained), str(tmp_path / "nope.h5"), str(tmp_path / "o.h5")], capsys)
    assert "is not a file (a fastMRI .h5 file)" in err


# --------------------------------------------------------------------------------------------
# configs, bench, the parser
# --------------------------------------------------------------------------------------------
def test_configs_lists_and_prints(capsys):
    assert main(["configs"]) == 0
    out = capsys.readouterr().out
    for name in ("gleam_modl_2d", "mel_fpm", "irim_3d"):
        assert name in out
    assert main(["configs", "luser_ct"]) == 0
    assert capsys.readouterr().out == _config.config_path("luser_ct").read_text()


def test_bench_is_delegated(capsys):
    if importlib.util.find_spec("memroll.bench") is None:
        assert main(["bench"]) == 2
        assert "the benchmark is not available" in capsys.readouterr().err
    else:
        with pytest.raises(SystemExit) as exit_info:
            main(["bench", "--help"])
        assert exit_info.value.code == 0


def test_threads_must_be_positive(capsys):
    with pytest.raises(SystemExit):
        main(["--threads", "0", "configs"])
    assert "--threads must be a positive integer, got 0" in capsys.readouterr().err


def test_a_command_is_required(capsys):
    with pytest.raises(SystemExit):
        main([])
    assert "the following arguments are required: COMMAND" in capsys.readouterr().err


def test_console_script_is_declared():
    # the installed distribution's entry point, or (sources on PYTHONPATH, nothing installed)
    # the one its pyproject declares
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        scripts = {e.name: e.value for e in distribution("memroll").entry_points}
    except PackageNotFoundError:
        pyproject = _config.toml_module().loads(
            (Path(__file__).parents[1] / "pyproject.toml").read_text()
        )
        scripts = pyproject["project"]["scripts"]
    assert scripts.get("memroll") == "memroll.cli:main"


def test_readme_commands_parse():
    from memroll.cli import build_parser

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## The command line: `memroll`", 1)[1]
    block = section.split("```console\n", 1)[1].split("```", 1)[0]
    lines = [line.removeprefix("$ ").split("#", 1)[0] for line in block.splitlines() if line]
    commands = [line.split() for line in lines]
    assert commands
    parser = build_parser()
    for command in commands:
        if command[0] == "torchrun":  # torchrun [its options] -m memroll ARGS
            assert command[command.index("-m") + 1] == "memroll", command
            command = command[command.index("-m") + 1 :]
        assert command[0] == "memroll"
        parser.parse_args(command[1:])


def _python_m_memroll(*args: str):
    import subprocess
    import sys

    command = [sys.executable, "-m", "memroll", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_python_dash_m_memroll_runs_the_command():
    done = _python_m_memroll("--help")
    assert done.returncode == 0, done.stderr
    for command in ("train", "eval", "recon", "configs", "demo", "bench"):
        assert command in done.stdout
    version = _python_m_memroll("--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"memroll {memroll.__version__}"


def test_the_application_never_imports_its_command_line():
    import ast

    source = Path(memroll.__file__).parent
    for path in source.rglob("*.py"):
        if "cli" in path.relative_to(source).parts or path.name == "__main__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom):
                names = [f"{node.module or ''}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            assert not any("cli" in name.split(".") for name in names), (path, names)
