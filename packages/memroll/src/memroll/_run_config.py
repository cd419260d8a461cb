"""The configuration of a run folder, and where a resume starts.

``config.toml``, what ``--fastmri`` adds to it, what a resume may change, the checkpoint it
reads and the line it appends to the header (:mod:`memroll.runs` re-exports the public names).
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any, NamedTuple

from unrolled.training import RunFolder

from ._console import CommandError, note
from .config import RunConfig, load_config

__all__ = [
    "CONFIG_FILE",
    "MRI_TASKS",
    "RESUMABLE",
    "ResumePoint",
    "config_header",
    "resume_config",
    "resume_header",
    "resume_point",
    "with_fastmri",
]

CONFIG_FILE = "config.toml"
MRI_TASKS = ("multicoil_mri", "singlecoil_mri")
# options that may change when a run resumes (unrolled.train checks the training options too)
RESUMABLE = {
    "train.steps",
    "train.val_every",
    "train.checkpoint_every",
    "train.log_every",
    "train.device",
    "train.num_workers",
    "train.progress",
    "train.compile",  # torch.compile of the networks: the same training, another speed
    "task.maps_cache",
    "description",
}


def config_header(path: Path) -> str:
    """Return the header comment of the config file ``path`` (its leading ``#`` lines)."""
    lines = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        if not line.startswith("#"):
            break
        lines.append(line[2:] if line.startswith("# ") else line[1:])
    return "\n".join(lines)


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value and prefix.count(".") < 1:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _check_resumable(saved: RunConfig, new: RunConfig) -> None:
    old, now = _flatten(saved.to_data()), _flatten(new.to_data())
    for key in sorted(set(old) | set(now)):
        if key in RESUMABLE or key.startswith("eval."):
            continue
        if old.get(key) != now.get(key):
            raise CommandError(
                f"cannot resume with {key} changed (the run has {old.get(key)!r}, now "
                f"{now.get(key)!r}): a resumed run continues the same training; only "
                f"{', '.join(sorted(RESUMABLE - {'description'}))} and eval.* may change"
            )


def with_fastmri(overrides: list[str], fastmri: str | None, config: RunConfig | None) -> list[str]:
    """Return ``overrides`` plus ``task.root=FASTMRI`` (``--fastmri``), checked against the task."""
    if fastmri is None:
        return overrides
    if config is not None and config.task.name not in MRI_TASKS:
        raise CommandError(
            f"--fastmri reads fastMRI files, which only the MRI tasks ({', '.join(MRI_TASKS)}) "
            f"take; this config's task is {config.task.name!r} (it runs on the embedded "
            "real-anatomy data)"
        )
    if not Path(fastmri).exists():
        raise CommandError(f"--fastmri {fastmri!r} does not exist: give a .h5 file or a folder")
    return [*overrides, f"task.root={json.dumps(str(fastmri))}"]


class ResumePoint(NamedTuple):
    """Where a run resumes: the checkpoint's step, its file, and why newer files were skipped."""

    step: int
    file: str
    unusable: list[str]


def resume_point(run: Path) -> ResumePoint:
    """Read the run's newest usable checkpoint (weights only) and say where it resumes.

    Falls back from a ``checkpoint.pt`` that cannot be used to ``checkpoint.prev.pt`` and says
    so on stderr.

    Raises
    ------
    CommandError
        ``run`` is no run folder, or has no checkpoint yet.
    unrolled.RunFileError
        No checkpoint can be used (naming each file and why).
    """
    if not (run / CONFIG_FILE).is_file():
        raise CommandError(
            f"--resume {str(run)!r}: no {CONFIG_FILE} there; is it a run folder of memroll train?"
        )
    folder = RunFolder(run, create=False)
    if not folder.has_checkpoint():
        raise CommandError(
            f"--resume {str(run)!r}: the run has no checkpoint.pt yet (it stopped before "
            "its first checkpoint); start it again with memroll train CONFIG --run-dir"
        )
    step = int(folder.read_checkpoint()["step"])
    file = folder.read_from.name if folder.read_from is not None else folder.checkpoint.name
    if folder.unusable:
        note(f"{'; '.join(folder.unusable)}: resuming from {file} (step {step}) instead")
    return ResumePoint(step, file, folder.unusable)


def resume_config(
    run: Path,
    overrides: list[str],
    fastmri: str | None,
    strategy: str | None,
    step: int | None = None,
) -> RunConfig:
    """Return the configuration a resumed run continues with (``memroll train --resume``).

    ``step`` is the step it resumes from (default: read by :func:`resume_point`).

    Raises :class:`CommandError` when ``run`` is no run folder with a checkpoint, when an option
    that must not change did (the model, the data, the strategy), or when ``train.steps`` is below
    the checkpoint's step.
    """
    if step is None:
        step = resume_point(run).step
    saved = load_config(run / CONFIG_FILE)
    config = load_config(run / CONFIG_FILE, with_fastmri(overrides, fastmri, saved))
    _check_resumable(saved, config)
    if config.train.steps < step:
        raise CommandError(
            f"cannot resume with train.steps={config.train.steps}: the run is at step {step}; "
            f"pass --set train.steps=N with N >= {step}"
        )
    if strategy is not None and strategy != saved.strategy.name:
        raise CommandError(
            f"cannot resume with --strategy {strategy}: the run trains with {saved.strategy.name!r}"
        )
    return config


def resume_header(point: ResumePoint, command: str) -> str:
    """Return the line a resume appends to the header of ``config.toml``."""
    stamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    skipped = f", {'; '.join(point.unusable)}" if point.unusable else ""
    return f"resumed {stamp} at step {point.step} from {point.file}{skipped}: {command}"
