"""What a run of ``memroll bench`` measures: the settings of a scale and one job per configuration.

:func:`configs` returns the settings (the miniature's of :mod:`memroll.bench._specs`, or the
papers' sizes of :mod:`memroll.bench._paper`), :func:`jobs` the measured configurations of the
chosen tables.
"""

from __future__ import annotations

from typing import Any

from ._paper import PAPER_SPECS, paper_configs, shrink
from ._specs import MINIATURE_SPECS, Job, miniature_configs

__all__ = ["SCALES", "TABLES", "configs", "jobs"]

TABLES = ("1", "2", "3", "4", "5")
#: ``miniature``: CPU sizes, tables 1 and 4 trained to a plateau; ``paper``: the papers' sizes
SCALES = ("miniature", "paper")


def configs(
    quick: bool = False,
    *,
    scale: str = "miniature",
    max_size: int | None = None,
    seeds: int | None = None,
) -> dict[str, Any]:
    """Return a run's settings.

    Parameters
    ----------
    quick:
        Tiny versions of every table (a smoke test; the paper scale measures one step).
    scale:
        ``"miniature"`` or ``"paper"`` (see :data:`SCALES`).
    max_size:
        Scale every image so its largest side is at most this many pixels (:func:`shrink`).
    seeds:
        Seeds of the trained tables (1 and 4 of the miniature); default 2, ``quick``: 1.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    cfg = paper_configs(1 if quick else 3) if scale == "paper" else miniature_configs(quick)
    if max_size is not None:
        cfg = shrink(cfg, max_size)
    chosen = list(range(seeds if seeds is not None else (1 if quick else 2)))
    for table in ("t1", "t4"):
        cfg[table]["seeds"] = chosen
    cfg["scale"] = scale
    return cfg


def jobs(tables: list[str], cfg: dict[str, Any], common: dict[str, Any]) -> list[Job]:
    """One :class:`Job` per measured configuration of the chosen ``tables``, in table order.

    ``cfg`` is :func:`configs`' output; ``common`` goes into every spec (device, threads, seed;
    a spec's own seed wins).
    """
    specs = PAPER_SPECS if cfg.get("scale") == "paper" else MINIATURE_SPECS
    return [
        Job(table, labels, {**common, **spec})
        for table in TABLES
        if table in tables
        for labels, spec in specs[table](cfg[f"t{table}"])
    ]
