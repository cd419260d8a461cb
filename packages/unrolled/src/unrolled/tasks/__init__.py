r"""The papers' inverse problems as datasets of :class:`~unrolled.Batch`, by name.

A *task* turns physops data into what the models and :func:`unrolled.train` consume: each item
of a :class:`TaskDataset` is a dict of tensors (a *sample*), and its :meth:`TaskDataset.collate`
(usable as a ``DataLoader`` ``collate_fn``, also in worker processes) stacks samples into a
:class:`~unrolled.Batch` ``(y, physics, target, x0)`` with the batch's forward operator.

Tasks (``make_dataset(name, split, **options)``; ``split`` is ``"train"``, ``"val"`` or
``"test"``, the fixed slice splits of :class:`physops.RealAnatomyDataset`)

=================  ====================================  =============================  =========
name               forward model (physics)               data (default)                 x0
=================  ====================================  =============================  =========
``multicoil_mri``  ``physops.Sense(maps, mask)``:         real anatomy, simulated 8-coil  ``None``
                   :math:`y = M F S x + n`                birdcage maps, 2D Poisson disc  (A^H y)
                                                          R = 4 (GLEAM); or the user's
                                                          fastMRI files (``root=``)
``singlecoil_mri`` ``physops.FourierSampling(mask)``:     real anatomy, 1D random          ``None``
                   :math:`y = M F x + n`                  columns R = 4 (LUSER: 4x, 8x);   (A^H y)
                                                          or fastMRI files
``deblur``         ``physops.Blur(gaussian_kernel(9,5))``  real anatomy magnitudes,        ``y``
                   :math:`y = k * x + n`, std 0.01        (LUSER Sec. 4.1)                 (LUSER)
``ct``             ``Radon(N, uniform_angles(1000,        real anatomy magnitudes,         ``None``
                   keep=200)) / sqrt(L)``                 1% relative noise                (A^T y,
                                                                                           LUSER);
                                                                                           or FBP
``mri3d``          ``physops.Sense(maps, mask)``, 3D      real-anatomy slabs ``(D, H, W)``  ``None``
                   FFT, Poisson mask shared over D        (i-RIM 3D, 3D MoDL)
=================  ====================================  =============================  =========

``ptychography`` (Fourier ptychography, MEL; :func:`~unrolled.ptychography`): single-LED images
``(B, L, n, n)`` of complex objects ``(B, N, N)`` made from real slices, ``physics`` the
single-LED acquisition. :func:`register_task` adds users' own tasks.

Every random draw (phase, noise, mask) is seeded by ``(seed, index)``: an item is identical every
time it is read, in any worker process, so training order and resume are deterministic.

Batch shapes (``B`` samples, ``N = image_size``, ``C`` coils, ``D`` slab depth; ``dtype="float64"``
doubles every precision)

=================  ======================  ===================  ========================  ========
task               ``y``                   ``target``           physics operands          ``x0``
=================  ======================  ===================  ========================  ========
``multicoil_mri``  c64 ``(B, C, N, N)``    c64 ``(B, N, N)``    maps c64 ``(B, C, N, N)``, ``None``
                                                                mask f32 ``(B, N, N)``
``singlecoil_mri`` c64 ``(B, N, N)``       c64 ``(B, N, N)``    mask f32 ``(B, N, N)``    ``None``
``deblur``         f32 ``(B, N, N)``       f32 ``(B, N, N)``    kernel f32 ``(9, 9)``     ``y``
``ct``             f32 ``(B, 200, N)``     f32 ``(B, N, N)``    200 angles, ``N`` bins    ``None``
                                                                                          or f32
                                                                                          ``(B, N,
                                                                                          N)``
``mri3d``          c64 ``(B, C, D, N, N)`` c64 ``(B, D, N, N)`` maps c64 ``(B, C, D, N,  ``None``
                                                                N)``, mask f32
                                                                ``(B, D, N, N)``
=================  ======================  ===================  ========================  ========

The CT operator is the Radon transform scaled to norm 1 (:mod:`unrolled.tasks._images`).

The user's fastMRI files (``root=``): the splits are the folders ``train/``, ``val/``, ``test/``
(or fastMRI's ``multicoil_train/`` ...), or an explicit ``split_by_file`` rule over a flat folder
(:func:`split_files`; a flat folder without a rule is refused); multi-coil slices are read from
the coil-map cache, each volume's maps estimated once (:func:`prepare_coil_maps` fills it ahead,
on a GPU if there is one).
"""

from ._coilmaps import (
    CACHE_FOLDER,
    MAP_METHODS,
    MapSettings,
    PreparedVolume,
    Volume,
    prepare_coil_maps,
)
from ._dataset import (
    DTYPES,
    Sample,
    TaskDataset,
    builder_options,
    mri_batch,
    resolve_dtypes,
    seeded_generator,
    stack_samples,
)
from ._fastmri import FASTMRI_OPTIONS, FastMRITask, fastmri_dataset
from ._images import ct, deblur
from ._mri import mri3d, multicoil_mri, singlecoil_mri
from ._ptychography import PtychographyDataset, ptychography
from ._registry import TASKS, TaskSpec, get_task, make_dataset, register_task
from ._splits import LAYOUT, split_files

__all__ = [
    "CACHE_FOLDER",
    "DTYPES",
    "FASTMRI_OPTIONS",
    "LAYOUT",
    "MAP_METHODS",
    "TASKS",
    "FastMRITask",
    "MapSettings",
    "PreparedVolume",
    "PtychographyDataset",
    "Sample",
    "TaskDataset",
    "TaskSpec",
    "Volume",
    "builder_options",
    "ct",
    "deblur",
    "fastmri_dataset",
    "get_task",
    "make_dataset",
    "mri3d",
    "mri_batch",
    "multicoil_mri",
    "prepare_coil_maps",
    "ptychography",
    "register_task",
    "resolve_dtypes",
    "seeded_generator",
    "singlecoil_mri",
    "split_files",
    "stack_samples",
]
