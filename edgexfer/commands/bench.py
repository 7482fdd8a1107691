"""``edgexfer bench``: latency matrix, models x backends x precisions x batch sizes (edgexfer/bench_pipeline.py).

Every option's click name is its long option (``--batch`` -> ``batch``), so a pipeline step takes the
same keys; :func:`config_from_params` turns them into the checked :class:`BenchConfig`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Iterable, Tuple

import click

from edgexfer.stages.bench.config import DEFAULT_MODELS, MODES, BenchConfig

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(BenchConfig)}


def _split(values: Iterable[Any]) -> Tuple[str, ...]:
    """Repeatable and comma-separated option values as one tuple of strings."""
    return tuple(part.strip() for value in values for part in str(value).split(",") if part.strip())


def config_from_params(params: Dict[str, Any], progress: bool) -> BenchConfig:
    """The bench config of the command's click parameters (CLI or pipeline step)."""
    from edgexfer.errors import ConfigError

    try:
        batch_sizes = tuple(int(b) for b in _split(params["batch"])) or _DEFAULTS["batch_sizes"]
    except ValueError as exc:
        raise ConfigError(f"--batch takes integers, got {list(params['batch'])}") from exc
    run_dir = params["run"]
    return BenchConfig(
        models=_split(params["model"]) or (() if run_dir else DEFAULT_MODELS),
        size=params["size"],
        batch_sizes=batch_sizes,
        backends=_split(params["backend"]) or None,
        precisions=_split(params["precision"]) or _DEFAULTS["precisions"],
        run_dir=run_dir,
        work_dir=params["work_dir"],
        out_dir=params["out"],
        machine_name=params["machine_name"],
        threads=params["threads"],
        end_to_end=params["e2e"],
        uint8_input=params["uint8_input"],
        calibration=params["calibration"],
        min_time_s=params["min_time"],
        min_iterations=params["min_iterations"],
        progress=progress,
        mode=params["mode"],
        in_flight=params["in_flight"],
        decode_workers=params["decode_workers"],
        frame=params["frame"],
        frame_format=params["frame_format"],
    )


@click.command("bench")
@click.option(
    "--model", multiple=True, help=f"torchvision models (comma-separated or repeated) [default: "
    f"{', '.join(DEFAULT_MODELS)}]."
)
@click.option(
    "--run",
    type=click.Path(file_okay=False, path_type=str),
    default=None,
    help="Bench this run directory's built artifacts (trained weights) instead of random-weight models.",
)
@click.option("--backend", multiple=True, help="Only these backends [default: every available one].")
@click.option(
    "--precision", multiple=True,
    help=f"Precisions [default: {', '.join(_DEFAULTS['precisions'])} where supported].",
)
@click.option(
    "--batch", multiple=True, help=f"Batch sizes [default: {', '.join(map(str, _DEFAULTS['batch_sizes']))}]."
)
@click.option("--size", type=int, default=_DEFAULTS["size"], show_default=True,
              help="Input size of random-weight models.")
@click.option("--threads", type=int, default=None, help="Threads per runtime [default: physical cores].")
@click.option(
    "--uint8-input/--float-input",
    default=_DEFAULTS["uint8_input"],
    show_default=True,
    help="Bench the uint8-input exports (preprocessing folded into the model).",
)
@click.option(
    "--e2e/--no-e2e",
    default=_DEFAULTS["end_to_end"],
    show_default=True,
    help="Also time image file -> decode -> preprocess -> infer -> top-5.",
)
@click.option(
    "--min-time", type=float, default=_DEFAULTS["min_time_s"], show_default=True,
    help="Minimum seconds of timed calls per measurement.",
)
@click.option("--min-iterations", type=int, default=_DEFAULTS["min_iterations"], show_default=True,
              help="Minimum timed calls.")
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=str),
    default=str(_DEFAULTS["work_dir"]),
    show_default=True,
    help="Where random-weight models are exported and built (reused).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=str),
    default=str(_DEFAULTS["out_dir"]),
    show_default=True,
    help="Where <machine>.json/.md/.png go.",
)
@click.option("--machine-name", default=None, help="File name for the results [default: from CPU/GPU].")
@click.option(
    "--calibration",
    type=click.Path(file_okay=False, path_type=str),
    default=str(_DEFAULTS["calibration"]),
    show_default=True,
    help="Calibration images for the INT8 exports (class sub-folders name the random models' classes).",
)
@click.option("--mode", type=click.Choice(MODES), default=_DEFAULTS["mode"], show_default=True,
              help="throughput: also images/s with several requests in flight (model alone, one at a time, "
                   "and the pipelined image-file stream).")
