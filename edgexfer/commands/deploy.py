"""``edgexfer deploy RUN --to [user@]host[:dir]``: build, verify and bench a run on devices over SSH
(see edgexfer/deploy/)."""

from __future__ import annotations

import shlex
from typing import Any, Dict, List, Optional, Tuple

import click


def _split(values: Optional[Tuple[str, ...]]) -> Tuple[str, ...]:
    return tuple(part.strip() for value in values or () for part in value.split(",") if part.strip())


def config_from_params(params: Dict[str, Any], progress: bool) -> Any:
    """The :class:`DeployConfig` of the command's click parameters (CLI and pipeline alike)."""
    from edgexfer.deploy.config import DeployConfig

    return DeployConfig(
        run_dir=params["run_dir"],
        targets=tuple(params["to"] or ()),
        backend=params["backend"],
        precisions=_split(params["precision"]) or ("fp32", "int8"),
        remote_python=params["remote_python"],
        setup=params["setup"],
        wheelhouse=params["wheelhouse"],
        ssh_config=params["ssh_config"],
        data=params["data"],
        device_data=params["device_data"],
        limit=params["limit"],
        max_drop=params["max_drop"],
        min_agreement=params["min_agreement"],
        bench=params["bench"],
        bench_min_time=params["bench_min_time"],
        keep=params["keep"],
        purge=params["purge"],
        copy=params["copy"],
        progress=progress,
    )


@click.command("deploy")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=str))
@click.option("--to", "to", multiple=True, metavar="[USER@]HOST[:DIR]",
              help="Device to deploy to (an ssh host or alias; DIR default ~/edgexfer-deploy/<run name>). "
                   "Repeat for several devices, served in parallel.")
@click.option("--backend", default=None, help="Backend on the device [default: the best it has: tensorrt, "
                                              "openvino, onnxruntime].")
@click.option("--precision", multiple=True, help="Precisions to build there [default: fp32,int8].")
@click.option("--remote-python", default="python3", show_default=True,
              help="Python on the device that has edgexfer (a venv's bin/python); with --setup, the Python "
                   "the venv is made from.")
@click.option("--setup", is_flag=True,
              help="Install this edgexfer on the device: a venv in DIR/venv (seeing the system site-packages on "
                   "a Jetson, for TensorRT) with a wheel built here; reused while the wheel is unchanged.")
@click.option("--wheelhouse", type=click.Path(file_okay=False, path_type=str), default=None,
              help="With --setup: a folder of wheels for the device, sent along and installed with no index "
                   "(an offline device).")
@click.option("--ssh-config", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="ssh config file (ssh -F) [default: $EDGEXFER_SSH_CONFIG, else ssh's own ~/.ssh/config].")
@click.option("--data", type=click.Path(path_type=str), default=None,
              help="Labelled folder DIR/<class>/<image> to send a validation subset from [default: the run's "
                   "validation split].")
@click.option("--device-data", default=None, help="A labelled folder already on the device (nothing sent).")
@click.option("--limit", type=int, default=200, show_default=True, help="Validation images sent and verified.")
@click.option("--max-drop", type=float, default=None, help="Gate: fail (exit 3) when top-1 drops more than PTS "
                                                           "points on the device.")
@click.option("--min-agreement", type=float, default=None, help="Gate: fail (exit 3) when fewer than PCT % of "
                                                                "predictions agree with the float model.")
@click.option("--bench/--no-bench", default=True, show_default=True, help="Run edgexfer bench on the device too.")
@click.option("--bench-min-time", type=float, default=0.5, show_default=True,
              help="Minimum seconds of timed calls per bench measurement.")
@click.option("--keep", is_flag=True, help="Keep the work run (engines, outputs) on the device.")
@click.option("--purge", is_flag=True, help="Remove everything edgexfer sent, the bundle cache included (the next "
                                            "deploy sends it all again).")
@click.option("--copy", type=click.Choice(["auto", "rsync", "ssh"]), default="auto", show_default=True,
              help="How files travel: rsync where both sides have it (auto), else a tar of what changed over ssh.")
def deploy(**_: Any) -> None:
    """Send RUN's models to a device over SSH, build, verify and bench them there, and bring the verdict
    back into RUN/devices/<host>/ (recorded in the manifest).

    \b
    Examples:
      edgexfer deploy runs/r18 --to jetson --setup
      edgexfer deploy runs/r18 --to me@orin:work/edgexfer --remote-python ~/venv/bin/python --max-drop 1
      edgexfer deploy runs/r18 --to orin-nano --to orin-agx --backend tensorrt
    \b
    Exit codes: 0 passed on every device; 3 the gate failed on a device; 2 bad input or a device that
    could not be used (unreachable, key refused, no Python / edgexfer there, full disk); 4 the backend
    is not usable on a device.
    """
    from edgexfer.console import progress_enabled
    from edgexfer.deploy.run import deploy_outcome, run_deploy

    ctx = click.get_current_context()
    config = config_from_params(ctx.params, progress_enabled())
    quiet = bool((ctx.find_root().obj or {}).get("quiet"))
    results = run_deploy(config, say=(lambda line: None) if quiet else (lambda line: click.echo(line, err=True)))
    _report(config, results)
    error = deploy_outcome(results)
    if error is not None:
        raise error


def _report(config: Any, results: List[Any]) -> None:
    """The verdict table of each device that answered, then the matrix when there are several."""
    from edgexfer.deploy.matrix import matrix_lines
    from edgexfer.report import verify_summary_lines  # the same table as a local verify

    for result in results:
        click.echo("")
        if result.verify is None:
            click.echo(f"device {result.target.host}: FAILED {result.error}")
            continue
        sent = result.transfer
        click.echo(f"device {result.target.host} ({result.backend}; {sent.bytes_sent} bytes sent by {sent.tool}, "
                   f"{result.seconds:.0f} s)")
        for line in verify_summary_lines(result.verify):
            click.echo(line)
    if len(results) > 1:
        click.echo("")
        for line in matrix_lines(results):
            click.echo(line)
    answered = [r for r in results if r.verify is not None]
    if answered:
        click.echo(f"outputs: {config.run_dir / 'devices'}/<host>/ (verify/verify.json, bench/, doctor.json)")
        # quoted: the line is meant to be pasted into a shell
        click.echo(f"next: edgexfer deploy {shlex.quote(str(config.run_dir))} --to HOST --max-drop 1   "
                   "(gate CI on the device)")
