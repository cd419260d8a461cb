"""Run configurations: TOML files that say what ``memroll train`` trains, validated strictly.

A configuration has six tables; every key is checked when the file is read, so an unknown key
or a value of the wrong type is an error naming its dotted key (``model.iterations: expected
int, got '8' (str)``), before any data is made or any model is built.

===============  ==============================================================================
table            keys
===============  ==============================================================================
(top level)      ``name`` (the run's name, required), ``description``
``[task]``       ``name``: a task of :data:`unrolled.TASKS` (``multicoil_mri``, ``ct``, ...);
                 every other key is an option of that task (:func:`unrolled.make_dataset`), typed
                 as the task's function declares it. ``root = "/data/fastmri"`` reads the user's
                 fastMRI files instead of the embedded real anatomy (MRI tasks).
``[model]``      ``name``: a model of :data:`MODELS` (``MoDL``, ``IRIM``, ...); every other key is
                 an argument of that model's constructor, typed as it declares it. The image type
                 (``complex``, ``dims``; FPM's geometry) comes from the task.
``[strategy]``   ``name``: the default memory strategy (``memroll train --strategy`` overrides
                 it); sub-tables ``[strategy.checkpoint]``, ``[strategy.reversible]``,
                 ``[strategy.greedy]``, ``[strategy.implicit]`` hold the options each strategy
                 uses when it is chosen (fields of :class:`unrolled.Strategy`).
``[train]``      fields of :class:`unrolled.TrainOptions` (``steps``, ``batch_size``, ``lr``, ...),
                 except ``run_dir`` and ``resume`` (command-line options) and
                 ``strategy_options`` (the ``[strategy.*]`` tables).
``[eval]``       :class:`EvalConfig`: the split ``memroll eval`` scores, the figure, the optional
                 compressed-sensing baseline.
===============  ==============================================================================

``--set key=value`` assigns a dotted key before validation (``--set model.iterations=4``,
``--set train.lr=1e-3``, ``--set task.root="/data/knee"``); the value is read as TOML, and a
bare word that is not TOML is a string.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import json
import math
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import torch
from torch import nn

from . import _schema
from ._base import UnrolledModel
from ._deq import DEQ
from ._fpm import FPMNet
from ._irim import IRIM
from ._luser import LUSER
from ._modl import MoDL, UnrolledPGD, lu_dncnn
from ._options import TrainOptions
from ._rim import RIM
from ._strategy import STRATEGIES, Strategy, StrategyName
from ._tasks import TaskDataset, get_task

__all__ = [
    "MODELS",
    "EvalConfig",
    "ModelConfig",
    "ModelEntry",
    "RunConfig",
    "StrategyConfig",
    "TaskConfig",
    "build_model",
    "config_path",
    "dump_config",
    "load_config",
    "make_task",
    "shipped_configs",
]

SPLITS = ("train", "val", "test")
# TrainOptions fields a config file may not set: the command line sets them
_CLI_ONLY = {
    "run_dir": "the run folder is chosen on the command line: memroll train CONFIG --run-dir DIR",
    "resume": "resume a run with: memroll train --resume RUN_DIR",
    "strategy_options": (
        "strategy options go in the [strategy.<name>] tables, e.g. [strategy.greedy] modules = 4"
    ),
}


# ------------------------------------------------------------------------------------------------
# the models a config can name
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelEntry:
    """A model a configuration can name: its builder, whose signature gives the options.

    ``build(**task_kwargs, **options)`` returns the model; ``signature`` is the callable whose
    parameters are the valid options and their types (the model class itself, or for a factory
    such as :func:`unrolled.lu_dncnn` the class it forwards its keyword arguments to).
    """

    name: str
    build: Callable[..., UnrolledModel]
    signature: Callable[..., Any]
    summary: str

    def parameters(self) -> dict[str, inspect.Parameter]:
        """The constructor's keyword parameters by name (``self`` and ``**kwargs`` left out)."""
        target = self.signature
        params = inspect.signature(target).parameters
        return {
            name: p
            for name, p in params.items()
            if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        }

    def hints(self) -> dict[str, Any]:
        target: Any = self.signature
        if isinstance(target, type):
            target = vars(target)["__init__"]  # every model class defines its own
        return get_type_hints(target)


MODELS: dict[str, ModelEntry] = {
    entry.name: entry
    for entry in (
        ModelEntry("MoDL", MoDL, MoDL, "MoDL: learned regulariser and CG data consistency"),
        ModelEntry("UnrolledPGD", UnrolledPGD, UnrolledPGD, "unrolled proximal gradient descent"),
        ModelEntry(
            "lu_dncnn", lu_dncnn, UnrolledPGD, "LU-DnCNN: unrolled PGD with one shared DnCNN"
        ),
        ModelEntry("RIM", RIM, RIM, "recurrent inference machine"),
        ModelEntry("IRIM", IRIM, IRIM, "invertible recurrent inference machine (i-RIM)"),
        ModelEntry("LUSER", LUSER, LUSER, "loop-unrolled shallow equilibrium regulariser"),
        ModelEntry("DEQ", DEQ, DEQ, "DEQ4IP: the whole iteration as one equilibrium"),
        ModelEntry("FPMNet", FPMNet, FPMNet, "Fourier ptychography with a learned LED design"),
    )
}


