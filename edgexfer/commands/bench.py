"""``edgexfer bench``: latency matrix, models x backends x precisions x batch sizes (stages/bench.py)."""

from __future__ import annotations

from typing import Optional, Tuple

import click


def _split(values: Tuple[str, ...]) -> Tuple[str, ...]:
    """Repeatable and comma-separated option values as one tuple."""
    return tuple(part.strip() for value in values for part in value.split(",") if part.strip())


@click.command("bench")
@click.option(
    "--model",
    "models",
    multiple=True,
    help="torchvision models (comma-separated or repeated) [default: resnet18, mobilenet_v3_large, "
    "efficientnet_b0].",
)
@click.option(
    "--run",
    "run_dir",
    type=click.Path(file_okay=False, path_type=str),
    default=None,
    help="Bench this run directory's built artifacts (trained weights) instead of random-weight models.",
)
@click.option(
    "--backend", "backends", multiple=True, help="Only these backends [default: every available one]."
)
@click.option(
    "--precision", "precisions", multiple=True, help="Precisions [default: fp32, fp16, int8 where supported]."
)
@click.option("--batch", "batches", multiple=True, help="Batch sizes [default: 1, 8].")
@click.option("--size", type=int, default=224, show_default=True, help="Input size of random-weight models.")
@click.option("--threads", type=int, default=None, help="Threads per runtime [default: physical cores].")
@click.option(
    "--uint8-input/--float-input",
    default=True,
    show_default=True,
    help="Bench the uint8-input exports (preprocessing folded into the model).",
)
@click.option(
    "--e2e/--no-e2e",
    "end_to_end",
    default=True,
    show_default=True,
    help="Also time image file -> decode -> preprocess -> infer -> top-5.",
)
@click.option(
    "--min-time",
    "min_time_s",
    type=float,
    default=1.0,
    show_default=True,
    help="Minimum seconds of timed calls per measurement.",
)
@click.option("--min-iterations", type=int, default=30, show_default=True, help="Minimum timed calls.")
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=str),
    default="runs/bench",
    show_default=True,
    help="Where random-weight models are exported and built (reused).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=str),
    default="benchmarks/results",
    show_default=True,
    help="Where <machine>.json/.md/.png go.",
)
@click.option("--machine-name", default=None, help="File name for the results [default: from CPU/GPU].")
@click.option(
    "--calibration",
    type=click.Path(file_okay=False, path_type=str),
    default="calibration/fashion-mnist",
    show_default=True,
    help="Calibration images for the INT8 exports.",
)
def bench(
    models: Tuple[str, ...],
    run_dir: Optional[str],
    backends: Tuple[str, ...],
    precisions: Tuple[str, ...],
    batches: Tuple[str, ...],
    size: int,
    threads: Optional[int],
    uint8_input: bool,
    end_to_end: bool,
    min_time_s: float,
    min_iterations: int,
    work_dir: str,
    out_dir: str,
    machine_name: Optional[str],
    calibration: str,
) -> None:
    """Latency matrix on this machine: model alone and end to end, with the machine recorded.

    Random weights are used unless --run is given: latency does not depend on the weights' values.
    """
    from edgexfer.console import progress_enabled
    from edgexfer.errors import ConfigError
    from edgexfer.stages.bench import DEFAULT_MODELS, BenchConfig, run_bench

    try:
        batch_sizes = tuple(int(b) for b in _split(batches)) or (1, 8)
    except ValueError as exc:
        raise ConfigError(f"--batch takes integers, got {list(batches)}") from exc
    config = BenchConfig(
        models=_split(models) or (() if run_dir else DEFAULT_MODELS),
        size=size,
        batch_sizes=batch_sizes,
        backends=_split(backends) or None,
        precisions=_split(precisions) or ("fp32", "fp16", "int8"),
        run_dir=run_dir,
        work_dir=work_dir,
        out_dir=out_dir,
        machine_name=machine_name,
        threads=threads,
        end_to_end=end_to_end,
        uint8_input=uint8_input,
        calibration=calibration,
        min_time_s=min_time_s,
        min_iterations=min_iterations,
        progress=progress_enabled(),
    )
    result = run_bench(config)
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
        click.echo(
            f"  {row['model']:<20} {row['backend']:<12} {row['precision']:<5} b{row['batch']:<3} "
            f"p50 {lat['p50_ms']:8.2f} ms (IQR {lat['iqr_ms']:.2f}, p99 {lat['p99_ms']:.2f}){speed}{extra}"
        )
    for line in data["headlines"]:
        click.echo(line)
    click.echo(f"results: {result.json_path}")
    click.echo(f"table:   {result.markdown_path}")
    if result.plot_path:
        click.echo(f"chart:   {result.plot_path}")
    click.echo("next: paste the table into README.md, or edgexfer verify RUN_DIR for accuracy parity")
