"""``edgexfer export RUN_DIR``: float ONNX, an optional uint8-input variant, optional INT8 per target.

Choices and defaults come from the stage (:class:`~edgexfer.stages.export.config.ExportConfig`), and
:func:`config_from_params` is the one mapping from these options to the config, used by the CLI and
by the YAML pipeline alike.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict

import click

from edgexfer.console import shell_arg

from edgexfer.backends.trt_compat import TRT8_MAX_OPSET
from edgexfer.quant.candidates import QUANTIZER_CHOICES
from edgexfer.quant.ranges import METHOD_CHOICES
from edgexfer.stages.export.config import MAX_OPSET, MIN_OPSET, TARGET_CHOICES, UINT8_LAYOUTS, ExportConfig

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ExportConfig)}


def config_from_params(params: Dict[str, Any], progress: bool) -> ExportConfig:
    """The :class:`ExportConfig` of the command's click parameters (``--no-*`` flags inverted)."""
    values = dict(params)
    shared_cache = not values.pop("no_shared_cache")
    no_progress = values.pop("no_progress")
    return ExportConfig(shared_cache=shared_cache, progress=progress and not no_progress, **values)


@click.command("export")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--opset",
    default=_DEFAULTS["opset"],
    show_default=True,
    type=int,
    help=f"ONNX opset ({MIN_OPSET}-{MAX_OPSET}); TensorRT 8.5/8.6 parse <= {TRT8_MAX_OPSET}.",
)
@click.option(
    "--uint8-input",
    is_flag=True,
    help="Also write a model that takes uint8 pixels with the normalisation folded in.",
)
@click.option(
    "--uint8-layout",
    type=click.Choice(UINT8_LAYOUTS, case_sensitive=False),
    default=_DEFAULTS["uint8_layout"],
    show_default=True,
    help="Layout of the uint8 input (decoded images are NHWC).",
)
@click.option(
    "--frame",
    default=None,
    metavar="HxW",
    help="With --uint8-input: the model takes the camera's raw uint8 frame (NHWC, HEIGHTxWIDTH, e.g. 1080x1920) "
    "and resizes, crops and normalises it in its graph (INT8 models get the same front).",
)
@click.option(
    "--frame-format",
    type=click.Choice(("rgb", "bgr"), case_sensitive=False),
    default=_DEFAULTS["frame_format"],
    show_default=True,
    help="Channel order of the --frame input (OpenCV delivers bgr).",
)
@click.option("--int8", is_flag=True, help="Also write INT8 QDQ models (needs calibration images).")
@click.option(
    "--target",
    type=click.Choice(TARGET_CHOICES),
    default=_DEFAULTS["target"],
    show_default=True,
    help="cpu: U8 activations / S8 per-channel weights, scored on ONNX Runtime; openvino: scored on "
    "OpenVINO (NNCF competes); tensorrt: symmetric S8 QDQ by TensorRT's rules.",
)
@click.option(
    "--quantizer",
    type=click.Choice(QUANTIZER_CHOICES),
    default=_DEFAULTS["quantizer"],
    show_default=True,
    help="Who quantizes: edgexfer's recipe, edgexfer-bc (the recipe with bias correction), nncf (OpenVINO "
    "target; pip install 'edgexfer[nncf]'), modelopt (TensorRT target; pip install 'edgexfer[modelopt]'), or "
    "auto: every installed one serving the target competes on its runtime (accuracy, then latency).",
)
@click.option(
    "--calib",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder of calibration images (searched recursively) [the run's training split].",
)
@click.option(
    "--calib-size",
    default=_DEFAULTS["calib_size"],
    show_default=True,
    type=int,
    help="Calibration images, sampled deterministically (--seed).",
)
@click.option(
    "--calib-method",
    type=click.Choice(METHOD_CHOICES),
    default=_DEFAULTS["calib_method"],
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
    default=_DEFAULTS["max_fallback"],
    show_default=True,
    type=int,
    help="Most layers the guard may keep in float before it gives up (exit 3).",
)
@click.option(
    "--evidence-layers",
    default=_DEFAULTS["evidence_layers"],
    show_default=True,
    type=int,
    help="INT8 evidence in export/report.md: the layers (lowest SQNR first) whose top-1 drop when kept "
    "alone in float is measured (0: SQNR and latency share only).",
)
@click.option(
    "--qat-epochs",
    default=_DEFAULTS["qat_epochs"],
    show_default=True,
    type=int,
    help="Also train an edgexfer-qat candidate: N epochs of quantization-aware training on the run's training "
    "split under the target recipe's fake quantization; kept only when it beats the other candidates (0: off).",
)
@click.option(
    "--qat-lr",
    default=_DEFAULTS["qat_lr"],
    show_default=True,
    type=float,
    help="Learning rate of --qat-epochs (SGD with momentum, cosine decay to zero).",
)
@click.option(
    "--qat-images",
    default=_DEFAULTS["qat_images"],
    show_default=True,
    type=int,
    help="Training images per QAT epoch, a seeded sample of the run's training split (0: all of them).",
)
@click.option(
    "--eval-data",
    type=click.Path(path_type=Path),
    default=None,
    help="Labelled folder <class>/<image> for parity and INT8 scoring [the run's val split].",
)
@click.option(
    "--eval-size",
    default=_DEFAULTS["eval_size"],
    show_default=True,
    type=int,
    help="Held-out images for INT8 scoring.",
)
@click.option(
    "--auto-eval-size",
    default=_DEFAULTS["auto_eval_size"],
    show_default=True,
    type=int,
    help="Held-out images on which --calib-method auto compares the methods.",
)
@click.option(
    "--parity-images",
    default=_DEFAULTS["parity_images"],
    show_default=True,
    type=int,
    help="Held-out images on which the float and uint8 models are checked against their reference.",
)
@click.option(
    "--parity-atol",
    default=_DEFAULTS["parity_atol"],
    show_default=True,
    type=float,
    help="Parity gate: max abs logit difference <= atol + rtol * max|reference logit|.",
)
@click.option("--parity-rtol", default=_DEFAULTS["parity_rtol"], show_default=True, type=float)
@click.option("--seed", default=_DEFAULTS["seed"], show_default=True, type=int)
@click.option("--batch-size", default=_DEFAULTS["batch_size"], show_default=True, type=int)
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
def export(**_: Any) -> None:
    """Export a run's best checkpoint to ONNX (checked against torch), optionally INT8 per target."""
    from edgexfer.console import progress_enabled
    from edgexfer.stages.export import run_export

    config = config_from_params(click.get_current_context().params, progress_enabled())
    result = run_export(config)
    for name, path in result.paths.items():
        click.echo(f"{name:<20} {path}  [{_detail(result.metrics[name])}]")
    click.echo(f"manifest: {config.run_dir / 'manifest.json'}")
    precision = "int8" if config.int8 else "fp32"
    backend = "openvino" if config.int8 and config.target == "openvino" else "onnxruntime"
    click.echo(f"next: edgexfer build {shell_arg(config.run_dir)} --backend {backend} --precision {precision}")


def _detail(metrics: Dict[str, Any]) -> str:
    """One artifact's line: the INT8 accuracy summary, or the float/uint8 parity."""
    if "drop" in metrics:
        return (
            f"{metrics.get('quantizer', 'edgexfer')}/{metrics['calib_method']} "
            f"on {metrics.get('runtime', 'onnxruntime')}"
            f"{_rivals(metrics)}, top-1 {metrics['float_top1']:.2f} -> {metrics['int8_top1']:.2f} "
            f"(drop {metrics['drop']:.2f}) on {metrics['eval_images']} held-out images"
            + (
                f", {len(metrics['excluded_nodes'])} layer(s) in "
                f"{metrics.get('scoring', {}).get('float_layers_precision', 'float')}"
                if metrics["excluded_nodes"]
                else ""
            )
            + (f", scored on {metrics['scored_on']}" if metrics.get("scored_on") else "")
            + ("; INCONCLUSIVE: the float model is at chance here" if metrics.get("verdict") == "inconclusive" else "")
        )
    if "frame" in metrics:
        return (
            f"vs host preprocessing: max {metrics['max_grey_levels']:.1f} grey levels, logit cosine "
            f">= {metrics['min_cosine']:.4f}, top-1 agreement {metrics['top1_agreement']:.4f} "
            f"on {metrics['images']} images"
        )
    return (
        f"max abs diff {metrics['max_abs_diff']:.2e}, top-1 agreement "
        f"{metrics['top1_agreement']:.4f}"
        + (f"; reparameterized, max abs diff {metrics['reparam_max_abs_diff']:.2e} vs the trained form"
           if metrics.get("reparameterized") else "")
        + (" (up to date)" if metrics.get("reused") else "")
    )


def _rivals(metrics: Dict[str, Any]) -> str:
    """' (won against nncf)' when other quantizers competed."""
    others = [name for name in metrics.get("candidates", {}) if name != metrics.get("quantizer")]
    return f" (won against {', '.join(others)})" if others else ""