def get_model_entry(name: str) -> ModelEntry:
    """The entry of :data:`MODELS` called ``name``; an unknown name lists the valid ones."""
    if name not in MODELS:
        raise ValueError(f"model.name: unknown model {name!r}; valid models: {', '.join(MODELS)}")
    return MODELS[name]


# ------------------------------------------------------------------------------------------------
# typed options of callables (task builders, model constructors)
# ------------------------------------------------------------------------------------------------
_ABSENT = object()


def _config_type(tp: Any) -> Any:
    """``tp`` in terms the schema converter reads, or ``_ABSENT`` when plain data cannot give it
    (tensors, modules, callables)."""
    if tp is Any or tp in (bool, int, float, str) or tp is type(None):
        return tp
    origin = get_origin(tp)
    if origin is Literal:
        return tp
    if origin in (Union, types.UnionType):
        args = [_config_type(a) for a in get_args(tp)]
        args = [a for a in args if a is not _ABSENT]
        # a dataclass option also accepting "a dict of its fields": validate as the dataclass,
        # so an unknown field is named
        if any(dataclasses.is_dataclass(a) for a in args):
            args = [a for a in args if get_origin(a) is not dict and a is not dict]
        if not [a for a in args if a is not type(None)]:
            return _ABSENT
        return args[0] if len(args) == 1 else Union[tuple(args)]  # noqa: UP007
    if origin in (list, tuple, collections.abc.Sequence):
        inner = [_config_type(a) for a in get_args(tp)]
        if any(a is _ABSENT for a in inner):
            return _ABSENT
        if origin is tuple:
            return tuple.__class_getitem__(tuple(inner)) if inner else tuple
        return list.__class_getitem__(inner[0]) if inner else list
    if origin is dict or tp is dict:
        return dict[str, Any]
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return tp
    return _ABSENT


def _convert_option(value: Any, tp: Any, key: str, what: str) -> Any:
    """Convert one option value (``key`` is its dotted config key) to its declared type."""
    wanted = _config_type(tp)
    if wanted is _ABSENT:
        raise ValueError(f"{key}: {what} takes a {tp!r}, which a config file cannot give")
    if get_origin(wanted) in (Union, types.UnionType):
        non_none = [a for a in get_args(wanted) if a is not type(None)]
        if value is None and len(non_none) < len(get_args(wanted)):
            return None
        if len(non_none) == 1:  # X | None: convert as X, so its own error is kept
            wanted = non_none[0]
    return _schema._convert(value, wanted, key)


