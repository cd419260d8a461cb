"""What the subprocess benchmarks share: their command line, the demo's MoDL and the report file.

Each benchmark runs its configurations in fresh processes of itself (``--worker SPEC``, a JSON
spec) and writes a Markdown report under ``--out``. Not a benchmark itself.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path


def parse_args(
    description: str | None,
    worker: Callable[[dict], None],
    *,
    rounds: int,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace | None:
    """Parse ``[--quick] [--rounds N] [--out DIR]`` (and ``extra``'s arguments).

    Under ``--worker SPEC`` run ``worker`` on the spec and return ``None``: the caller is done.
    """
    parser = argparse.ArgumentParser(description=description)
    if extra is not None:
        extra(parser)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--out", default="bench-results/unrolled")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return None
    return args


def demo_modl(quick: bool, *, mu: float, **data: float) -> tuple[dict, dict]:
    """``configs/demo.toml``'s MoDL and 64 x 64 8-coil data (``--quick``: a tiny one), with ``mu``.

    Returns the model's and the ``multicoil_mri`` task's keyword arguments (``data`` adds to the
    task's).
    """
    model = {"iterations": 8, "features": 16, "layers": 3, "couplings": 4, "mu": mu}
    model["cg_max_iter"] = 10
    task = {"image_size": 64, "num_coils": 8, **data}
    if quick:
        model.update(iterations=2, features=4)
        task.update(image_size=16, num_coils=4)
    return model, task


def write_report(out: str, name: str, report: str) -> None:
    """Write ``report`` to ``out/name`` (making the folder) and print it."""
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / name).write_text(report)
    print(report)
