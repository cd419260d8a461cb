"""The root README's Python quickstart composes the packages as it says, and its two commands
are the ones CI runs."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()


def test_quickstart_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = README.split("## Quickstart in Python", 1)[1].split("```python\n", 1)[1]
    code = code.split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    namespace: dict[str, object] = {}
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md (Quickstart in Python)", "exec"), namespace)
    lines = out.getvalue().splitlines()
    assert float(lines[0]) < 1e-5  # the adjoint check
    assert all(p.grad is not None for p in namespace["model"].parameters())  # type: ignore[attr-defined]
    assert all(p.grad is not None for p in namespace["net"].parameters())  # type: ignore[attr-defined]
    megabytes, _, seconds, _ = lines[-1].split()
    assert float(megabytes) > 0
    assert float(seconds) > 0


def test_the_test_command_is_what_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    command = "python3 -m pip install nox && python3 -m nox"
    assert f"    {command}\n" in README
    assert "    python3 -m pip install nox && python3 -m nox -s demo\n" in README
    assert command in ci
