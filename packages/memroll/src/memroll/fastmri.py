"""fastMRI volumes in the application: reconstruction per volume, submission files, fastMRI scores.

What ``memroll recon`` and ``memroll eval`` do with fastMRI data
(:class:`unrolled.tasks.FastMRITask`):

* :func:`reconstruct_volume`: every slice of one file through a model, as magnitude images in the
  file's own units, cropped to the header's reconstruction matrix (fastMRI's submission size);
* :func:`write_submission`: fastMRI's submission layout, key ``reconstruction``, float32
  ``(slices, h, w)``, written atomically;
* :func:`score_volumes`: :func:`unrolled.fastmri_metrics` (NMSE, PSNR, SSIM with the target
  volume's maximum as data range, on fastMRI's centre crop) of every volume against the file's
  ``reconstruction_rss`` (``reconstruction_esc`` single-coil), and their mean.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

import unrolled
from unrolled.training import atomic_path

from ._console import CommandError, say
from .config import RunConfig, make_task

__all__ = [
    "FASTMRI_METRICS",
    "mean_scores",
    "print_scores",
    "read_reference",
    "recon_dataset",
    "recon_inputs",
    "recon_outputs",
    "reconstruct_volume",
    "score_run_volumes",
    "score_volumes",
    "submission_attrs",
    "write_submission",
]

FASTMRI_METRICS = ("nmse", "psnr", "ssim")


def reconstruct_volume(
    model: nn.Module,
    data: unrolled.tasks.FastMRITask,
    volume: int,
    device: str,
    step: Callable[[int], Any] | None = None,
) -> np.ndarray:
    """Return ``model``'s reconstruction of every slice of ``data.volumes[volume]``.

    Magnitudes in the file's units (each sample's ``scale`` undone), cropped to the header's
    reconstruction matrix: float32 ``(slices, h, w)``. ``step(1)`` is called after each slice.
    """
    images = []
    for index in data.volume_items(volume):
        sample = data[index]
        batch = data.collate([sample]).to(device)
        with torch.no_grad():
            x_hat = model(batch.y, batch.physics, batch.x0)
        magnitude = (x_hat.abs() if x_hat.is_complex() else x_hat)[0] / float(sample["scale"])
        images.append(data.output_image(index, magnitude.to(torch.float32).cpu()).numpy())
        if step is not None:
            step(1)
    return np.stack(images)


def write_submission(
    path: str | os.PathLike[str], reconstruction: np.ndarray, attrs: dict[str, Any]
) -> Path:
    """Write fastMRI's submission layout: ``reconstruction`` float32 ``(slices, h, w)``, atomically.

    ``attrs`` become the file's attributes (the run, the model, how the file was sampled).
    """
    import h5py

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("reconstruction", data=np.asarray(reconstruction, dtype=np.float32))
        f.attrs.update(attrs)
    return out


def read_reference(path: Path, key: str) -> np.ndarray:
    """Return the reference volume ``key`` (``reconstruction_rss``) of a fastMRI file."""
    import h5py

    with h5py.File(path, "r") as f:
        return np.asarray(f[key][()], dtype=np.float64)


def score_volumes(
    data: unrolled.tasks.FastMRITask,
    reconstructions: Sequence[tuple[int, np.ndarray]],
) -> list[dict[str, Any]]:
    """Return fastMRI's metrics of each ``(volume, reconstruction)`` against its reference.

    One row per volume: ``file``, ``slices``, ``scored`` (the image size scored) and
    :data:`FASTMRI_METRICS`, on fastMRI's centre crop of the target's width. A model that sees
    a smaller ``image_size`` than the reference is scored on the common centre. Empty when the
    files have no reference (``data.reference_key``).
    """
    key = data.reference_key
    if key is None:
        return []
    rows = []
    for volume, recon in reconstructions:
        info = data.volumes[volume]
        target = read_reference(info.path, key)
        common = (min(target.shape[-2], recon.shape[-2]), min(target.shape[-1], recon.shape[-1]))
        target = unrolled.fastmri_center_crop(target, common)
        recon = unrolled.fastmri_center_crop(recon, common)
        scores = unrolled.fastmri_metrics(target, recon, crop=common[0] >= common[1])
        rows.append(
            {
                "file": info.path.name,
                "slices": int(recon.shape[0]),
                "scored": [common[1], common[1]] if common[0] >= common[1] else list(common),
                **scores,
            }
        )
    return rows


def mean_scores(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Return the mean of every fastMRI metric over the volumes (fastMRI's summary)."""
    return {m: float(np.mean([r[m] for r in rows])) for m in FASTMRI_METRICS} if rows else {}


