"""The unrolled benchmark (``nox -s bench``): the papers' tables in miniature.

The same benchmark as ``memroll bench`` (see :mod:`unrolled._bench` for the tables and the
measurement method); writes ``report.md``, ``results.json`` and PNG plots to ``--out`` and prints
the report.

    python packages/unrolled/benchmarks/run.py [--quick] [--out DIR] [--tables 1,5] [--jobs N]
"""

from __future__ import annotations

import argparse
import sys

from unrolled import _bench


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _bench.add_arguments(parser)
    return _bench.run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
