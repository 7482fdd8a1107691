"""A YAML mapping of options -> the params a click command would get from the same options on its
command line.

A pipeline step's keys are its command's long options with dashes written as underscores
(``--no-shared-cache`` -> ``no_shared_cache``, ``--bootstrap`` -> ``bootstrap``, ``--batch`` ->
``batch``), so the command's own click parameters are the only definition of what a step takes. Each
value becomes command-line text and the command parses it, which applies click's own types, choices,
defaults and required checks: a step cannot accept anything the CLI refuses, nor refuse what it accepts.

- ``true``/``false`` for flags: ``strict: true`` is ``--strict``; ``smoke: false`` is ``--no-smoke``;
- a list (or one value) for repeatable options: ``batch: [1, 8]`` is ``--batch 1 --batch 8``;
- ``null`` leaves an option whose default is none at that default.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping

import click

from edgexfer.config import check_keys
from edgexfer.errors import ConfigError


def option_keys(command: click.Command) -> Dict[str, click.Parameter]:
    """Every YAML key the command takes -> its click parameter: each long option name, without the
    dashes, dashes inside written as underscores (positional arguments have no key)."""
    keys: Dict[str, click.Parameter] = {}
    for param in command.params:
        if not isinstance(param, click.Option) or not param.expose_value:
            continue
        for opt in param.opts:
            if opt.startswith("--"):
                keys[opt[2:].replace("-", "_")] = param
    return keys


def command_params(command: click.Command, options: Mapping[str, Any], fixed: Mapping[str, str],
                   where: str) -> Dict[str, Any]:
    """The command's click params (``ctx.params``) for ``options``, as if they were typed on its command
    line together with the ``fixed`` ones (the run directory the pipeline supplies), which are named
    like an option's key (``out`` for ``--out``) or a positional argument (``run_dir``).

    Unknown keys (with the closest valid one), a fixed param written in ``options``, values of the
    wrong shape and anything click refuses are a one-line ConfigError that starts with ``where``.
    """
    keys = option_keys(command)
    arguments = {p.name: p for p in command.params if isinstance(p, click.Argument)}
    pinned = {(keys.get(name) or arguments[name]).name: value for name, value in fixed.items()}
    by_name = {param.name: param for param in command.params}
    for key in options:
        param = keys.get(str(key), by_name.get(str(key)))
        if param is not None and param.name in pinned:
            raise ConfigError(f"{where}: '{key}' is set by the pipeline ({pinned[param.name]}); remove it")
    check_keys(options, keys, where)
    probe = click.Context(command)  # resolves each param's default the way click will
    args: List[str] = []
    for key, value in {**options, **{k: v for k, v in fixed.items() if k in keys}}.items():
        args += _tokens(keys[key], key, value, keys[key].get_default(probe), where)
    positional = [str(value) for name, value in fixed.items() if name in arguments]
    try:
        ctx = command.make_context(command.name, args + ["--"] + positional)
    except click.BadParameter as exc:
        raise ConfigError(f"{where}: {_bad_parameter(exc, keys)}") from exc
    except click.ClickException as exc:
        raise ConfigError(f"{where}: {exc.format_message()}") from exc
    return dict(ctx.params)


def _tokens(param: click.Parameter, key: str, value: Any, default: Any, where: str) -> List[str]:
    """The command-line tokens that give ``param`` (whose default is ``default``) the YAML ``value``."""
    assert isinstance(param, click.Option)
    opt = next(o for o in param.opts if o[2:].replace("-", "_") == key)
    if param.is_flag:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be true or false, got {value!r}")
        if value:
            return [opt]
        if param.secondary_opts:
            return [param.secondary_opts[0]]
        if default:  # a flag that is on by default and has no --no- form: false cannot be said
            raise ConfigError(f"{where}: {key} cannot be turned off")
        return []
    if value is None:
        if param.multiple or param.required or default is None:
            return []  # click applies the default, or says the option is required
        raise ConfigError(f"{where}: {key} needs a value (default {default!r}); leave it out for that")
    values = list(value) if param.multiple and isinstance(value, (list, tuple)) else [value]
    tokens = []
    for item in values:
        if isinstance(item, (list, tuple, dict)):
            shape = "a mapping" if isinstance(item, dict) else "a list"
            raise ConfigError(f"{where}: {key} takes {'values' if param.multiple else 'one value'}, "
                              f"not {shape}: {value!r}")
        if isinstance(item, bool) or item is None:
            raise ConfigError(f"{where}: {key} must be {_describe(param)}, got {item!r}")
        tokens.append(f"{opt}={item}")
    return tokens


def _describe(param: click.Parameter) -> str:
    """What a value of ``param`` looks like, for an error message."""
    kind = param.type
    if isinstance(kind, click.Choice):
        return "one of " + ", ".join(str(c) for c in kind.choices)
    if isinstance(kind, click.types.IntParamType):
        return "an integer"
    if isinstance(kind, click.types.FloatParamType):
        return "a number"
    if isinstance(kind, click.Path):
        return "a path"
    return "a string"


def _bad_parameter(exc: click.BadParameter, keys: Mapping[str, click.Parameter]) -> str:
    """click's complaint about one param, said with the YAML key instead of the option."""
    key = next((k for k, p in keys.items() if exc.param is not None and p.name == exc.param.name), None)
    if key is None:
        return exc.format_message()
    if isinstance(exc, click.MissingParameter):
        return f"'{key}' is required"
    return f"{key}: {exc.message}"
