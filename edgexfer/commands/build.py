"""``edgexfer build RUN_DIR --backend B --precision P``: build a runtime artifact (see stages/build.py).

The backend options (``--max-batch``, ``--opt-level``, ...) are made from what each backend declares
(:attr:`edgexfer.backends.base.Backend.build_options`); :func:`config_from_params` turns the command's
parameters (from the command line or a pipeline step) into the checked :class:`BuildConfig`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict

import click

from edgexfer.console import shell_arg

from edgexfer.backends.base import BACKENDS, PRECISIONS, REFERENCE_BACKEND, BuildOption, all_build_options
from edgexfer.stages.build import BuildConfig

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(BuildConfig)}


def config_from_params(params: Dict[str, Any], progress: bool) -> BuildConfig:
    """The build config of the command's click parameters. A backend option that was not given (None,
    or an unset on-only flag) is left out, so the backend's own default applies; one given to a
    backend that does not declare it is a ConfigError naming the backends that take it."""
    options = {}
    for name, (option, _) in all_build_options().items():
        value = params.get(name)
        if value is None or (value is False and option.kind is bool and not option.negative):
            continue
        options[name] = value
    return BuildConfig(
        run_dir=params["run_dir"],
        backend=params["backend"],
        precision=params["precision"],
        source=params["source"],
        options=options,
        smoke=params["smoke"],
        smoke_images=params["smoke_images"],
        smoke_data=params["smoke_data"],
        progress=progress,
    )


def _backend_option(option: BuildOption) -> Callable[[Any], Any]:
    """The click option for one declared build option (default None: 'not given')."""
    shown = option.default is not None and "default" not in option.help
    help_text = option.help + (f"  [default: {option.default}]" if shown else "")
    if option.kind is bool and option.negative:
        flags = f"{option.flag}/--{option.negative.replace('_', '-')}"
        return click.option(flags, option.name, default=None, help=help_text)
    if option.kind is bool:
        return click.option(option.flag, option.name, is_flag=True, default=None, help=help_text)
    kind = click.Choice(option.choices) if option.choices else option.kind
    return click.option(option.flag, option.name, type=kind, default=None, help=help_text)


def _with_backend_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add one click option per declared build option, in declaration order."""
    for option, _ in reversed(list(all_build_options().values())):
        command = _backend_option(option)(command)
    return command


@click.command("build")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=str))
@click.option(
    "--backend",
    required=True,
    metavar="|".join(b for b in BACKENDS if b != REFERENCE_BACKEND),
    help="Runtime to build for.",
)
@click.option(
    "--precision",
    default=_DEFAULTS["precision"],
    show_default=True,
    metavar="|".join(PRECISIONS),
    help="fp32 and fp16 build from the float ONNX, int8 from the matching INT8 QDQ export.",
)
@click.option(
    "--source", default=None, help="Manifest artifact to build from (default: by backend/precision)."
)
@_with_backend_options
@click.option(
    "--smoke/--no-smoke",
    default=_DEFAULTS["smoke"],
    show_default=True,
    help="Compare the build with the float ONNX on a few real images before recording it.",
)
@click.option(
    "--smoke-images", type=int, default=_DEFAULTS["smoke_images"], show_default=True,
    help="Images for the smoke check.",
)
@click.option(
    "--smoke-data",
    type=click.Path(exists=True, path_type=str),
    default=None,
    help="Images for the smoke check (default: the run's validation split).",
)
def build(**_: Any) -> None:
    """Build RUN_DIR's ONNX model for a runtime, smoke-check it and record it in the manifest.

    \b
    Examples:
      edgexfer build runs/r18 --backend onnxruntime --precision int8
      edgexfer build runs/r18 --backend tensorrt --precision fp16 --max-batch 16
      edgexfer build runs/r18 --backend tensorrt --precision fp16 --dla-core 0   # Jetson Orin DLA
    """
    from edgexfer.console import progress_enabled
    from edgexfer.stages.build import run_build

    config = config_from_params(click.get_current_context().params, progress_enabled())
    outcome = run_build(config)
    smoke_line = ""
    if outcome.smoke:
        smoke_line = (
            f"; smoke check on {outcome.smoke['images']} images: logit cosine "
            f"{outcome.smoke['mean_cosine']:.4f}, top-1 agreement {outcome.smoke['top1_agreement']:.0%}"
        )
        if outcome.smoke.get("verdict") == "inconclusive":
            smoke_line += " (inconclusive: the float model is at chance on these images)"
    click.echo(f"built {outcome.name} from {outcome.source} in {outcome.seconds:.1f}s{smoke_line}")
    click.echo(f"artifact: {outcome.path}")
    click.echo(
        f"next: edgexfer verify {shell_arg(config.run_dir)}   "
        f"(or: edgexfer predict {shell_arg(config.run_dir)} --artifact {outcome.name} IMAGE)"
    )
