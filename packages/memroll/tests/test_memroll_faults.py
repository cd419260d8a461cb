"""Faults of the command line: devices checked before any work, the OSErrors it names, input
errors as one line (argparse's too), run folders that follow the umask, and a resume that
keeps the provenance of ``config.toml`` and appends to it."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

import pytest
import torch
from memroll_test_configs import tiny_config

from memroll import config as _config
from memroll._console import CommandError, check_device, input_errors, os_error_line
from memroll.cli import main

h5py = pytest.importorskip("h5py")

CONFIG = tiny_config(steps=2, batch_size=2, checkpoint_every=1, eval_samples=2)


@contextlib.contextmanager
def _umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(CONFIG)
    return path


# --------------------------------------------------------------------------------------------
# devices
# --------------------------------------------------------------------------------------------
def test_cpu_is_always_there():
    assert check_device("cpu") == torch.device("cpu")


def test_cuda_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(CommandError, match=r"--device 'cuda' needs CUDA, which this machine"):
        check_device("cuda")


def test_a_cuda_device_past_the_last(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(CommandError, match=r"train.device 'cuda:3' names CUDA device 3, but "
                       r"this machine has 2 \(cuda:0 to cuda:1\)"):  # fmt: skip
        check_device("cuda:3", "train.device")


@pytest.mark.parametrize("name", ["gpu", "cuda:x", ""], ids=["a-word", "bad-index", "empty"])
def test_a_name_that_is_no_device(name):
    with pytest.raises(CommandError, match="is not a torch device: use cpu, cuda or cuda:N"):
        check_device(name)


def test_other_device_types_are_refused():
    with pytest.raises(CommandError, match="memroll runs on cpu or cuda devices"):
        check_device("meta")


def test_the_device_is_checked_before_the_run_folder_exists(config_file, tmp_path, monkeypatch,
                                                              capsys):  # fmt: skip
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    run = tmp_path / "run"
    assert main(["train", str(config_file), "--run-dir", str(run), "--device", "cuda"]) == 2
    assert "needs CUDA" in capsys.readouterr().err
    assert not run.exists()


# --------------------------------------------------------------------------------------------
# errors as one line
# --------------------------------------------------------------------------------------------
def test_named_os_errors_say_what_to_do():
    line = os_error_line(OSError(errno.EROFS, "Read-only file system", "/mnt/run"))
    assert line == (
        "Read-only file system: '/mnt/run' (that file system is read-only: choose a folder on a "
        "writable one)"
    )
    assert os_error_line(OSError(errno.ENOSPC, "No space left on device while writing x")) == (
        "No space left on device while writing x (free some space, or write somewhere else)"
    )
    assert os_error_line(OSError(errno.ECONNRESET, "reset")) is None
    assert os_error_line(OSError("no errno")) is None


def test_input_errors_become_command_errors():
    with pytest.raises(CommandError, match="bad value"), input_errors():
        raise ValueError("bad value")
    with pytest.raises(CommandError, match="file signature not found"), input_errors():
        raise OSError("Unable to open file (file signature not found)")
    with pytest.raises(PermissionError), input_errors():
        raise PermissionError(errno.EACCES, "Permission denied", "x")
    with pytest.raises(KeyError), input_errors():
        raise KeyError("a bug")


def test_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--no-such-option"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "memroll: error: unrecognized arguments: --no-such-option (memroll --help shows the usage)"
    ]


def test_a_diverged_training_is_one_line(config_file, tmp_path, capsys, monkeypatch):
    import unrolled

    def diverges(*args, **kwargs):
        raise FloatingPointError(
            "the training loss is nan at step 2; the parameters were not updated. Lower lr"
        )

    monkeypatch.setattr(unrolled, "train", diverges)
    assert main(["train", str(config_file), "--run-dir", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "memroll train: error: the training loss is nan at step 2; the parameters were not "
        "updated. Lower lr"
    ]


# --------------------------------------------------------------------------------------------
# run folders
# --------------------------------------------------------------------------------------------
def _modes(folder: Path) -> dict[str, str]:
    return {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in folder.iterdir() if p.is_file()}


def test_run_folder_files_follow_the_umask(config_file, tmp_path):
    from test_memroll_cli import write_fastmri

    run, source = tmp_path / "run", tmp_path / "in.h5"
    write_fastmri(source, slices=1)
    with _umask(0o022):
        assert main(["train", str(config_file), "--run-dir", str(run)]) == 0
        assert (
            main(["recon", str(run), str(source), str(tmp_path / "out.h5"), "--no-progress"]) == 0
        )
    modes = _modes(run)
    for name in ("config.toml", "checkpoint.pt", "checkpoint.prev.pt", "best.pt", "log.csv",
                 "val.csv", "train_result.json", "metrics_test.json", "metrics_test.csv",
                 "recon_test.png"):  # fmt: skip
        assert modes.pop(name) == "0o644", name
    assert modes == {}
    assert oct(stat.S_IMODE((tmp_path / "out.h5").stat().st_mode)) == "0o644"


def test_resume_keeps_the_provenance_and_appends_to_it(config_file, tmp_path):
    run = tmp_path / "run"
    assert main(["train", str(config_file), "--run-dir", str(run), "--no-eval"]) == 0
    first = (run / "config.toml").read_text().splitlines()
    header = [line for line in first if line.startswith("#")]
    assert header[0].startswith("# the configuration of this run, as trained (from")
    resume = ["train", "--resume", str(run), "--no-eval", "--set"]
    assert main([*resume, "train.steps=3"]) == 0
    assert main([*resume, "train.steps=4"]) == 0
    now = [line for line in (run / "config.toml").read_text().splitlines() if line.startswith("#")]
    assert now[: len(header)] == header
    assert len(now) == len(header) + 2
    assert now[-2].startswith("# resumed ")
    assert now[-2].endswith(f"at step 2 from checkpoint.pt: memroll train --resume {run} --set "
                            "train.steps=3")  # fmt: skip
    assert now[-1].endswith(f"at step 3 from checkpoint.pt: memroll train --resume {run} --set "
                            "train.steps=4")  # fmt: skip
    assert _config.load_config(run / "config.toml").train.steps == 4
    events = (run / "events.log").read_text().splitlines()
    assert [line.split(" ", 1)[1] for line in events] == [
        "resumed at step 2 from checkpoint.pt",
        "resumed at step 3 from checkpoint.pt",
    ]
