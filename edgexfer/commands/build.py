"""``edgexfer build RUN_DIR --backend B --precision P``: build a runtime artifact (see stages/build.py)."""

from __future__ import annotations

from typing import Any, Dict, Optional

import click

from edgexfer.backends.base import BACKENDS, PRECISIONS


@click.command("build")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=str))
@click.option(
    "--backend",
    required=True,
    metavar="|".join(b for b in BACKENDS if b != "torch"),
    help="Runtime to build for.",
)
@click.option(
    "--precision",
    default="fp32",
    show_default=True,
    metavar="|".join(PRECISIONS),
    help="fp32 and fp16 build from the float ONNX, int8 from the matching INT8 QDQ export.",
)
@click.option(
    "--source", default=None, help="Manifest artifact to build from (default: by backend/precision)."
)
@click.option("--threads", type=int, default=None, help="ONNX Runtime: threads for the offline optimisation.")
@click.option(
    "--opt-level",
    type=click.Choice(["basic", "extended", "all"]),
    default=None,
    help="ONNX Runtime: offline graph optimisation (default extended; 'all' is tied to this CPU).",
)
@click.option("--min-batch", type=int, default=None, help="TensorRT: profile minimum batch (default 1).")
@click.option(
    "--opt-batch", type=int, default=None, help="TensorRT: batch the kernels are tuned for (default 1)."
)
@click.option("--max-batch", type=int, default=None, help="TensorRT: profile maximum batch (default 8).")
@click.option(
    "--workspace-mb", type=int, default=None, help="TensorRT: builder workspace limit (default 1024)."
)
@click.option(
    "--dla-core", type=int, default=None, help="TensorRT on Jetson: run on this DLA core, GPU fallback."
)
@click.option(
    "--version-compatible", is_flag=True, help="TensorRT 8.6+: engine runs on later TensorRT versions."
)
@click.option("--hardware-compatible", is_flag=True, help="TensorRT 8.6+: engine runs on any Ampere+ GPU.")
@click.option(
    "--strongly-typed/--weakly-typed",
    "strongly_typed",
    default=None,
    help="TensorRT 10: network typing (11 is always strongly typed, 8.x always weakly).",
)
@click.option(
    "--smoke/--no-smoke",
    default=True,
    show_default=True,
    help="Compare the build with the float ONNX on a few real images before recording it.",
)
@click.option("--smoke-images", type=int, default=8, show_default=True, help="Images for the smoke check.")
@click.option(
    "--smoke-data",
    type=click.Path(exists=True, path_type=str),
    default=None,
    help="Images for the smoke check (default: the run's validation split).",
)
def build(
    run_dir: str,
    backend: str,
    precision: str,
    source: Optional[str],
    threads: Optional[int],
    opt_level: Optional[str],
    min_batch: Optional[int],
    opt_batch: Optional[int],
    max_batch: Optional[int],
    workspace_mb: Optional[int],
    dla_core: Optional[int],
    version_compatible: bool,
    hardware_compatible: bool,
    strongly_typed: Optional[bool],
    smoke: bool,
    smoke_images: int,
    smoke_data: Optional[str],
) -> None:
    """Build RUN_DIR's ONNX model for a runtime, smoke-check it and record it in the manifest.

    \b
    Examples:
      edgexfer build runs/r18 --backend onnxruntime --precision int8
      edgexfer build runs/r18 --backend tensorrt --precision fp16 --max-batch 16
      edgexfer build runs/r18 --backend tensorrt --precision int8 --dla-core 0   # Jetson Orin
    """
    from edgexfer.console import progress_enabled
    from edgexfer.errors import ConfigError
    from edgexfer.stages.build import BuildConfig, run_build

    options = _backend_options(
        backend,
        threads=threads,
        level=opt_level,
        min_batch=min_batch,
        opt_batch=opt_batch,
        max_batch=max_batch,
        workspace_mb=workspace_mb,
        dla_core=dla_core,
        version_compatible=version_compatible or None,
        hardware_compatible=hardware_compatible or None,
        strongly_typed=strongly_typed,
    )
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision '{precision}'; choose one of {', '.join(PRECISIONS)}")
    config = BuildConfig(
        run_dir=run_dir,
        backend=backend,
        precision=precision,
        source=source,
        options=options,
        smoke=smoke,
        smoke_images=smoke_images,
        smoke_data=smoke_data,
        progress=progress_enabled(),
    )
    outcome = run_build(config)
    smoke_line = ""
    if outcome.smoke:
        smoke_line = (
            f"; smoke check on {outcome.smoke['images']} images: logit cosine "
            f"{outcome.smoke['mean_cosine']:.4f}, top-1 agreement {outcome.smoke['top1_agreement']:.0%}"
        )
    click.echo(f"built {outcome.name} from {outcome.source} in {outcome.seconds:.1f}s{smoke_line}")
    click.echo(f"artifact: {outcome.path}")
    click.echo(
        f"next: edgexfer verify {run_dir}   (or: edgexfer predict {run_dir} --artifact {outcome.name} IMAGE)"
    )


# Which CLI options each backend takes; passing one to another backend is an error, not ignored.
_BACKEND_OPTIONS = {
    "onnxruntime": ("threads", "level"),
    "openvino": (),
    "tensorrt": (
        "min_batch",
        "opt_batch",
        "max_batch",
        "workspace_mb",
        "dla_core",
        "version_compatible",
        "hardware_compatible",
        "strongly_typed",
    ),
    "torch": (),
}
_FLAG_NAMES = {"level": "--opt-level", "strongly_typed": "--strongly-typed/--weakly-typed"}


def _backend_options(backend: str, **given: Any) -> Dict[str, Any]:
    """The options given on the command line, checked against the backend that takes them."""
    from edgexfer.errors import ConfigError

    allowed = _BACKEND_OPTIONS.get(backend, ())
    options = {}
    for key, value in given.items():
        if value is None:
            continue
        if key not in allowed:
            flag = _FLAG_NAMES.get(key, "--" + key.replace("_", "-"))
            owners = [b for b, keys in _BACKEND_OPTIONS.items() if key in keys]
            raise ConfigError(f"{flag} applies to --backend {'/'.join(owners)}, not {backend}; drop it")
        options[key] = value
    return options