def _check_options(
    options: dict[str, Any],
    params: dict[str, inspect.Parameter],
    hints: dict[str, Any],
    prefix: str,
    what: str,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in options.items():
        if name not in params:
            raise ValueError(
                f"unknown configuration key {prefix}{name}: {what} has no option {name!r}; valid "
                f"keys here: name, {', '.join(prefix + p for p in params)}"
            )
        out[name] = _convert_option(value, hints.get(name, Any), prefix + name, what)
    return out


# ------------------------------------------------------------------------------------------------
# the schema
# ------------------------------------------------------------------------------------------------
@dataclass
class TaskConfig:
    """``[task]``: the task's registered name and its options (as :func:`make_dataset` takes
    them)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        try:
            spec = get_task(self.name)
        except ValueError as err:
            raise ValueError(f"task.name: {err}") from None
        params = inspect.signature(spec.build).parameters
        keywords = {n: p for n, p in params.items() if p.kind is p.KEYWORD_ONLY}
        self.options = _check_options(
            self.options, keywords, get_type_hints(spec.build), "task.", f"task {self.name!r}"
        )


@dataclass
class ModelConfig:
    """``[model]``: a model of :data:`MODELS` and its constructor's arguments."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        entry = get_model_entry(self.name)
        self.options = _check_options(
            self.options, entry.parameters(), entry.hints(), "model.", self.name
        )


@dataclass
class StrategyConfig:
    """``[strategy]``: the default strategy and the options each strategy uses when chosen."""

    name: StrategyName = "backprop"
    backprop: dict[str, Any] = field(default_factory=dict)
    checkpoint: dict[str, Any] = field(default_factory=dict)
    reversible: dict[str, Any] = field(default_factory=dict)
    greedy: dict[str, Any] = field(default_factory=dict)
    implicit: dict[str, Any] = field(default_factory=dict)

    def resolve(self, name: str | None = None) -> Strategy:
        """The :class:`unrolled.Strategy` ``name`` (default: this table's ``name``) with the
        options of its ``[strategy.<name>]`` table."""
        chosen = self.name if name is None else name
        if chosen not in STRATEGIES:
            raise ValueError(
                f"unknown strategy {chosen!r}; valid strategies: {', '.join(STRATEGIES)}"
            )
        table = dict(getattr(self, chosen))
        prefix = f"strategy.{chosen}."
        if "name" in table:
            raise ValueError(
                f"unknown configuration key {prefix}name: the table's name is the strategy"
            )
        try:
            return _schema.from_dict(Strategy, {"name": chosen, **table}, prefix=prefix)
        except ValueError as err:
            message = str(err)
            if message.startswith(("unknown configuration key", prefix)):
                raise
            raise ValueError(f"{prefix.rstrip('.')}: {message}") from None

    def validate(self) -> None:
        for name in STRATEGIES:
            self.resolve(name)


@dataclass
class EvalConfig:
    """``[eval]``: what ``memroll eval`` (and the end of ``memroll train``) measures.

    Attributes
    ----------
    split:
        The split scored (``"test"``; ``"val"`` or ``"train"`` for a look at over-fitting).
    batch_size:
        Samples per forward pass.
    samples:
        Score the first ``samples`` samples only (default all).
    figure_samples:
        Samples shown in the figure (target, input, reconstruction, error map).
    weights:
        ``"best"``: the best validated model (``best.pt``, lowest validation nRMSE; the final
        checkpoint when there is none); ``"last"``: the final checkpoint.
    cs_lamda, cs_iterations:
        Also score the l1-wavelet compressed-sensing baseline (:func:`unrolled.cs_reconstruct`,
        MRI tasks, needs sigpy) with this weight; ``None`` leaves it out.
    """

    split: Literal["train", "val", "test"] = "test"
    batch_size: int = 1
    samples: int | None = None
    figure_samples: int = 2
    weights: Literal["best", "last"] = "best"
    cs_lamda: float | None = None
    cs_iterations: int = 100

    def validate(self) -> None:
        for name in ("batch_size", "figure_samples", "cs_iterations"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"eval.{name} must be a positive integer, got {value!r}")
        if self.samples is not None and self.samples < 1:
            raise ValueError(f"eval.samples must be a positive integer, got {self.samples!r}")
        if self.cs_lamda is not None and not (math.isfinite(self.cs_lamda) and self.cs_lamda > 0):
            raise ValueError(f"eval.cs_lamda must be a number > 0, got {self.cs_lamda!r}")


@dataclass
class RunConfig:
    """A whole configuration (see the module docstring for the tables)."""

    name: str
    task: TaskConfig
    model: ModelConfig
    description: str = ""
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    train: TrainOptions = field(default_factory=TrainOptions)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> None:
        """Check every table (raises ``ValueError`` naming the first bad key)."""
        if not self.name.strip():
            raise ValueError("name: the run's name must not be empty")
        self.task.validate()
        self.model.validate()
        self.strategy.validate()
        try:
            # the run folder comes from the command line; options needing one are valid here
            dataclasses.replace(self.train, run_dir="run").validate()
        except ValueError as err:
            raise ValueError(f"train: {err}") from None
        self.eval.validate()

    def to_data(self) -> dict[str, Any]:
        """The configuration as the plain data of its TOML file (``None`` values left out)."""
        train = {k: v for k, v in _schema.to_dict(self.train).items() if k not in _CLI_ONLY}
        strategy: dict[str, Any] = {"name": self.strategy.name}
        for name in STRATEGIES:
            table = getattr(self.strategy, name)
            if table:
                strategy[name] = dict(table)
        data = {
            "name": self.name,
            "description": self.description,
            "task": {"name": self.task.name, **self.task.options},
            "model": {"name": self.model.name, **self.model.options},
            "strategy": strategy,
            "train": train,
            "eval": _schema.to_dict(self.eval),
        }
        return _drop_none(_schema.to_dict(data))


def _drop_none(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _drop_none(v) for k, v in data.items() if v is not None}
    return data


def _split_name(table: Any, section: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ValueError(f"{section}: expected a table, got {table!r}")
    if "name" not in table:
        raise ValueError(f"missing required configuration key {section}.name")
    rest = {k: v for k, v in table.items() if k != "name"}
    return {"name": table["name"], "options": rest}


def config_from_data(data: dict[str, Any]) -> RunConfig:
    """Validate plain data (a parsed TOML file) into a :class:`RunConfig`."""
    if not isinstance(data, dict):
        raise ValueError(f"a configuration must be a table, got {type(data).__name__}")
    data = dict(data)
    train = data.get("train", {})
    if isinstance(train, dict):
        for key, why in _CLI_ONLY.items():
            if key in train:
                raise ValueError(f"train.{key} cannot be set in a config file: {why}")
    for section in ("task", "model"):
        if section in data:
            data[section] = _split_name(data[section], section)
    config = _schema.from_dict(RunConfig, data)
    config.validate()
    return config


# ------------------------------------------------------------------------------------------------
# files
# ------------------------------------------------------------------------------------------------
def _toml() -> Any:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef, import-not-found, unused-ignore]
    return tomllib


def shipped_configs() -> dict[str, Path]:
    """The configurations that ship with the package, by name (file stem)."""
    folder = resources.files("unrolled") / "configs"
    return {
        Path(entry.name).stem: Path(str(entry))
        for entry in sorted(folder.iterdir(), key=lambda e: e.name)
        if entry.name.endswith(".toml")
    }


def config_path(source: str | Path) -> Path:
    """A config file: an existing path, or the name of a shipped config (``gleam_modl_2d``)."""
    path = Path(source)
    if path.is_file():
        return path
    shipped = shipped_configs()
    name = path.stem if path.suffix == ".toml" and len(path.parts) == 1 else str(source)
    if name in shipped:
        return shipped[name]
    raise ValueError(
        f"no config file {str(source)!r}: give a path to a TOML file or the name of a shipped "
        f"config ({', '.join(shipped)}); `memroll configs` lists them"
    )


def load_config(source: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a TOML configuration (a path or a shipped config's name), apply ``--set`` style
    ``overrides`` (``"model.iterations=4"``), and validate it."""
    path = config_path(source)
    tomllib = _toml()
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: not valid TOML ({err})") from None
    for assignment in overrides:
        _schema.set_dotted(data, assignment)
    try:
        return config_from_data(data)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def _toml_value(value: Any, key: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v, key) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{_toml_key(k)} = {_toml_value(v, key)}" for k, v in value.items())
        return "{" + items + "}"
    raise ValueError(f"{key}: cannot write {value!r} ({type(value).__name__}) to TOML")


def _toml_key(key: str) -> str:
    bare = key.replace("_", "").replace("-", "").isalnum() and key.isascii()
    return key if bare else json.dumps(key)


def dump_toml(data: dict[str, Any], header: str = "") -> str:
    """Plain data (tables, strings, numbers, booleans, lists) as a TOML document."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]

    def table(node: dict[str, Any], path: list[str]) -> None:
        scalars = {k: v for k, v in node.items() if not _is_table(k, v, path)}
        tables = {k: v for k, v in node.items() if _is_table(k, v, path)}
        if path and (scalars or not tables):
            lines.append("")
            lines.append("[" + ".".join(_toml_key(p) for p in path) + "]")
        for k, v in scalars.items():
            lines.append(f"{_toml_key(k)} = {_toml_value(v, '.'.join([*path, k]))}")
        for k, v in tables.items():
            table(v, [*path, k])

    table(data, [])
    return "\n".join(lines).lstrip("\n") + "\n"


def _is_table(key: str, value: Any, path: list[str]) -> bool:
    # option values that are dicts (a solver's settings) stay inline inside task/model tables
    return isinstance(value, dict) and (not path or path == ["strategy"])


def dump_config(config: RunConfig, header: str = "") -> str:
    """The configuration as a TOML file that :func:`load_config` reads back to an equal one."""
    return dump_toml(config.to_data(), header)


# ------------------------------------------------------------------------------------------------
# building what a configuration describes
# ------------------------------------------------------------------------------------------------
def make_task(config: RunConfig, split: str, **overrides: Any) -> TaskDataset:
    """The ``split`` of the configuration's task (``overrides`` replace task options)."""
    from ._tasks import make_dataset

    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return make_dataset(config.task.name, split, **{**config.task.options, **overrides})


def build_model(config: RunConfig, data: TaskDataset) -> UnrolledModel:
    """The configuration's model for images of ``data``'s type, initialised from
    ``train.seed`` (the same seed gives the same initial weights)."""
    entry = get_model_entry(config.model.name)
    from_task = data.model_kwargs
    clash = sorted(set(from_task) & set(config.model.options))
    if clash:
        raise ValueError(
            f"model.{clash[0]} is set by the task ({config.task.name!r} gives "
            f"{clash[0]}={from_task[clash[0]]!r}): remove it from [model]"
        )
    torch.manual_seed(config.train.seed)
    model = entry.build(**from_task, **config.model.options)
    if not isinstance(model, UnrolledModel):  # pragma: no cover - every entry builds one
        raise TypeError(f"{entry.name} built a {type(model).__name__}, not an UnrolledModel")
    return model


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, each shared tensor counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
