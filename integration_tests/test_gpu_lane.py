"""The GPU lane (``.ci/gpu``, the README's command) collects on a CPU machine: every test file
of every package and of the integration tests imports, no two share a basename, and the
``gpu``-marked tests are selected (they skip cleanly without CUDA)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMAND = (
    "PYTHONPATH=$(ls -d packages/*/src | paste -sd:) python3 -m pytest -m gpu packages "
    "integration_tests"
)


PYTEST = [sys.executable, "-m", "pytest"]
LANE = ["-m", "gpu", "packages", "integration_tests"]


def test_the_script_runs_the_readme_command():
    script = (ROOT / ".ci" / "gpu").read_text()
    assert COMMAND in script
    assert COMMAND in " ".join((ROOT / "README.md").read_text().split())
    assert os.access(ROOT / ".ci" / "gpu", os.X_OK)


def test_test_files_have_unique_basenames():
    files = [*ROOT.glob("packages/*/tests/test_*.py"), *ROOT.glob("integration_tests/test_*.py")]
    names = [f.name for f in files]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def test_the_gpu_lane_collects_on_cpu():
    sources = os.pathsep.join(str(p) for p in sorted(ROOT.glob("packages/*/src")))
    env = {**os.environ, "PYTHONPATH": sources}
    done = subprocess.run(
        [*PYTEST, "--collect-only", "-q", "-p", "no:cacheprovider", *LANE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert not re.search(r"\berrors?\b", output.splitlines()[-1]), output[-4000:]
    assert "ERROR" not in output, output[-4000:]
    selected = re.search(r"(\d+)/\d+ tests collected", output.splitlines()[-1])
    assert selected is not None, output[-2000:]
    assert int(selected.group(1)) > 0, output[-2000:]
