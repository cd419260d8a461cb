"""``memroll demo``: one small MoDL trained with every memory strategy, and the CS baseline.

:func:`run` (with the options of :func:`add_arguments`) trains, scores, tabulates and plots;
see :mod:`memroll.demo._run` for what it writes and how it measures.
"""

from ._jobs import Job, logged_steps, run_jobs
from ._run import CONFIG, QUICK, STRATEGIES, add_arguments, run
from ._table import HEADER, format_table, markdown_table, table_row

__all__ = [
    "CONFIG",
    "HEADER",
    "QUICK",
    "STRATEGIES",
    "Job",
    "add_arguments",
    "format_table",
    "logged_steps",
    "markdown_table",
    "run",
    "run_jobs",
    "table_row",
]
