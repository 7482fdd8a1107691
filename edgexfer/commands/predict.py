"""``edgexfer predict RUN_DIR_OR_ARTIFACT IMAGE...``: top-k predictions (see stages/predict.py)."""

from __future__ import annotations

import json
from typing import Any, Mapping

import click


def config_from_params(params: Mapping[str, Any], progress: bool) -> Any:
    """The :class:`~edgexfer.stages.predict.PredictConfig` for click's parameters."""
    from edgexfer.stages.predict import PredictConfig

    return PredictConfig(
        target=params["target"],
        images=params["images"],
        artifact=params["artifact"],
        backend=params["backend"],
        top_k=params["top_k"],
        batch_size=params["batch_size"],
        threads=params["threads"],
        provider=params["provider"],
        workers=params["workers"],
        in_flight=params["in_flight"],
        list_file=params["list_file"],
        video=params["video"],
        progress=progress,
    )


@click.command("predict")
@click.argument("target", type=click.Path(path_type=str))
@click.argument("images", nargs=-1, type=click.Path(path_type=str))
@click.option(
    "--artifact", default=None, help="Manifest artifact of RUN_DIR to use (default: the best usable)."
)
@click.option(
    "--backend", default=None, help="Runtime for a file target (default: by suffix; .onnx -> onnxruntime)."
)
@click.option("-k", "--top-k", type=int, default=5, show_default=True, help="Classes to show per image.")
@click.option("--batch-size", type=int, default=16, show_default=True, help="Images per inference call.")
@click.option("--threads", type=int, default=None, help="Threads for CPU runtimes (default: physical cores).")
@click.option(
    "--provider", default=None, help="ONNX Runtime execution provider: cpu, cuda, tensorrt or auto."
)
@click.option(
    "--workers", type=int, default=None,
    help="Decode threads working ahead of inference (default: up to 4; 0 decodes on the inference thread).",
)
@click.option(
    "--in-flight", type=int, default=0, show_default=True,
    help="Batches inferred at once (OpenVINO async requests, ONNX Runtime concurrent runs, TensorRT "
    "execution contexts); 0: the runtime's choice (1 with --workers 0 or one batch of images).",
)
@click.option(
    "--list", "list_file", type=click.Path(path_type=str), default=None,
    help="A text file of image paths, one per line (relative to the current folder; # comments).",
)
@click.option(
    "--video", default=None, metavar="FILE|CAMERA_INDEX",
    help="Predict every frame of a video file or camera (an index such as 0) through OpenCV "
    "(pip install 'edgexfer[video]'); one result per frame, streamed with --jsonl.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout (for machines).")
@click.option(
    "--jsonl", "as_jsonl", is_flag=True,
    help="Print one JSON line per image on stdout as soon as its batch is inferred (in input order).",
)
def predict(**params: Any) -> None:
    """Top-k class names and scores for IMAGE files (or folders of images, or quoted glob patterns such
    as 'photos/*.jpg', or the frames of --video) from a run directory or an artifact file (.onnx, .engine,
    .xml, .pt), preprocessed as the artifact's metadata says. Images are decoded on worker threads while
    the model runs. A raw-frame model (export --frame) gets each image as a frame of its size: resized
    (aspect kept, covering the frame, centre-cropped) only when the image's size differs."""
    from edgexfer.console import progress_enabled
    from edgexfer.errors import ConfigError
    from edgexfer.stages.predict import run_predict

    as_json, as_jsonl = params["as_json"], params["as_jsonl"]
    if as_json and as_jsonl:
        raise ConfigError("--json prints one document and --jsonl one line per image; choose one")
    config = config_from_params(params, progress_enabled())
    machine = as_json or as_jsonl
    if as_jsonl:
        result = run_predict(config, on_prediction=lambda item: click.echo(json.dumps(item)))
    else:
        result = run_predict(config)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    elif not as_jsonl:
        for item in result.predictions:
            ranked = ", ".join(f"{t['class']} {t['score']:.3f}" for t in item["top"])
            click.echo(f"{item['image']}: {ranked}")
    # Where the answer came from, and what to do next; on stderr for --json/--jsonl so stdout stays data.
    click.echo(
        f"predicted {result.images} image(s) with {result.artifact} ({result.backend}) at "
        f"{result.path}: {result.images_per_s:.1f} images/s ({result.in_flight} in flight)",
        err=machine,
    )
    click.echo("next: edgexfer verify RUN_DIR for accuracy parity, or edgexfer bench for latency", err=machine)
