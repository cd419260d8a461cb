"""memroll.

The application that trains physics-based unrolled networks with memory-saving strategies.

The ``memroll`` command (also ``python -m memroll``): ``train``, ``eval``, ``recon``, ``prepare``,
``configs``, ``demo`` and ``bench`` (:mod:`memroll.cli`). Its parts, usable from Python:

==========================  ====================================================================
module                      what it holds
==========================  ====================================================================
:mod:`memroll.config`       TOML run configurations: the schema, the one model registry,
                            reading and writing, the shipped configs
:mod:`memroll.runs`         run folders: :func:`~memroll.runs.train_config`,
                            :func:`~memroll.runs.evaluate_run`,
                            :func:`~memroll.runs.reconstruct_files`
:mod:`memroll.fastmri`      fastMRI volumes: reconstruction at the header's recon matrix,
                            submission files, fastMRI's metrics per volume
:mod:`memroll.demo`         the demo: every strategy on one small MoDL, against CS
:mod:`memroll.bench`        the benchmark: the papers' tables in miniature
:mod:`memroll.plots`        every figure (the only module that imports matplotlib)
==========================  ====================================================================

The models, tasks and training loop are the library ``unrolled`` (``memroll-unrolled``); memroll
uses the public APIs of the five libraries, and none of them imports memroll.
"""

from ._console import CommandError

# the one place the version is written: hatchling reads it for the wheel (pyproject's
# [tool.hatch.version]), and a source tree on PYTHONPATH (the GPU lane) reports it too
__version__ = "0.2.0"

__all__ = ["CommandError", "__version__"]
