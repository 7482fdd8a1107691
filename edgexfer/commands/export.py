"""``edgexfer export RUN_DIR``: float ONNX, an optional uint8-input variant, optional INT8 per target."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import click


@click.command("export")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--opset",
    default=17,
    show_default=True,
    type=int,
    help="ONNX opset (13-20); TensorRT 8.5/8.6 parse <= 17.",
)
@click.option(
    "--uint8-input",
    is_flag=True,
    help="Also write a model that takes uint8 pixels with the normalisation folded in.",
)
@click.option(
    "--uint8-layout",
    type=click.Choice(["nhwc", "nchw"], case_sensitive=False),
    default="nhwc",
    show_default=True,
    help="Layout of the uint8 input (decoded images are NHWC).",
)
@click.option("--int8", is_flag=True, help="Also write INT8 QDQ models (needs calibration images).")
@click.option(
    "--target",
    type=click.Choice(["cpu", "tensorrt", "all"]),
    default="all",
    show_default=True,
    help="cpu: U8 activations / S8 per-channel weights (ORT, OpenVINO on x86); tensorrt: "
    "symmetric S8 QDQ by TensorRT's rules.",
)
@click.option(
    "--calib",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder of calibration images (searched recursively) [the run's training split].",
)
@click.option(
    "--calib-size",
    default=512,
    show_default=True,
    type=int,
    help="Calibration images, sampled deterministically (--seed).",
)
@click.option(
    "--calib-method",
    type=click.Choice(["minmax", "entropy", "percentile", "auto"]),
    default="auto",
    show_default=True,
    help="auto: try all, keep the one agreeing best with float on held-out images.",
)
@click.option(
    "--max-drop",
    type=float,
    default=None,
    help="Accuracy guard: max top-1 drop (points) vs float; keeps sensitive layers in float.",
)
@click.option(
    "--max-fallback",
    default=16,
    show_default=True,
    type=int,
    help="Most layers the guard may keep in float before it gives up (exit 3).",
)
@click.option(
    "--eval-data",
    type=click.Path(path_type=Path),
    default=None,
    help="Labelled folder <class>/<image> for parity and INT8 scoring [the run's val split].",
)
@click.option(
    "--eval-size", default=1000, show_default=True, type=int, help="Held-out images for INT8 scoring."
)
@click.option(
    "--auto-eval-size",
    default=300,
    show_default=True,
    type=int,
    help="Held-out images on which --calib-method auto compares the methods.",
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--batch-size", default=64, show_default=True, type=int)
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Shared calibration-range cache [$EDGEXFER_CACHE/calib or ~/.cache/edgexfer/calib].",
)
@click.option(
    "--no-shared-cache", is_flag=True, help="Cache calibration ranges only inside the run directory."
)
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def export(
    run_dir: Path,
    uint8_layout: str,
    no_shared_cache: bool,
    no_progress: bool,
    cache_dir: Optional[Path],
    **options: Any,
) -> None:
    """Export a run's best checkpoint to ONNX (checked against torch), optionally INT8 per target."""
    from edgexfer.console import progress_enabled
    from edgexfer.stages.export import ExportConfig, run_export

    config = ExportConfig(
        run_dir=run_dir,
        uint8_layout=uint8_layout.upper(),
        shared_cache=not no_shared_cache,
        cache_dir=cache_dir,
        progress=progress_enabled() and not no_progress,
        **options,
    )
    result = run_export(config)
    for name, path in result.paths.items():
        metrics = result.metrics[name]
        if "drop" in metrics:
            detail = (
                f"{metrics['calib_method']}, top-1 {metrics['float_top1']:.2f} -> {metrics['int8_top1']:.2f} "
                f"(drop {metrics['drop']:.2f}) on {metrics['eval_images']} held-out images"
                + (
                    f", {len(metrics['excluded_nodes'])} layer(s) in float"
                    if metrics["excluded_nodes"]
                    else ""
                )
            )
        else:
            detail = (
                f"max abs diff {metrics['max_abs_diff']:.2e}, top-1 agreement "
                f"{metrics['top1_agreement']:.4f}" + (" (up to date)" if metrics.get("reused") else "")
            )
        click.echo(f"{name:<20} {path}  [{detail}]")
    click.echo(f"manifest: {run_dir / 'manifest.json'}")
    precision = "int8" if config.int8 else "fp32"
    click.echo(f"next: edgexfer build {run_dir} --backend onnxruntime --precision {precision}")
