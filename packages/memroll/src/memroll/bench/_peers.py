"""Peers of the benchmark: deepinv's MoDL (issue 7's comparison) and ``torch.utils.checkpoint``.

deepinv imports torchvision at the top of ``deepinv/__init__.py``. Where torchvision cannot be
imported (PyPI's torchvision wheels link ``libc10_cuda.so`` and ``libtorch_cuda.so`` of the CUDA
build of torch, which a CPU-only torch wheel does not have, so ``import torchvision`` fails with
``RuntimeError: operator torchvision::nms does not exist``), :func:`import_deepinv` installs an
import hook that answers every ``torchvision`` import with an inert placeholder module: deepinv
then imports, and any *use* of torchvision raises :class:`TorchvisionUnavailable`. deepinv's MoDL,
DnCNN, ``MultiCoilMRI`` and CG never call torchvision (the benchmark would fail loudly if they
did), so what is measured is deepinv's own code. The hook is installed only in the benchmark's
worker process that measures deepinv, only after the real import failed, and the report says so.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "TorchvisionUnavailable",
    "deepinv_modl",
    "deepinv_physics",
    "import_deepinv",
    "off_device",
]


class TorchvisionUnavailable(RuntimeError):
    """Raised when code calls into the torchvision placeholder."""


class _Missing(type):
    """A placeholder class: attribute access gives more placeholders, calling it raises."""

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return _missing(f"{cls.__qualname__}.{name}")

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise TorchvisionUnavailable(
            f"{cls.__qualname__} was called, but torchvision could not be imported here and is "
            "only a placeholder (see memroll.bench._peers)"
        )


def _missing(qualname: str) -> type:
    return _Missing(qualname.rsplit(".", 1)[-1], (), {"__qualname__": qualname})


class _PlaceholderModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return _missing(f"{self.__name__}.{name}")


class _TorchvisionPlaceholder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers ``import torchvision`` (and its submodules) with placeholder modules."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _PlaceholderModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


def import_deepinv() -> tuple[Any, str | None]:
    """Import deepinv, with a torchvision placeholder where torchvision cannot be imported.

    Returns
    -------
    (module, note)
        deepinv, and ``None`` when torchvision imported normally, else a sentence saying why
        the placeholder was needed (for the report).

    Raises
    ------
    ImportError
        deepinv is not installed, or fails to import even with the placeholder.
    """
    note = None
    try:
        importlib.import_module("torchvision")
    except ImportError as err:  # not installed: deepinv may still import without it
        note = f"torchvision is not installed ({err})"
    except (RuntimeError, OSError) as err:
        note = f"import torchvision fails: {type(err).__name__}: {err}"
        try:
            import ctypes

            spec = importlib.util.find_spec("torchvision")
            if spec is not None and spec.origin is not None:
                from pathlib import Path

                ctypes.CDLL(str(Path(spec.origin).with_name("_C.so")))
        except OSError as why:
            note += f" (its compiled ops do not load: {why})"
        except Exception:  # only a diagnosis for the report, never a failure
            pass
    if note is not None:
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.meta_path.insert(0, _TorchvisionPlaceholder())
    import deepinv

    return deepinv, note


def deepinv_physics(dinv: Any, maps: Tensor, mask: Tensor) -> Any:
    """Build deepinv's ``MultiCoilMRI`` for a physops ``Sense`` problem, on the maps' device.

    The coil maps ``(B, C, H, W)`` and the mask ``(B, H, W)`` are the problem's; both packages use
    the same centred orthonormal FFT. deepinv's physics take a ``device`` argument (default
    ``"cpu"``) and end their constructor with ``self.to(device)``: without it, maps and mask given
    on a GPU are moved back to the CPU and the first training step fails with "Expected all
    tensors to be on the same device" (issue 15). The device is therefore passed explicitly, and
    :func:`off_device` checks the result.
    """
    size = (maps.shape[0], 2, *maps.shape[-2:])
    physics = dinv.physics.MultiCoilMRI(
        mask=mask[:, None], coil_maps=maps, img_size=size, device=maps.device
    )
    return physics.to(maps.device)


def off_device(module: nn.Module, device: torch.device | str) -> list[str]:
    """Return the names of the tensors of ``module`` that are not on ``device``.

    Looks at every parameter and buffer, and at plain tensor attributes of every submodule (which
    ``Module.to`` does not move), so a peer's model or physics can be checked before it is timed.
    """
    want = torch.device(device)

    def same(t: Tensor) -> bool:
        return t.device.type == want.type and (want.index is None or t.device.index == want.index)

    bad = [n for n, t in module.named_parameters() if not same(t)]
    bad += [n for n, t in module.named_buffers() if not same(t)]
    for prefix, sub in module.named_modules():
        for key, value in vars(sub).items():
            plain = isinstance(value, Tensor) and not isinstance(value, nn.Parameter)
            if plain and not same(value):
                bad.append(f"{prefix}.{key}" if prefix else key)
    return bad


class _CheckpointedDenoiser(nn.Module):
    """``torch.utils.checkpoint`` (non-reentrant) around a deepinv denoiser call."""

    def __init__(self, denoiser: nn.Module):
        super().__init__()
        self.denoiser = denoiser

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        if not torch.is_grad_enabled():
            return self.denoiser(x, *args, **kwargs)
        return checkpoint(lambda v: self.denoiser(v, *args, **kwargs), x, use_reentrant=False)


def deepinv_modl(dinv: Any, iterations: int, checkpointed: bool = False) -> nn.Module:
    """Build deepinv's MoDL at its defaults.

    One DnCNN of depth 7 and 64 features shared by all ``iterations``, half-quadratic splitting
    with CG data consistency; ``checkpointed`` wraps the DnCNN in ``torch.utils.checkpoint`` (the
    peer a deepinv user has today).
    """
    model = dinv.models.MoDL(num_iter=iterations)
    if checkpointed:
        for prior in model.prior:
            prior.denoiser = _CheckpointedDenoiser(prior.denoiser)
    return model
