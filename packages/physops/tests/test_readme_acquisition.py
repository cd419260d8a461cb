"""The README's acquisition example runs as written."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_acquisition_example_runs() -> None:
    section = README.read_text().split("## Acquisition", 1)[1]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    exec(compile(code, f"{README}:acquisition", "exec"), {})
