"""Config plumbing shared by every stage: YAML loading and strict dict -> frozen dataclass conversion.

Each stage owns its frozen config dataclass (validated in ``__post_init__``); this module turns
user-written mappings into them with one clear line for an unknown key (with the closest valid one), a
wrong type, or a bad value -- never a silent rewrite of the user's option.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import os
import sys
import typing
from pathlib import Path
from typing import Any, Dict, Mapping, Type, TypeVar

from edgexfer.errors import ConfigError

T = TypeVar("T")


def load_yaml(path: "os.PathLike[str] | str") -> Dict[str, Any]:
    """Read a YAML mapping from ``path`` with a clear error for a missing file or bad syntax."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config file '{path}' is not valid YAML{where}: {problem}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file '{path}' is not UTF-8 text") from exc
    if data is None:
        raise ConfigError(f"config file '{path}' is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping (key: value lines), "
                          f"not a {type(data).__name__}")
    return data


def check_keys(data: Mapping[str, Any], valid: typing.Iterable[str], where: str) -> None:
    """Raise ConfigError for the first unknown key, suggesting the closest valid one."""
    valid = list(valid)
    for key in data:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(sorted(valid))}"
            raise ConfigError(f"unknown key '{key}' in {where}; {hint}")


def from_dict(cls: Type[T], data: Mapping[str, Any], where: str) -> T:
    """Build dataclass ``cls`` from ``data``: unknown keys, wrong types and bad values are ConfigErrors."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping of options, not {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    check_keys(data, fields, where)
    hints = typing.get_type_hints(cls, globalns=vars(sys.modules[cls.__module__]))
    values = {}
    for key, value in data.items():
        values[key] = coerce(value, hints.get(key, Any), f"{where}.{key}")
    try:
        return cls(**values)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a type hint; convert only lossless cases (int -> float, list -> tuple)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return coerce(value, option, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    # typing.Sequence[...] / Mapping[...] have collections.abc origins; list/List, dict/Dict the builtins
    if origin in (list, tuple, collections.abc.Sequence):
        return _coerce_sequence(value, origin, args, where)
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a mapping, got {type(value).__name__}")
        key_hint, value_hint = args if args else (Any, Any)
        return {coerce(k, key_hint, f"{where} key {k!r}"): coerce(v, value_hint, f"{where}.{k}")
                for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {type(value).__name__} {value!r}")
        return value
    if hint in (Path, os.PathLike) or (isinstance(hint, type) and issubclass(hint, Path)):
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{where} must be a path string, got {value!r}")
        return Path(value)
    if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
        return from_dict(hint, value, where)
    return value


def _coerce_sequence(value: Any, origin: Any, args: tuple, where: str) -> Any:
    """A list/tuple/Sequence hint: each item checked; Tuple[X, ...], Tuple[X, Y] and Sequence[X] give
    tuples (a config is frozen), List[X] a list."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where} must be a list, got {type(value).__name__} {value!r}")
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            raise ConfigError(f"{where} must have {len(args)} items, got {len(value)}")
        hints = list(args)
    else:
        hints = [args[0] if args else Any] * len(value)
    items = [coerce(v, h, f"{where}[{i}]") for i, (v, h) in enumerate(zip(value, hints))]
    return items if origin is list else tuple(items)


def to_dict(config: Any) -> Dict[str, Any]:
    """A JSON/YAML-safe dict of a config dataclass (paths as strings, tuples as lists)."""
    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        return value

    return plain(config)
