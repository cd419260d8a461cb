"""The one model registry of the application: the models a config (or the benchmark) names.

Every model is looked up here by the name a configuration's ``[model] name`` gives, the
benchmark's specs use the same names, and an unknown name lists the valid ones.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, get_type_hints

import unrolled

__all__ = ["MODELS", "ModelEntry", "get_model_entry", "new_model"]


@dataclass(frozen=True)
class ModelEntry:
    """A model a configuration can name: its builder, whose signature gives the options.

    ``build(**task_kwargs, **options)`` returns the model; ``signature`` is the callable whose
    parameters are the valid options and their types (the model class itself, or for a factory
    such as :func:`unrolled.lu_dncnn` the class it forwards its keyword arguments to).
    """

    name: str
    build: Callable[..., unrolled.UnrolledModel]
    signature: Callable[..., Any]
    summary: str

    def parameters(self) -> dict[str, inspect.Parameter]:
        """Return the constructor's keyword parameters by name (not ``self``, ``**kwargs``)."""
        params = inspect.signature(self.signature).parameters
        return {
            name: p
            for name, p in params.items()
            if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        }

    def hints(self) -> dict[str, Any]:
        """Return the constructor's type annotations by parameter name."""
        target: Any = self.signature
        if isinstance(target, type):
            target = vars(target)["__init__"]  # every model class defines its own
        return get_type_hints(target)


MODELS: dict[str, ModelEntry] = {
    entry.name: entry
    for entry in (
        ModelEntry(
            "MoDL",
            unrolled.MoDL,
            unrolled.MoDL,
            "MoDL: learned regulariser and CG data consistency",
        ),
        ModelEntry(
            "UnrolledPGD",
            unrolled.UnrolledPGD,
            unrolled.UnrolledPGD,
            "unrolled proximal gradient descent",
        ),
        ModelEntry(
            "lu_dncnn",
            unrolled.lu_dncnn,
            unrolled.UnrolledPGD,
            "LU-DnCNN: unrolled PGD with one shared DnCNN",
        ),
        ModelEntry("RIM", unrolled.RIM, unrolled.RIM, "recurrent inference machine"),
        ModelEntry(
            "IRIM", unrolled.IRIM, unrolled.IRIM, "invertible recurrent inference machine (i-RIM)"
        ),
        ModelEntry(
            "LUSER", unrolled.LUSER, unrolled.LUSER, "loop-unrolled shallow equilibrium regulariser"
        ),
        ModelEntry(
            "DEQ", unrolled.DEQ, unrolled.DEQ, "DEQ4IP: the whole iteration as one equilibrium"
        ),
        ModelEntry(
            "FPMNet",
            unrolled.FPMNet,
            unrolled.FPMNet,
            "Fourier ptychography with a learned LED design",
        ),
    )
}


def get_model_entry(name: str, what: str = "model.name: unknown model") -> ModelEntry:
    """Return the entry of :data:`MODELS` called ``name``; an unknown name lists the valid ones.

    ``what`` starts the error message (the config key, or the benchmark's wording).
    """
    if name not in MODELS:
        raise ValueError(f"{what} {name!r}; valid models: {', '.join(MODELS)}")
    return MODELS[name]


def new_model(
    name: str, options: dict[str, Any], data: unrolled.TaskDataset, what: str | None = None
) -> unrolled.UnrolledModel:
    """Return the model ``name`` with ``options`` for images of ``data``'s ``model_kwargs``.

    Raises
    ------
    ValueError
        An unknown model name, or an option the task already sets (``complex``, ``dims``, ...).
    """
    entry = get_model_entry(name) if what is None else get_model_entry(name, what)
    from_task = data.model_kwargs
    clash = sorted(set(from_task) & set(options))
    if clash:
        raise ValueError(
            f"model.{clash[0]} is set by the task ({data.task!r} gives "
            f"{clash[0]}={from_task[clash[0]]!r}): remove it from [model]"
        )
    model = entry.build(**from_task, **options)
    if not isinstance(model, unrolled.UnrolledModel):  # pragma: no cover - every entry builds one
        raise TypeError(f"{entry.name} built a {type(model).__name__}, not an UnrolledModel")
    return model
