"""Run configurations: TOML files that say what ``memroll train`` trains, validated strictly.

The schema (:class:`RunConfig` and its tables), the one model registry (:data:`MODELS`), reading
(:func:`load_config`, with ``--set`` overrides) and writing (:func:`dump_config`) of config files,
the shipped configs (:func:`shipped_configs`), and what a config builds (:func:`make_task`,
:func:`build_model`). See :mod:`memroll.config._run` for the tables and their keys.
"""

from ._registry import MODELS, ModelEntry, get_model_entry, new_model
from ._run import (
    EvalConfig,
    ModelConfig,
    PretrainConfig,
    RunConfig,
    StrategyConfig,
    TaskConfig,
    build_model,
    config_from_data,
    config_path,
    dump_config,
    load_config,
    make_task,
    shipped_configs,
)
from ._schema import from_dict, parse_value, set_dotted, to_dict
from ._toml import dump_toml, toml_module

__all__ = [
    "MODELS",
    "EvalConfig",
    "ModelConfig",
    "ModelEntry",
    "PretrainConfig",
    "RunConfig",
    "StrategyConfig",
    "TaskConfig",
    "build_model",
    "config_from_data",
    "config_path",
    "dump_config",
    "dump_toml",
    "from_dict",
    "get_model_entry",
    "load_config",
    "make_task",
    "new_model",
    "parse_value",
    "set_dotted",
    "shipped_configs",
    "to_dict",
    "toml_module",
]
