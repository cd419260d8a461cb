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
``[pretrain]``   :class:`PretrainConfig`: DEQ4IP's denoiser pretraining of a ``DEQ``'s prox
                 (:func:`unrolled.pretrain_denoiser`) before training (``steps = 0``: none).
===============  ==============================================================================

``--set key=value`` assigns a dotted key before validation (``--set model.iterations=4``,
``--set train.lr=1e-3``, ``--set task.root="/data/knee"``); the value is read as TOML, and a
bare word that is not TOML is a string.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_type_hints

import torch

import unrolled

from .._console import CommandError, input_errors
from ._options import check_options
from ._registry import get_model_entry, new_model
from ._schema import from_dict, set_dotted, to_dict
from ._toml import dump_toml, toml_module

__all__ = [
    "EvalConfig",
    "ModelConfig",
    "PretrainConfig",
    "RunConfig",
    "StrategyConfig",
    "TaskConfig",
    "build_model",
    "config_from_data",
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
# the schema
# ------------------------------------------------------------------------------------------------
@dataclass
class TaskConfig:
    """``[task]``.

    The task's registered name and its options (as :func:`make_dataset` takes them).
    """

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        try:
            spec = unrolled.get_task(self.name)
        except ValueError as err:
            raise ValueError(f"task.name: {err}") from None
        params = inspect.signature(spec.build).parameters
        keywords = {n: p for n, p in params.items() if p.kind is p.KEYWORD_ONLY}
        self.options = check_options(
            self.options, keywords, get_type_hints(spec.build), "task.", f"task {self.name!r}"
        )


@dataclass
class ModelConfig:
    """``[model]``: a model of :data:`MODELS` and its constructor's arguments."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        entry = get_model_entry(self.name)
        self.options = check_options(
            self.options, entry.parameters(), entry.hints(), "model.", self.name
        )


@dataclass
class StrategyConfig:
    """``[strategy]``: the default strategy and the options each strategy uses when chosen."""

    name: unrolled.StrategyName = "backprop"
    backprop: dict[str, Any] = field(default_factory=dict)
    checkpoint: dict[str, Any] = field(default_factory=dict)
    reversible: dict[str, Any] = field(default_factory=dict)
    greedy: dict[str, Any] = field(default_factory=dict)
    implicit: dict[str, Any] = field(default_factory=dict)

    def resolve(self, name: str | None = None) -> unrolled.Strategy:
        """Return the :class:`unrolled.Strategy` ``name`` with its options.

        ``name`` defaults to this table's ``name``; the options are those of its
        ``[strategy.<name>]`` table.
        """
        chosen = self.name if name is None else name
        if chosen not in unrolled.STRATEGIES:
            raise ValueError(
                f"unknown strategy {chosen!r}; valid strategies: {', '.join(unrolled.STRATEGIES)}"
            )
        table = dict(getattr(self, chosen))
        prefix = f"strategy.{chosen}."
        if "name" in table:
            raise ValueError(
                f"unknown configuration key {prefix}name: the table's name is the strategy"
            )
        try:
            return from_dict(unrolled.Strategy, {"name": chosen, **table}, prefix=prefix)
        except ValueError as err:
            message = str(err)
            if message.startswith(("unknown configuration key", prefix)):
                raise
            raise ValueError(f"{prefix.rstrip('.')}: {message}") from None

    def validate(self) -> None:
        for name in unrolled.STRATEGIES:
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
class PretrainConfig:
    """``[pretrain]``: pretrain a DEQ's prox as a denoiser before training (Gilton et al.).

    :func:`build_model` runs :func:`unrolled.pretrain_denoiser` on the training split with these
    settings and the run's ``train.seed``, when ``steps > 0`` (a ``DEQ`` only). A resumed run
    pretrains again and then loads its checkpoint over it.

    Attributes
    ----------
    steps:
        Adam steps of the denoiser (0: no pretraining).
    batch_size, lr:
        Images per step and learning rate.
    noise:
        Standard deviation of the Gaussian noise added to the training targets.
    """

    steps: int = 0
    batch_size: int = 4
    lr: float = 1e-3
    noise: float = 0.05

    def validate(self) -> None:
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            low = 0 if name == "steps" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                kind = "an integer >= 0" if low == 0 else "a positive integer"
                raise ValueError(f"pretrain.{name} must be {kind}, got {value!r}")
        for name in ("lr", "noise"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"pretrain.{name} must be a number > 0, got {value!r}")


@dataclass
class RunConfig:
    """A whole configuration (see the module docstring for the tables)."""

    name: str
    task: TaskConfig
    model: ModelConfig
    description: str = ""
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    train: unrolled.TrainOptions = field(default_factory=unrolled.TrainOptions)
    eval: EvalConfig = field(default_factory=EvalConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)

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
        self.pretrain.validate()
        if self.pretrain.steps and self.model.name != "DEQ":
            raise ValueError(
                f"pretrain.steps={self.pretrain.steps}: denoiser pretraining is for the DEQ "
                f"model (DEQ4IP), not {self.model.name}; remove the [pretrain] table"
            )

    def to_data(self) -> dict[str, Any]:
        """Return the configuration as the plain data of its TOML file (without ``None``)."""
        train = {k: v for k, v in to_dict(self.train).items() if k not in _CLI_ONLY}
        strategy: dict[str, Any] = {"name": self.strategy.name}
        for name in unrolled.STRATEGIES:
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
            "eval": to_dict(self.eval),
        }
        if self.pretrain.steps:
            data["pretrain"] = to_dict(self.pretrain)
        return _drop_none(to_dict(data))


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
    config = from_dict(RunConfig, data)
    config.validate()
    return config


# ------------------------------------------------------------------------------------------------
# files
# ------------------------------------------------------------------------------------------------
def shipped_configs() -> dict[str, Path]:
    """Return the configurations that ship with the package, by name (file stem)."""
    folder = resources.files("memroll") / "configs"
    return {
        Path(entry.name).stem: Path(str(entry))
        for entry in sorted(folder.iterdir(), key=lambda e: e.name)
        if entry.name.endswith(".toml")
    }


def config_path(source: str | Path) -> Path:
    """Return a config file: an existing path, or a shipped config's name (``gleam_modl_2d``)."""
    path = Path(source)
    if path.is_file():
        return path
    shipped = shipped_configs()
    name = path.stem if path.suffix == ".toml" and len(path.parts) == 1 else str(source)
    if name in shipped:
        return shipped[name]
    raise CommandError(
        f"no config file {str(source)!r}: give a path to a TOML file or the name of a shipped "
        f"config ({', '.join(shipped)}); `memroll configs` lists them"
    )


def load_config(source: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a TOML configuration, apply ``--set`` style ``overrides``, and validate it.

    ``source`` is a path or a shipped config's name; ``overrides`` are ``"model.iterations=4"``
    assignments.
    """
    with input_errors():  # a CommandError (a ValueError) naming the problem
        path = config_path(source)
        tomllib = toml_module()
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"{path}: not valid TOML ({err})") from None
        except UnicodeDecodeError:
            raise ValueError(f"{path}: not a text file (a TOML config is text)") from None
        for assignment in overrides:
            set_dotted(data, assignment)
        try:
            return config_from_data(data)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None


def dump_config(config: RunConfig, header: str = "") -> str:
    """Return the configuration as TOML that :func:`load_config` reads back to an equal one."""
    return dump_toml(config.to_data(), header)


# ------------------------------------------------------------------------------------------------
# building what a configuration describes
# ------------------------------------------------------------------------------------------------
def make_task(config: RunConfig, split: str, **overrides: Any) -> unrolled.TaskDataset:
    """Return the ``split`` of the configuration's task (``overrides`` replace task options)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    with input_errors():  # the task's refusal of an option is the config's problem
        options = {**config.task.options, **overrides}
        return unrolled.make_dataset(config.task.name, split, **options)


def build_model(
    config: RunConfig, data: unrolled.TaskDataset, pretrain: bool | None = None
) -> unrolled.UnrolledModel:
    """Return the configuration's model for images of ``data``'s type.

    It is initialised from ``train.seed``: the same seed gives the same initial weights. With a
    ``[pretrain]`` table (``steps > 0``) its prox is then pretrained as a denoiser on ``data``
    (:func:`unrolled.pretrain_denoiser`): when ``pretrain`` says so, or, by default, when ``data``
    is a training split (a model built to load weights into, for eval or recon, is not).
    """
    torch.manual_seed(config.train.seed)
    with input_errors():  # the model's refusal of an option is the config's problem
        model = new_model(config.model.name, config.model.options, data)
    if pretrain is None:
        pretrain = getattr(data, "split", None) == "train"
    settings = config.pretrain
    if pretrain and settings.steps and isinstance(model, unrolled.DEQ):
        unrolled.pretrain_denoiser(
            model, data, steps=settings.steps, batch_size=settings.batch_size,
            noise=settings.noise, lr=settings.lr, seed=config.train.seed,
        )  # fmt: skip
    return model
