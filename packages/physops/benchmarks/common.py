"""What the ``bench_*.py`` modules share: writing their report and their command line.

Not a benchmark itself (``run.py`` runs the ``bench_*.py`` modules only). A benchmark module
imports it as a sibling: its folder is on ``sys.path`` when it runs as a script, and ``run.py``
puts it there before it loads the modules.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_report(out_dir: str | os.PathLike[str], name: str, sections: list[str]) -> str:
    """Join ``sections`` into the Markdown report, write it to ``out_dir/name`` and return it."""
    report = "\n".join(sections)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(report)
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
