"""physops benchmarks: the entry point that ``nox -s bench`` runs.

Discovers every ``bench_*.py`` module next to this file, calls its ``main(out_dir, quick)`` (which
writes its own Markdown file under ``out_dir`` and returns the text), then writes all reports
together to ``out_dir/report.md`` and prints them.

    python packages/physops/benchmarks/run.py [--out DIR] [--quick] [--only core,acquisition]

``--quick`` runs tiny configurations (a smoke test of about a minute). Set
``MALLOC_MMAP_THRESHOLD_=65536`` (nox does) so freed tensors leave the RSS; the modules start a
fresh process per memory measurement.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent


def discover() -> dict[str, Path]:
    """``{name: path}`` of the benchmark modules, ``bench_core.py`` -> ``core``, sorted by name."""
    return {p.stem.removeprefix("bench_"): p for p in sorted(HERE.glob("bench_*.py"))}


def load(path: Path) -> ModuleType:
    if str(HERE) not in sys.path:  # the modules import their sibling ``common``
        sys.path.insert(0, str(HERE))
    spec = importlib.util.spec_from_file_location(f"physops_benchmarks.{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load benchmark module {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "main", None)):
        raise TypeError(f"{path} must define main(out_dir, quick) -> str (the Markdown report)")
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="physops benchmarks (writes Markdown reports)")
    parser.add_argument("--out", default="bench-results/physops", help="report folder")
    parser.add_argument("--quick", action="store_true", help="tiny configurations (smoke test)")
    parser.add_argument("--only", default=None, help="comma-separated names, e.g. core")
    args = parser.parse_args(argv)
    available = discover()
    names = list(available) if args.only is None else [n.strip() for n in args.only.split(",")]
    unknown = [n for n in names if n not in available]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; valid names are {', '.join(available)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    reports = []
    for name in names:
        start = time.perf_counter()
        print(f"[physops bench] {name} ...", file=sys.stderr, flush=True)
        reports.append(load(available[name]).main(out, args.quick))
        print(
            f"[physops bench] {name} done in {time.perf_counter() - start:.0f} s", file=sys.stderr
        )
    report = "\n\n".join(reports)
    (out / "report.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