@click.option("--in-flight", type=int, default=_DEFAULTS["in_flight"], show_default=True,
              help="Requests in flight for --mode throughput (0: the runtime's choice).")
@click.option("--decode-workers", type=int, default=_DEFAULTS["decode_workers"], show_default=True,
              help="Decode threads of the pipelined stream (0: up to 4).")
@click.option("--frame", default=None, metavar="HxW",
              help="Also export, build and bench each --model as a raw-frame model (export --uint8-input "
                   "--frame HxW): fed decoded camera frames of this size, preprocessing in its graph. With --run: "
                   "bench the run's frame builds of this size only.")
@click.option("--frame-format", type=click.Choice(["rgb", "bgr"], case_sensitive=False), default="rgb",
              show_default=True, help="Channel order of the --frame models' input (OpenCV delivers bgr).")
def bench(**_: Any) -> None:
    """Latency matrix on this machine: model alone and end to end, with the machine recorded.

    Random weights are used unless --run is given: latency does not depend on the weights' values.
    """
    from edgexfer.bench_pipeline import run_bench
    from edgexfer.console import progress_enabled

    result = run_bench(config_from_params(click.get_current_context().params, progress_enabled()))
    data = result.data
    click.echo(
        f"{len([r for r in data['results'] if r.get('status') == 'ok'])} measurements on "
        f"{data['machine_name']} ({data['threads']} threads) in {data['elapsed_s']:.0f} s"
    )
    for row in data["results"]:
        if row.get("status") != "ok":
            click.echo(
                f"  {row['model']:<20} {row['backend']:<12} {row['precision']:<5} {row['status']}: "
                f"{row.get('error', '')}"
            )
            continue
        lat, e2e = row["latency"], row.get("e2e")
        extra = f"  e2e {e2e['p50_ms']:8.2f} ms ({row['e2e_ratio']:.2f}x)" if e2e else ""
        speed = f"  {row['speedup_vs_torch']:5.2f}x torch" if row.get("speedup_vs_torch") else ""
        if row.get("frame"):  # a raw-frame model (export --frame): say so, the row is otherwise a twin
            extra += f"  [{row['input']}]"
        click.echo(
            f"  {row['model']:<20} {row['backend']:<12} {row['precision']:<5} b{row['batch']:<3} "
            f"p50 {lat['p50_ms']:8.2f} ms (IQR {lat['iqr_ms']:.2f}, p99 {lat['p99_ms']:.2f}){speed}{extra}"
        )
        if "throughput" in row:
            piped = row.get("pipelined")
            click.echo(
                f"  {'':<20} {'':<12} {'':<5} {'':<4} {row['throughput']['images_per_s']:8.1f} img/s with "
                f"{row['throughput']['in_flight']} in flight, {row['throughput_sequential']['images_per_s']:.1f} "
                f"one at a time" + (f", pipelined from files {piped['images_per_s']:.1f} img/s "
                                    f"({row['pipelined_ratio']:.2f}x)" if piped else "")
            )
    for line in data["headlines"]:
        click.echo(line)
    click.echo(f"results: {result.json_path}")
    click.echo(f"table:   {result.markdown_path}")
    if result.plot_path:
        click.echo(f"chart:   {result.plot_path}")
    click.echo("next: paste the table into README.md, or edgexfer verify RUN_DIR for accuracy parity")
