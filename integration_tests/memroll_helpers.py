"""Helpers of the integration tests: the ``memroll`` command, tiny versions of the shipped
configs, and fastMRI-format files written by the tests themselves (a module of its own name:
``conftest`` is taken by every test folder).

The command runs as a user runs it: the installed ``memroll`` console script in a fresh process
(``python -m memroll`` where the packages are on ``PYTHONPATH`` but not installed, as in the GPU
lane), with one thread.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import numpy as np
import pytest
import torch

import physops

# ``--set`` overrides that shrink each shipped config to a few seconds of training (the keys
# differ per model). A new shipped config needs an entry here: test_configs checks that.
COMMON = (
    "train.steps=2",
    "train.batch_size=1",
    "train.val_every=2",
    "train.checkpoint_every=2",
    "train.val_samples=1",
    "eval.samples=1",
    "eval.figure_samples=1",
)
_MODL = ("task.image_size=16", "task.num_coils=4", "model.iterations=2", "model.features=4")
_LUSER = (
    "task.image_size=16",
    "model.iterations=2",
    "model.features=8",
    "model.groups=4",
    'model.solver={tol = 1e-3, max_iter = 10, on_failure = "ignore"}',
)
TINY: dict[str, tuple[str, ...]] = {
    "demo": (*_MODL, "model.cg_max_iter=5", "eval.cs_iterations=3"),
    "gleam_modl_2d": (*_MODL, "model.cg_max_iter=5", "eval.cs_iterations=3"),
    "gleam_pgd_2d": (*_MODL, "task.acceleration=4.0", "eval.cs_iterations=3"),
    "mel_modl": (*_MODL, "eval.cs_iterations=3"),
    "mel_fpm": ("task.image_size=16", "model.iterations=2", "model.num_measurements=2"),
    "luser_deblur": _LUSER,
    "deq4ip_deblur": (
        "task.image_size=16",
        "model.features=8",
        "model.depth=4",
        'model.solver={method = "anderson", tol = 1e-3, max_iter = 10, on_failure = "ignore"}',
        "pretrain.steps=2",
        "pretrain.batch_size=1",
    ),
    "luser_ct": (*_LUSER, "task.num_angles=60", "task.keep_angles=12"),
    "luser_mri": _LUSER,
    "irim_2d": (
        "task.image_size=16",
        "model.steps=2",
        "model.channels=8",
        "model.blocks=2",
        "model.hidden=4",
    ),
    "irim_3d": (
        "task.image_size=16",
        "model.steps=1",
        "model.channels=8",
        "model.blocks=2",
        "model.hidden=4",
    ),
}


def tiny(name: str, *extra: str) -> list[str]:
    """``--set`` arguments that shrink the shipped config ``name``."""
    return [arg for value in (*COMMON, *TINY[name], *extra) for arg in ("--set", value)]


def memroll_command() -> list[str]:
    """The ``memroll`` console script of this interpreter's installed ``memroll``, else
    ``python -m memroll`` (sources on ``PYTHONPATH``, or another distribution's script on the
    ``PATH``)."""
    try:
        entry = {e.name: e.value for e in distribution("memroll").entry_points}.get("memroll")
    except PackageNotFoundError:
        entry = None
    script = shutil.which("memroll", path=str(Path(sys.executable).parent))
    if entry == "memroll.cli:main" and script:
        return [script]
    return [sys.executable, "-m", "memroll"]


def memroll(
    *args: str | os.PathLike[str], expect: int = 0, timeout: float = 300, env: dict | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``memroll --threads 1 ARGS`` in a fresh process; fail with its output unless it
    exits with ``expect``."""
    done = subprocess.run(
        [*memroll_command(), "--threads", "1", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=None if env is None else {**os.environ, **env},
        check=False,
    )
    if done.returncode != expect:
        pytest.fail(
            f"memroll {' '.join(map(str, args))} exited with {done.returncode}, expected "
            f"{expect}\n--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}"
        )
    return done


HEADER = (
    '<?xml version="1.0" encoding="utf-8"?>'
    '<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"><encoding>'
    "<encodedSpace><matrixSize><x>{x}</x><y>{n}</y><z>1</z></matrixSize></encodedSpace>"
    "<reconSpace><matrixSize><x>{n}</x><y>{n}</y><z>1</z></matrixSize></reconSpace>"
    "<encodingLimits><kspace_encoding_step_1><minimum>0</minimum><maximum>{m}</maximum>"
    "<center>{c}</center></kspace_encoding_step_1></encodingLimits></encoding></ismrmrdHeader>"
)


def write_fastmri(
    path: Path,
    challenge: str,
    *,
    split: str = "test",
    size: int = 16,
    slices: int = 2,
    coils: int = 4,
    mask: bool = False,
) -> torch.Tensor:
    """A fastMRI-format file (the layout of fastmri.org's data) of real-anatomy slices.

    k-space of ``slices`` slices of the embedded anatomy with a smooth phase, the readout
    oversampled twice as in fastMRI's raw data, ``coils`` birdcage coils for ``multicoil``, the
    ISMRMRD header with the matrix sizes, and the target (``reconstruction_rss`` /
    ``reconstruction_esc``), or with ``mask=True`` an undersampling mask and no target, like
    fastMRI's test files. Returns the complex images.
    """
    import h5py

    magnitude = physops.real_anatomy_images(split, image_size=size)[:slices]
    phase = physops.smooth_phase((size, size), generator=torch.Generator().manual_seed(1))
    images = magnitude.to(torch.complex64) * torch.exp(1j * phase.to(torch.float32))
    padded = torch.nn.functional.pad(images, (0, 0, size // 2, size // 2))  # readout x 2
    if challenge == "multicoil":
        maps = physops.birdcage_maps((2 * size, size), coils)
        kspace = physops.fftc(maps[None] * padded[:, None])
    else:
        kspace = physops.fftc(padded)
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=kspace.numpy().astype(np.complex64))
        header = HEADER.format(x=2 * size, n=size, m=size - 1, c=size // 2)
        f.create_dataset("ismrmrd_header", data=np.bytes_(header.encode()))
        f.attrs["acquisition"] = "AXT2"
        if mask:
            f.create_dataset("mask", data=(np.arange(size) % 3 == 0).astype(np.float32))
        else:
            key = "reconstruction_rss" if challenge == "multicoil" else "reconstruction_esc"
            f.create_dataset(key, data=magnitude.numpy().astype(np.float32))
    return images
