"""The README's quickstart runs and shows what it says: one gradient for three strategies."""

import contextlib
import io
from pathlib import Path


def test_quickstart_prints_the_same_gradient_for_every_strategy():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md (Quickstart)", "exec"), {})
    norms = {}
    for line in out.getvalue().splitlines():
        name, value = line.split()
        norms[name] = float(value)
    assert set(norms) == {"backprop", "checkpoint", "reversible"}
    assert norms["backprop"] > 0
    for name in ("checkpoint", "reversible"):
        assert abs(norms[name] - norms["backprop"]) <= 1e-4 * norms["backprop"], norms
