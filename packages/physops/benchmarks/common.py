"""What the ``bench_*.py`` modules share: their worker processes, report and command line.

Not a benchmark itself (``run.py`` runs the ``bench_*.py`` modules only). A benchmark module
imports it as a sibling: its folder is on ``sys.path`` when it runs as a script, and ``run.py``
puts it there before it loads the modules.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def run_worker(
    script: str, config: dict[str, Any], mmap_threshold: str | None = "65536"
) -> dict[str, Any]:
    """Run ``script --worker CONFIG`` in a fresh process and return the JSON of its last line.

    ``MALLOC_MMAP_THRESHOLD_`` is ``mmap_threshold`` there (``None``: glibc's default), so freed
    tensors leave the resident set.
    """
    env = dict(os.environ)
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    if mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = mmap_threshold
    done = subprocess.run(
        [sys.executable, script, "--worker", json.dumps(config)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"benchmark worker failed for {config}:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_report(
    out_dir: str | os.PathLike[str],
    name: str,
    quick: bool,
    sections: list[str],
    setup: str = "1 thread",
) -> str:
    """Write the report of benchmark ``name`` to ``out_dir/name.md`` and return it.

    The report is a title, torch's version and ``setup``, then ``sections`` (Markdown lines).
    """
    title = f"# physops {name} benchmark" + (" (quick)" if quick else "")
    report = "\n".join([title, "", f"torch {torch.__version__}, {setup}.", "", *sections])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(report)
    return report


def command_line(
    doc: str | None,
    main: Callable[[str, bool], str],
    worker: Callable[[dict[str, Any]], dict[str, Any]],
) -> None:
    """``[--out DIR] [--quick]``: print ``main(out, quick)``; ``--worker SPEC``: print
    ``worker(spec)`` as JSON (a fresh process of a memory measurement)."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--out", default="bench-results/physops")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(json.loads(args.worker))))
    else:
        print(main(args.out, args.quick))
