"""The fault trial of the ``memroll`` command (``fault_cases.toml``): every case of bad input or
fault ends in one line naming the problem, its exit status, and no traceback; nothing is
written before the check; a crafted pickle's payload never runs. A bug still shows its
traceback.

Each case runs in-process with its simulated fault; the cases with a real fault (a full or
read-only file system, a folder without permission) also run in a fresh process on a real one
where this machine lets the tests make private mounts and user namespaces.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from memroll_faults import (
    Case,
    Workspace,
    describe,
    load_cases,
    prepare,
    real_fault_command,
    run_in_process,
    train_base,
)

import unrolled
from memroll.cli import main

CASES = load_cases()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained tiny run every case starts from."""
    return train_base(tmp_path_factory.mktemp("base"))


def _check(case: Case, ws: Workspace, status: int, stderr: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    assert case.expect in lines[0], lines[0]
    assert lines[0].startswith("memroll"), lines[0]
    assert status == case.status, stderr
    assert not ws.marker.exists(), "the crafted file's payload ran"
    for path in case.absent:
        assert not Path(ws.fill(path)).exists(), f"{ws.fill(path)} was written before the check"


def test_the_trial_has_at_least_38_cases_with_distinct_messages():
    assert len(CASES) >= 38
    assert len({c.id for c in CASES}) == len(CASES)
    assert len({c.expect for c in CASES}) >= 38


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case_ends_in_one_line(case, base, tmp_path):
    ws = Workspace(tmp_path / "work")
    prepare(case, ws, base)
    status, stderr = run_in_process(case, ws)
    _check(case, ws, status, stderr)


# --------------------------------------------------------------------------------------------
# real faults
# --------------------------------------------------------------------------------------------
def _allowed(*command: str) -> bool:
    try:
        return subprocess.run([*command, "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


REAL = [c for c in CASES if c.disk]
MOUNTS = sys.platform == "linux" and _allowed("unshare", "--mount") and os.geteuid() == 0
USERS = sys.platform == "linux" and _allowed("unshare", "--user")


@pytest.mark.slow
@pytest.mark.parametrize("case", REAL, ids=[c.id for c in REAL])
def test_case_on_a_real_file_system(case, base, tmp_path):
    allowed = USERS if case.disk == "no-permission" else MOUNTS
    if not allowed:
        pytest.skip("this machine does not let tests make private mounts or user namespaces")
    ws = Workspace(tmp_path / "work")
    prepare(case, ws, base)
    runner = [sys.executable, str(Path(__file__).with_name("memroll_faults.py")), "one"]
    command = real_fault_command(case, ws, [*runner, case.id, str(ws.work)])
    path = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "PYTHONPATH": path, "MEMROLL_TRACEBACK": ""},
    )  # fmt: skip
    if ws.locked.exists():
        ws.locked.chmod(0o700)  # so pytest can remove it
    assert describe(done.returncode, done.stderr, ws.marker) == "one line, exit 2", done.stderr
    _check(case, ws, done.returncode, done.stderr)
    if case.disk.startswith("free:"):  # the tmpfs is gone with its namespace: nothing to list
        assert "bytes written" in done.stderr


# --------------------------------------------------------------------------------------------
# what the command line does not catch
# --------------------------------------------------------------------------------------------
#: a bug in memroll, in torch, a ValueError during the work, an OSError it cannot name: each
#: (the function that raises it, the error, what pytest expects) shows its traceback
BUGS = {
    "memroll": (
        "evaluate",
        TypeError("evaluate() got an unexpected keyword argument 'bug'"),
        (TypeError, "unexpected keyword argument 'bug'"),
    ),
    "torch": (
        "psnr_per_stage",
        RuntimeError("CUDA error: an illegal memory access was encountered"),
        (RuntimeError, "illegal memory access"),
    ),
    "value_error": ("evaluate", ValueError("a bug: not the user's input"), (ValueError, "a bug")),
    "unnamed_os_error": (
        "evaluate",
        OSError(errno.ECONNRESET, os.strerror(errno.ECONNRESET)),
        (ConnectionResetError, None),
    ),
}


@pytest.mark.parametrize("bug", BUGS)
def test_a_bug_shows_its_traceback(bug, base, monkeypatch):
    name, error, (expected, match) = BUGS[bug]

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(unrolled, name, broken)
    with pytest.raises(expected, match=match):
        main(["eval", str(base)])


def test_memroll_traceback_shows_the_traceback_of_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMROLL_TRACEBACK", "1")
    with pytest.raises(ValueError, match="is not a run folder of memroll train"):
        main(["eval", str(tmp_path)])
