"""``edgexfer predict RUN_DIR_OR_ARTIFACT IMAGE...``: top-k predictions (see stages/predict.py)."""

from __future__ import annotations

import json
from typing import Optional, Tuple

import click


@click.command("predict")
@click.argument("target", type=click.Path(path_type=str))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=str))
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
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout (for machines).")
def predict(
    target: str,
    images: Tuple[str, ...],
    artifact: Optional[str],
    backend: Optional[str],
    top_k: int,
    batch_size: int,
    threads: Optional[int],
    provider: Optional[str],
    as_json: bool,
) -> None:
    """Top-k class names and scores for IMAGE files (or folders of images) from a run directory or an
    artifact file (.onnx, .engine, .xml, .pt), preprocessed as the artifact's metadata says."""
    from edgexfer.stages.predict import PredictConfig, run_predict

    config = PredictConfig(
        target=target,
        images=images,
        artifact=artifact,
        backend=backend,
        top_k=top_k,
        batch_size=batch_size,
        threads=threads,
        provider=provider,
    )
    result = run_predict(config)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        for item in result.predictions:
            ranked = ", ".join(f"{t['class']} {t['score']:.3f}" for t in item["top"])
            click.echo(f"{item['image']}: {ranked}")
    # Where the answer came from, and what to do next; on stderr with --json so stdout stays one document.
    click.echo(
        f"predicted {len(result.predictions)} image(s) with {result.artifact} ({result.backend}) at "
        f"{result.path}",
        err=as_json,
    )
    click.echo(
        "next: edgexfer verify RUN_DIR for accuracy parity, or edgexfer bench for latency", err=as_json
    )
