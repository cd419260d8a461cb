"""The memroll benchmark (``nox -s bench``): the papers' tables in miniature.

The same benchmark as ``memroll bench`` (see :mod:`memroll.bench` for the tables and the
measurement method); writes ``report.md``, ``results.json`` and PNG plots to ``--out`` and prints
the report.

    python packages/memroll/benchmarks/run.py [--quick] [--out DIR] [--tables 1,5] [--jobs N]
"""

from __future__ import annotations

import argparse
import sys

from memroll import bench


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench.add_arguments(parser)
    return bench.run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
