"""``memroll bench``: the papers' tables, in miniature (CPU) or at the papers' sizes (GPU).

:func:`add_arguments` and :func:`run` are the ``memroll bench`` subcommand (and
``packages/memroll/benchmarks/run.py``, ``nox -s bench``); :func:`configs` and :func:`jobs` give
the measured configurations; :mod:`memroll.bench.worker` measures one of them in a fresh process;
:func:`write_report` turns a run's ``results.json`` into ``report.md`` and PNG plots. See
:mod:`memroll.bench._runner` for the tables and the measurement method.
"""

from ._plan import SCALES, TABLES, configs, jobs
from ._report import write_report
from ._runner import DEFAULT_OUT, add_arguments, run
from ._specs import T5_MODL, Job

__all__ = [
    "DEFAULT_OUT",
    "SCALES",
    "T5_MODL",
    "TABLES",
    "Job",
    "add_arguments",
    "configs",
    "jobs",
    "run",
    "write_report",
]