def print_scores(rows: Sequence[dict[str, Any]], unscored: Sequence[str], reference: str) -> None:
    """Print fastMRI's metrics per volume and their mean; name the files left unscored."""
    if rows:
        say(f"fastMRI metrics against {reference} (fastMRI's centre crop, per volume):")
        say(f"{'file':<32} {'slices':>6}  {'NMSE':>8}  {'PSNR (dB)':>9}  {'SSIM':>6}")
        for r in rows:
            say(
                f"{r['file']:<32} {r['slices']:>6}  {r['nmse']:8.4f}  {r['psnr']:9.2f}  "
                f"{r['ssim']:.4f}"
            )
        mean = mean_scores(rows)
        label = f"mean over {len(rows)} volume{'s' if len(rows) > 1 else ''}"
        say(f"{label:<39}  {mean['nmse']:8.4f}  {mean['psnr']:9.2f}  {mean['ssim']:.4f}")
    for name in unscored:
        say(f"--evaluate: {name} has no {reference}: not scored")


def recon_inputs(sources: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Return the fastMRI files of ``sources`` (files, and the ``.h5`` files of folders)."""
    files: list[Path] = []
    for source in map(Path, sources):
        if source.is_dir():
            found = sorted(p for p in source.glob("*.h5") if not p.name.startswith("."))
            if not found:
                raise CommandError(f"INPUT folder {str(source)!r} holds no .h5 files")
            files += found
        elif source.is_file():
            files.append(source)
        else:
            raise CommandError(f"INPUT {str(source)!r} is not a file (a fastMRI .h5 file)")
    names = [f.name for f in files]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise CommandError(
            f"two inputs are named {twice[0]!r}: the reconstructions are written under the input "
            "names, so each name may appear once"
        )
    return files


def recon_outputs(files: Sequence[Path], output: str | os.PathLike[str]) -> list[Path]:
    """Return where each input's reconstruction goes.

    ``OUTPUT.h5`` for a single input, else a folder with one file per input, named as the input
    (fastMRI's submission layout). No output may be an input.
    """
    out = Path(output)
    if out.suffix == ".h5" and not out.is_dir():
        if len(files) > 1:
            raise CommandError(
                f"{len(files)} inputs need an output folder, got the file name {str(out)!r}"
            )
        outputs = [out]
    else:
        outputs = [out / f.name for f in files]
    inputs = {f.resolve() for f in files}
    for path in outputs:
        if path.resolve() in inputs:
            raise CommandError(
                "OUTPUT must differ from INPUT (the input file is never overwritten)"
            )
    return outputs


def score_run_volumes(
    model: nn.Module,
    baselines: dict[str, nn.Module],
    data: unrolled.TaskDataset,
    device: str,
    samples: int | None,
) -> dict[str, Any] | None:
    """Return fastMRI's metrics of whole volumes against the files' reference.

    ``None`` unless ``data`` are fastMRI files that hold ``reconstruction_rss`` (or ``_esc``).

    Scores the volumes that hold the first ``samples`` slices (default all), for the model and the
    zero-filled input (CS is left out: it would reconstruct whole volumes again).
    """
    if not isinstance(data, unrolled.tasks.FastMRITask) or data.reference_key is None:
        return None
    n = len(data) if samples is None else min(samples, len(data))
    volumes = [v for v in range(len(data.volumes)) if data.volume_items(v).start < n]
    methods = {"model": model, **{k: m for k, m in baselines.items() if k == "zero-filled"}}
    out: dict[str, Any] = {
        "reference": data.reference_key,
        "crop": "the target's centre (W, W), as fastMRI's evaluation",
    }
    for name, method in methods.items():
        method.to(device).eval()
        recons = [(v, reconstruct_volume(method, data, v, device)) for v in volumes]
        rows = score_volumes(data, recons)
        out[name] = {"volumes": rows, "mean": mean_scores(rows)}
    return out


def recon_dataset(
    config: RunConfig, src: Path, image_size: int | None, cache: str | None
) -> unrolled.tasks.FastMRITask:
    """Return the file ``src`` read as the run's task reads fastMRI data (its test split)."""
    options: dict[str, Any] = {"root": str(src), "image_size": image_size}
    if config.task.options.get("mask") not in (None, "random", "equispaced"):
        options["mask"] = None  # 2D masks of the embedded data: fastMRI files take 1D columns
    if cache is not None and config.task.name == "multicoil_mri":
        options["maps_cache"] = cache
    for key in ("split_by_file", "split_seed"):  # one file is its own test split
        options[key] = unrolled.tasks.FASTMRI_OPTIONS[key]
    return cast(unrolled.tasks.FastMRITask, make_task(config, "test", **options))


def submission_attrs(
    config: RunConfig, run: Path, weights: Path, src: Path, data: unrolled.tasks.FastMRITask
) -> dict[str, Any]:
    """Return the attributes of a submission file: the run, the model, how it was sampled."""
    attrs: dict[str, Any] = {
        "memroll_run": str(run),
        "memroll_config": config.name,
        "model": config.model.name,
        "weights": weights.name,
        "source": str(src),
        "retrospective_undersampling": bool(data.has_target),
        "recon_matrix": list(data.volumes[0].output),
    }
    if data.has_target:
        attrs["acceleration"] = float(data.options["acceleration"])
    return attrs
