"""``edgexfer verify RUN_DIR``: accuracy parity and latency of every built artifact (see stages/verify.py)."""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import click

from edgexfer.console import shell_arg
from edgexfer.report import verify_summary_lines


def _split(values: Optional[Tuple[str, ...]]) -> Optional[Tuple[str, ...]]:
    """Repeatable and comma-separated option values as one tuple (None when not given)."""
    items = tuple(part.strip() for value in values or () for part in value.split(",") if part.strip())
    return items or None


def config_from_params(params: Dict[str, Any], progress: bool) -> Any:
    """The :class:`VerifyConfig` for this command's click parameters (CLI and pipeline alike).

    Every option maps to a config field: ``--backends``/``--artifact`` take repeated or comma-separated
    values, ``--bootstrap`` is ``bootstrap_resamples``, ``--out`` is ``out_dir``. Raises ConfigError for
    values the config refuses.
    """
    from edgexfer.stages.verify import VerifyConfig

    return VerifyConfig(
        run_dir=params["run_dir"],
        data=params["data"],
        backends=_split(params["backends"]),
        artifacts=_split(params["artifact"]),
        max_drop=params["max_drop"],
        min_agreement=params["min_agreement"],
        gate_on=params["gate_on"],
        max_class_drop=params["max_class_drop"],
        max_p99_ms=params["max_p99_ms"],
        min_speedup=params["min_speedup"],
        batch_size=params["batch_size"],
        limit=params["limit"],
        bootstrap_resamples=params["bootstrap"],
        latency=params["latency"],
        latency_batch=params["latency_batch"],
        threads=params["threads"],
        out_dir=params["out"],
        plots=params["plots"],
        progress=progress,
    )


@click.command("verify")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=str))
@click.option(
    "--data",
    type=click.Path(path_type=str),
    default=None,
    help="Labelled ImageFolder DIR/<class>/<image> (default: the run's validation split).",
)
@click.option("--backends", multiple=True, help="Only artifacts of these backends (comma-separated or repeated).")
@click.option(
    "--artifact",
    multiple=True,
    help="Only these manifest artifacts: builds (onnxruntime_int8) or exported ONNX (onnx_int8_cpu).",
)
@click.option(
    "--max-drop",
    type=float,
    default=None,
    help="Gate: fail (exit 3) when an artifact's top-1 is more than PTS points below the float model.",
)
@click.option(
    "--min-agreement",
    type=float,
    default=None,
    help="Gate: fail (exit 3) when fewer than PCT % of predictions agree with the float model.",
)
@click.option(
    "--gate-on",
    type=click.Choice(["point", "ci"]),
    default="point",
    show_default=True,
    help="What --max-drop is compared with: the measured drop (point), or the upper bound of its 95% CI (ci).",
)
@click.option(
    "--max-class-drop",
    type=float,
    default=None,
    help="Gate: fail (exit 3) when any class's top-1 is more than PTS points below the float model's.",
)
@click.option(
    "--max-p99-ms",
    type=float,
    default=None,
    help="Gate: fail (exit 3) when an artifact's p99 latency (at --latency-batch) is above MS milliseconds.",
)
@click.option(
    "--min-speedup",
    type=float,
    default=None,
    help="Gate: fail (exit 3) when an artifact's p50 is less than X times faster than the torch float model.",
)
@click.option("--batch-size", type=int, default=32, show_default=True, help="Images per inference call.")
@click.option("--limit", type=int, default=None, help="Use at most N images (evenly spaced).")
@click.option(
    "--bootstrap",
    type=int,
    default=2000,
    show_default=True,
    help="Bootstrap resamples for the confidence interval of the drop.",
)
@click.option("--latency/--no-latency", default=True, show_default=True, help="Measure latency too.")
@click.option("--latency-batch", type=int, default=1, show_default=True, help="Batch size for latency.")
@click.option("--threads", type=int, default=None, help="Threads per runtime (default: physical cores).")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=str),
    default=None,
    help="Output folder (default RUN_DIR/verify).",
)
@click.option("--plots/--no-plots", default=True, show_default=True, help="Write the PNG plots.")
def verify(**_: Any) -> None:
    """Accuracy parity (top-1/top-5, drop with CI, McNemar, agreement, per-class deltas, cosine/SNR) and
    latency of every built artifact of RUN_DIR against the torch float model.

    \b
    Exit codes: 0 all passed; 3 an artifact failed a gate (--max-drop, --min-agreement,
    --max-class-drop, --max-p99-ms, --min-speedup); 5 INCONCLUSIVE: the float model is not better than
    chance on the data, so agreement with it proves nothing (never reported as a pass);
    2 bad input, or an artifact that could not be loaded (the report is still written);
    4 a backend named in --backends is not available here.
    """
    from edgexfer.console import progress_enabled
    from edgexfer.stages.verify import verify_artifacts

    config = config_from_params(click.get_current_context().params, progress_enabled())
    result = verify_artifacts(config)
    # Gate failures and broken artifacts still produced a report: show its table before the error.
    for line in verify_summary_lines(result.data):
        click.echo(line)
    error = result.outcome()
    if error is not None:
        click.echo(f"report: {result.report_path}")
        raise error
    click.echo(f"verify.json: {result.json_path}")
    click.echo(f"report:      {result.report_path}")
    run_dir = shell_arg(config.run_dir)
    click.echo(f"next: edgexfer predict {run_dir} IMAGE   (or edgexfer bench --run {run_dir})")
