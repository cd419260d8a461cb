"""The README's example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs():
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    assert code is not None, "the README has no python example"
    namespace: dict = {}
    exec(compile(code.group(1), str(README), "exec"), namespace)
    x, z, x_inv = namespace["x"], namespace["z"], namespace["x_inv"]
    assert namespace["result"].all_converged
    assert x.grad is not None
    assert z.shape == (4, 8)
    torch.testing.assert_close(
        x_inv, torch.ones(4, 8) + 0.5 * torch.sin(x_inv), rtol=1e-5, atol=1e-5
    )
