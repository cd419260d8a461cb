"""The README's example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs(capsys) -> None:  # type: ignore[no-untyped-def]
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README must contain a python example"
    code = blocks[0]
    assert len(code.strip().splitlines()) <= 12
    exec(compile(code, str(README), "exec"), {})
    out = capsys.readouterr().out
    assert "12 layers" in out
    error = float(out.split("inverse error")[1])
    assert error < 1e-5
