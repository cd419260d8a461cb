"""Which fastMRI files make a split: the folder layout, or an explicit rule by file.

A fastMRI root holds one folder per split, ``train/``, ``val/`` and ``test/`` (or fastMRI's own
``multicoil_train/``, ``multicoil_val/``, ``multicoil_test/``, and ``singlecoil_*`` for the
single-coil challenge). A flat folder of ``.h5`` files is split only by an explicit rule,
``split_by_file=(train, val, test)`` fractions with ``split_seed``: whole files (volumes) are
shuffled and assigned, so the slices of a volume are never in two splits. A single file is one
volume: it can be scored or reconstructed (the ``test`` split), never trained on.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path

from .._validate import check_split, finite_number, nonnegative_int

__all__ = ["LAYOUT", "check_split_rule", "split_files"]

#: The layout a fastMRI root must have, for error messages.
LAYOUT = (
    "a folder with train/, val/ and test/ subfolders of .h5 files (or fastMRI's "
    "multicoil_train/, multicoil_val/, multicoil_test/)"
)
_ORDER = ("train", "val", "test")


def check_split_rule(
    split_by_file: Sequence[float] | None,
) -> tuple[float, float, float] | None:
    """Return ``split_by_file`` as three fractions summing to 1, or ``None``.

    Raises ``ValueError`` for anything but three non-negative numbers with a positive sum.
    """
    if split_by_file is None:
        return None
    if isinstance(split_by_file, (str, bytes)) or len(split_by_file) != 3:
        raise ValueError(
            "split_by_file takes three fractions (train, val, test) such as (0.8, 0.1, 0.1), got "
            f"{split_by_file!r}"
        )
    parts = [finite_number("split_by_file", v, low=0.0) for v in split_by_file]
    total = sum(parts)
    if total <= 0:
        raise ValueError(f"split_by_file fractions must not all be 0, got {split_by_file!r}")
    train, val, test = (p / total for p in parts)
    return (train, val, test)


def _split_folder(base: Path, challenge: str, split: str) -> Path | None:
    for name in (split, f"{challenge}_{split}"):
        if (base / name).is_dir():
            return base / name
    return None


def _h5_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.h5") if p.is_file() and not p.name.startswith("."))


def _by_rule(
    files: list[Path], rule: tuple[float, float, float], seed: int, split: str
) -> list[Path]:
    """Return the files of ``split`` when ``files`` are shuffled by ``seed`` and cut by ``rule``."""
    order = list(files)
    random.Random(seed).shuffle(order)
    n = len(order)
    # cut at the rounded cumulative fractions: 7 files at (0.6, 0.2, 0.2) give 4, 2, 1
    bounds = [0, round(rule[0] * n), round((rule[0] + rule[1]) * n), n]
    k = _ORDER.index(split)
    chosen = sorted(order[bounds[k] : bounds[k + 1]])
    if not chosen:
        counts = ", ".join(f"{s} {bounds[i + 1] - bounds[i]}" for i, s in enumerate(_ORDER))
        raise ValueError(
            f"split_by_file={tuple(round(f, 4) for f in rule)} over {n} files gives the {split} "
            f"split no file ({counts}): add files or change the fractions"
        )
    return chosen


def split_files(
    root: str | os.PathLike[str],
    challenge: str,
    split: str,
    split_by_file: Sequence[float] | None = None,
    split_seed: int = 0,
) -> list[Path]:
    """Return the ``.h5`` files of ``split`` under ``root``.

    ``root`` is a folder of split folders, a flat folder with ``split_by_file``, or one file
    (the ``test`` split only).

    Raises
    ------
    ValueError
        A missing root; a flat folder without ``split_by_file`` (the message names the expected
        layout); a folder with split folders *and* a rule; a single file asked for the train or
        val split; a split with no file.
    """
    split = check_split(split)
    rule = check_split_rule(split_by_file)
    seed = nonnegative_int("split_seed", split_seed)
    base = Path(root)
    if not base.exists():
        raise ValueError(f"root={str(root)!r} does not exist: pass a fastMRI .h5 file or folder")
    if base.is_file():
        if split != "test" or rule is not None:
            raise ValueError(
                f"root={str(root)!r} is one file (one volume): it can be reconstructed or "
                f"scored as the test split, not split into train/val/test; pass {LAYOUT}"
            )
        return [base]
    folder = _split_folder(base, challenge, split)
    if folder is not None:
        if rule is not None:
            raise ValueError(
                f"root={str(root)!r} already holds split folders ({folder.name}/): drop "
                "split_by_file, or pass a flat folder of .h5 files"
            )
        files = _h5_files(folder)
        if not files:
            raise ValueError(f"{folder}: no .h5 files in the {split} folder")
        return files
    others = [s for s in _ORDER if _split_folder(base, challenge, s) is not None]
    if others:
        raise ValueError(
            f"root={str(root)!r} has {', '.join(o + '/' for o in others)} but no {split}/ (or "
            f"{challenge}_{split}/) folder: add it, or pass {LAYOUT}"
        )
    files = _h5_files(base)
    if rule is None:
        what = f"{len(files)} .h5 files" if files else "no split folders"
        raise ValueError(
            f"root={str(root)!r} is a flat folder ({what}) without a split rule: pass {LAYOUT}, "
            "or an explicit rule split_by_file=(0.8, 0.1, 0.1) with split_seed (memroll: "
            "--split-by-file 0.8,0.1,0.1 --split-seed S)"
        )
    if not files:
        raise ValueError(f"root={str(root)!r} holds no .h5 files to split")
    return _by_rule(files, rule, seed, split)
