"""Typed options of callables.

A task builder's or a model constructor's keyword arguments, checked against their annotations with
the strict converter of :mod:`._schema`.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import types
from typing import Any, Literal, Union, get_args, get_origin

from ._schema import convert

__all__ = ["check_options"]

_ABSENT = object()


def _union_type(tp: Any) -> Any:
    args = [_config_type(a) for a in get_args(tp)]
    args = [a for a in args if a is not _ABSENT]
    # a dataclass option also accepting "a dict of its fields": validate as the dataclass,
    # so an unknown field is named
    if any(dataclasses.is_dataclass(a) for a in args):
        args = [a for a in args if get_origin(a) is not dict and a is not dict]
    if not [a for a in args if a is not type(None)]:
        return _ABSENT
    return args[0] if len(args) == 1 else Union[tuple(args)]  # noqa: UP007


def _sequence_type(tp: Any, origin: Any) -> Any:
    inner = [_config_type(a) for a in get_args(tp)]
    if any(a is _ABSENT for a in inner):
        return _ABSENT
    if origin is tuple:
        return tuple.__class_getitem__(tuple(inner)) if inner else tuple
    return list.__class_getitem__(inner[0]) if inner else list


def _config_type(tp: Any) -> Any:
    """Return ``tp`` in terms the schema converter reads.

    ``_ABSENT`` when plain data cannot give it (tensors, modules, callables).
    """
    if tp is Any or tp in (bool, int, float, str) or tp is type(None):
        return tp
    origin = get_origin(tp)
    if origin is Literal:
        return tp
    if origin in (Union, types.UnionType):
        return _union_type(tp)
    if origin in (list, tuple, collections.abc.Sequence):
        return _sequence_type(tp, origin)
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
    return convert(value, wanted, key)


def check_options(
    options: dict[str, Any],
    params: dict[str, inspect.Parameter],
    hints: dict[str, Any],
    prefix: str,
    what: str,
) -> dict[str, Any]:
    """``options`` converted to the types ``hints`` declares for the parameters ``params``.

    Parameters
    ----------
    options:
        Option name -> plain value (from a TOML table).
    params, hints:
        The callable's keyword parameters and their annotations.
    prefix:
        The table's dotted prefix in error messages (``"model."``).
    what:
        What takes the options, for error messages (``"MoDL"``, ``"task 'ct'"``).

    Raises
    ------
    ValueError
        An unknown option (listing the valid keys), or a value of the wrong type.
    """
    out: dict[str, Any] = {}
    for name, value in options.items():
        if name not in params:
            raise ValueError(
                f"unknown configuration key {prefix}{name}: {what} has no option {name!r}; valid "
                f"keys here: name, {', '.join(prefix + p for p in params)}"
            )
        out[name] = _convert_option(value, hints.get(name, Any), prefix + name, what)
    return out
