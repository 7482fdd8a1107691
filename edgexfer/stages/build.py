"""The build stage: turn a run's ONNX artifact into a runtime artifact and smoke-check it.

``run_build(BuildConfig(run_dir, backend, precision))`` picks the input the contracts name for that
backend and precision (float ``onnx`` for fp32/fp16, ``onnx_int8_cpu`` for ONNX Runtime / OpenVINO
int8, ``onnx_int8_tensorrt`` for TensorRT int8), checks it with ``Manifest.require``, builds
``build/<backend>_<precision>.<ext>``, runs it and the float ONNX on a few real images (the run's
validation split, or ``smoke_data``), and only then records it in the manifest as
``<backend>_<precision>``. A build whose outputs are not finite or drift past the smoke bound is not
recorded and fails with :class:`ParityError` (exit 3); ``edgexfer verify`` does the full parity study.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from edgexfer.errors import ArtifactError, ConfigError, DataError, ParityError, StaleArtifactError

log = logging.getLogger(__name__)

# Smoke bound: the minimum mean cosine similarity of logits against the float ONNX per precision.
# Loose on purpose (a random-init model at int8 still passes): it catches broken builds, not drift.
SMOKE_MIN_COSINE = {"fp32": 0.999, "fp16": 0.99, "int8": 0.9}


def default_source(backend: str, precision: str) -> str:
    """The manifest artifact a backend builds ``precision`` from (docs/contracts.md)."""
    from edgexfer.backends.base import get_backend

    return get_backend(backend).int8_source if precision == "int8" else "onnx"


@dataclass(frozen=True)
class BuildConfig:
    """Options of ``edgexfer build``. ``options`` are backend-specific (see each backend's ``build``)."""

    run_dir: Path
    backend: str = "onnxruntime"
    precision: str = "fp32"
    source: Optional[str] = None
    options: Dict[str, Any] = field(default_factory=dict)
    smoke: bool = True
    smoke_images: int = 8
    smoke_data: Optional[Path] = None
    smoke_min_cosine: Optional[float] = None
    progress: bool = True

    def __post_init__(self) -> None:
        from edgexfer.backends.base import BACKENDS, PRECISIONS

        object.__setattr__(self, "run_dir", Path(self.run_dir))
        if self.smoke_data is not None:
            object.__setattr__(self, "smoke_data", Path(self.smoke_data))
        if self.backend not in BACKENDS:
            from edgexfer.backends.base import get_backend

            get_backend(self.backend)  # raises the ConfigError that lists backends and availability
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision '{self.precision}'; choose one of {', '.join(PRECISIONS)}")
        if self.smoke_images < 1:
            raise ConfigError(f"smoke_images must be >= 1, got {self.smoke_images}")
        if self.smoke_min_cosine is not None and not -1.0 <= self.smoke_min_cosine <= 1.0:
            raise ConfigError(f"smoke_min_cosine must be in [-1, 1], got {self.smoke_min_cosine}")

    @property
    def artifact_name(self) -> str:
        """The manifest name of what this build records."""
        return f"{self.backend}_{self.precision}"


@dataclass
class BuildOutcome:
    """What :func:`run_build` made: the manifest name, file, build facts and smoke metrics."""

    name: str
    path: Path
    backend: str
    precision: str
    source: str
    seconds: float
    extra: Dict[str, Any] = field(default_factory=dict)
    smoke: Dict[str, Any] = field(default_factory=dict)


def run_build(config: BuildConfig) -> BuildOutcome:
    """Build, smoke-check, record. Raises before recording anything when a step fails."""
    from edgexfer.backends.base import get_backend
    from edgexfer.config import to_dict
    from edgexfer.manifest import Manifest, now_iso

    started = now_iso()
    backend = get_backend(config.backend)
    backend.require_available()
    backend.check_precision(config.precision)
    manifest = Manifest.open(config.run_dir)
    source = config.source or default_source(config.backend, config.precision)
    if not manifest.has(source):
        raise ArtifactError(_missing_source_message(config, source, manifest))
    source_sha = manifest.require(source).sha256
    source_path = manifest.path_of(source)
    with _progress(config, total=2 if config.smoke else 1) as steps:
        t0 = time.perf_counter()
        steps.set_description(f"building {config.artifact_name}")
        result = backend.build(source_path, config.precision, config.run_dir / "build", dict(config.options))
        seconds = time.perf_counter() - t0
        steps.update(1)
        smoke: Dict[str, Any] = {}
        if config.smoke:
            steps.set_description("smoke check")
            smoke = smoke_check(config, manifest, result.path)
            steps.update(1)
    record_config = {
        **to_dict(config),
        "backend": config.backend,
        "precision": config.precision,
        "source": source,
    }
    extra = {**result.extra, "backend": config.backend, "precision": config.precision}
    with Manifest.update(config.run_dir) as fresh:
        if fresh.require(source).sha256 != source_sha:  # another process re-exported meanwhile
            raise StaleArtifactError(
                f"'{source}' changed while {config.artifact_name} was being built; run the build again"
            )
        fresh.add_artifact(
            config.artifact_name,
            result.path,
            kind=result.kind,
            stage="build",
            inputs=[source],
            config=record_config,
            metrics={"build_seconds": round(seconds, 3), "smoke": smoke},
            extra=extra,
        )
        builds = dict(fresh.stage("build").get("artifacts", {}))
        builds[config.artifact_name] = {"source": source, "seconds": round(seconds, 3)}
        fresh.record_stage(
            "build", record_config, metrics={"smoke": smoke}, started=started, artifacts=builds
        )
    return BuildOutcome(
        name=config.artifact_name,
        path=result.path,
        backend=config.backend,
        precision=config.precision,
        source=source,
        seconds=seconds,
        extra=extra,
        smoke=smoke,
    )


def _missing_source_message(config: BuildConfig, source: str, manifest: Any) -> str:
    have = ", ".join(sorted(manifest.artifacts)) or "none"
    if source == "onnx_int8_tensorrt":
        how = f"'edgexfer export {config.run_dir} --int8 --target tensorrt'"
    elif source == "onnx_int8_cpu":
        how = f"'edgexfer export {config.run_dir} --int8 --target cpu'"
    else:
        how = f"'edgexfer export {config.run_dir}'"
    return (
        f"building {config.backend} {config.precision} needs the '{source}' artifact, which run "
        f"'{config.run_dir}' does not have (it has: {have}); make it with {how}"
    )


def _progress(config: BuildConfig, total: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, disable=not config.progress, leave=False, unit="step", file=None)


# ---- smoke check --------------------------------------------------------------------------------
def smoke_images(config: BuildConfig) -> List[Any]:
    """A few real images, evenly spaced over the run's validation split (or ``smoke_data``)."""
    from edgexfer.data import folder_samples, samples_for_run

    if config.smoke_data is not None:
        samples = folder_samples(config.smoke_data)
    else:
        try:
            samples = samples_for_run(config.run_dir, "val")
        except ArtifactError as exc:
            raise DataError(
                f"no images for the build smoke check ({exc}); pass --smoke-data DIR with a few "
                "images, or --no-smoke"
            ) from exc
    if len(samples) == 0:
        raise DataError("the smoke-check data has no images; pass --smoke-data DIR or --no-smoke")
    count = min(config.smoke_images, len(samples))
    indices = np.unique(np.linspace(0, len(samples) - 1, count).round().astype(int))
    return [samples.image(int(i)) for i in indices]


def smoke_check(config: BuildConfig, manifest: Any, artifact: Path) -> Dict[str, Any]:
    """Run the new artifact and the float ONNX (ONNX Runtime) on the same images; compare logits."""
    from edgexfer.backends.base import get_backend
    from edgexfer.metrics import cosine_similarity
    from edgexfer.onnxmeta import read_metadata
    from edgexfer.preprocess import images_to_batch

    if not manifest.has("onnx"):
        raise ArtifactError(
            f"the smoke check compares with the float ONNX model, which run '{config.run_dir}' "
            f"lacks; run 'edgexfer export {config.run_dir}' or build with --no-smoke"
        )
    reference_path = manifest.path_of("onnx")
    preprocess = read_metadata(reference_path).preprocess
    images = smoke_images(config)
    with get_backend("onnxruntime").load(reference_path) as runner:
        reference = runner.infer(images_to_batch(images, preprocess, runner.input_dtype, runner.input_layout))
    with get_backend(config.backend).load(artifact) as runner:
        built = runner.infer(images_to_batch(images, preprocess, runner.input_dtype, runner.input_layout))
    if built.shape != reference.shape:
        raise ParityError(
            f"{artifact.name} returns logits of shape {built.shape}, the float model "
            f"{reference.shape}; the build is broken (it was not recorded)"
        )
    if not np.all(np.isfinite(built)):
        raise ParityError(
            f"{artifact.name} returns NaN/Inf logits on real images; the build is broken "
            "(it was not recorded)"
        )
    cosine = cosine_similarity(reference, built)
    bound = (
        config.smoke_min_cosine if config.smoke_min_cosine is not None else SMOKE_MIN_COSINE[config.precision]
    )
    metrics = {
        "images": len(images),
        "mean_cosine": float(cosine.mean()),
        "min_cosine": float(cosine.min()),
        "max_abs_diff": float(np.abs(built - reference).max()),
        "top1_agreement": float((built.argmax(1) == reference.argmax(1)).mean()),
        "min_cosine_bound": bound,
    }
    if metrics["mean_cosine"] < bound:
        raise ParityError(
            f"{artifact.name} disagrees with the float ONNX on {len(images)} real images: mean logit "
            f"cosine {metrics['mean_cosine']:.4f} < {bound} (top-1 agreement "
            f"{metrics['top1_agreement']:.0%}); it was left at {artifact} but not recorded"
        )
    return metrics
