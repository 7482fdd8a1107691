"""Config plumbing shared by the stages and the pipeline: YAML loading, unknown-key checks with the
closest valid key, and configs as plain dicts.

Each stage owns its frozen config dataclass (validated in ``__post_init__``). A pipeline step's mapping
reaches it through the stage command's own click options (:mod:`edgexfer.cliparams`) and the command's
``config_from_params``, so the CLI's types and choices are the only ones; a bad key or value is one clear
line, never a silent rewrite of the user's option.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from pathlib import Path
from typing import Any, Dict, Mapping

from edgexfer.errors import ConfigError


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
