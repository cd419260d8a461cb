"""The README's core example and the quickstart run as written; run.py finds the benchmarks."""

from __future__ import annotations

import importlib.util
import runpy
from pathlib import Path

import pytest
import torch

PACKAGE = Path(__file__).resolve().parents[1]


def test_readme_core_example_runs() -> None:
    readme = PACKAGE / "README.md"
    section = readme.read_text().split("## Core: operators, CG and checks", 1)[1]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    exec(compile(code, f"{readme}:core", "exec"), {})


@pytest.mark.slow
def test_quickstart_runs(capsys: pytest.CaptureFixture[str]) -> None:
    threads = torch.get_num_threads()
    try:
        runpy.run_path(str(PACKAGE / "examples" / "quickstart.py"), run_name="__main__")
    finally:
        torch.set_num_threads(threads)  # the example sets one thread for itself
    out = capsys.readouterr().out
    assert "gradcheck passed" in out
    assert "CG-SENSE" in out


def test_benchmark_runner_discovers_every_bench_module() -> None:
    spec = importlib.util.spec_from_file_location(
        "physops_bench_run", PACKAGE / "benchmarks" / "run.py"
    )
    assert spec is not None
    assert spec.loader is not None
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    found = run.discover()
    assert "core" in found
    assert set(found) == {
        p.stem.removeprefix("bench_") for p in (PACKAGE / "benchmarks").glob("bench_*.py")
    }
    assert callable(run.load(found["core"]).main)
