"""The build stage: turn a run's ONNX artifact into a runtime artifact and smoke-check it.

``run_build(BuildConfig(run_dir, backend, precision))`` picks the input the contracts name for that
backend and precision (float ``onnx`` for fp32/fp16, the backend's ``int8_source`` for int8), checks it
with ``Manifest.require``, and builds into a private staging folder ``build/.<name>.<random>.partial/``.
There the new artifact and the float ONNX run on a few real images (the run's validation split, or
``smoke_data``); only when they agree are the artifact's files (:meth:`Backend.artifact_files`) renamed
into ``build/`` and recorded as ``<backend>_<precision>``. A failed check or a kill before that leaves
the previous build and its record untouched. A build whose outputs are not finite or miss the smoke
gate fails with :class:`ParityError` (exit 3); ``edgexfer verify`` does the full parity study. Where the
smoke images have labels of the model's classes, a float model that is not better than chance on them
(:func:`edgexfer.parity.chance_check`) makes the check ``inconclusive``: recorded, and said in one
warning, since agreement with such a model proves the build copies it, not that it works.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from edgexfer.compare import Tolerance
from edgexfer.errors import ArtifactError, ConfigError, DataError, ParityError, StaleArtifactError

log = logging.getLogger(__name__)

# The smoke gate per precision: logits of the build vs the float ONNX on a few real images. Loose on
# purpose (it catches broken builds, not drift; verify measures drift). Measured with resnet18 on
# real images: a correct build has mean cosine >= 0.9997 at int8 and 1.0000 at fp32, top-1 agreement
# 1.0 (also random-init resnet18 / mobilenet_v3_large / efficientnet_b0 at 224, the bench models); an
# INT8 build from wrong weights on a trained model has mean cosine -0.15 to 0.24 and agreement 0.13 to
# 0.50 (random init, one epoch), from another training run of the same task 0.86 and 1.0. Agreement
# catches what cosine alone misses when two models' logits share a large common offset; on 8 images,
# 0.6 lets 3 flips pass, which an INT8 model flipping 15% of real images exceeds only 2% of the time.
SMOKE_TOLERANCE: Dict[str, Tolerance] = {
    "fp32": Tolerance(min_mean_cosine=0.999, min_agreement=0.75),
    "fp16": Tolerance(min_mean_cosine=0.99, min_agreement=0.75),
    "int8": Tolerance(min_mean_cosine=0.9, min_agreement=0.6),
}


def default_source(backend: str, precision: str) -> str:
    """The manifest artifact a backend builds ``precision`` from (docs/contracts.md)."""
    from edgexfer.backends.base import get_backend

    return get_backend(backend).int8_source if precision == "int8" else "onnx"


def available_source(backend: str, precision: str, manifest: Any) -> str:
    """:func:`default_source`, or the first of the backend's ``int8_fallback_sources`` the run has when it
    lacks that one (OpenVINO builds int8 from the CPU QDQ model of a run exported without its target)."""
    from edgexfer.backends.base import get_backend

    source = default_source(backend, precision)
    if precision != "int8" or manifest.has(source):
        return source
    for fallback in get_backend(backend).int8_fallback_sources:
        if manifest.has(fallback):
            log.info("%s int8: the run has no '%s'; building from '%s'", backend, source, fallback)
            return fallback
    return source


@dataclass(frozen=True)
class BuildConfig:
    """Options of ``edgexfer build``. ``options`` are the backend's declared build options
    (:attr:`Backend.build_options`), checked here, so a YAML pipeline is checked like the CLI."""

    run_dir: Path
    backend: str = "onnxruntime"
    precision: str = "fp32"
    source: Optional[str] = None
    options: Dict[str, Any] = field(default_factory=dict)
    smoke: bool = True
    smoke_images: int = 8
    smoke_data: Optional[Path] = None
    smoke_tolerance: Optional[Tolerance] = None
    progress: bool = True

    def __post_init__(self) -> None:
        from edgexfer.backends.base import BACKENDS, PRECISIONS, check_build_options, get_backend

        object.__setattr__(self, "run_dir", Path(self.run_dir))
        if self.smoke_data is not None:
            object.__setattr__(self, "smoke_data", Path(self.smoke_data))
        if self.backend not in BACKENDS:
            get_backend(self.backend)  # raises the ConfigError that lists backends and availability
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision '{self.precision}'; choose one of {', '.join(PRECISIONS)}")
        check_build_options(self.backend, self.options)
        if self.smoke_images < 1:
            raise ConfigError(f"smoke_images must be >= 1, got {self.smoke_images}")

    @property
    def artifact_name(self) -> str:
        """The manifest name of what this build records: ``<backend>_<precision>``, with ``_frame`` added
        when built from a raw-frame export (``--source onnx_frame`` / ``onnx_int8_<target>_frame``), so it
        stands beside the build that takes preprocessed input instead of replacing it."""
        frame = "_frame" if (self.source or "").endswith("_frame") else ""
        return f"{self.backend}_{self.precision}{frame}"

    @property
    def tolerance(self) -> Tolerance:
        """The smoke gate: ``smoke_tolerance``, else the default for the precision."""
        return self.smoke_tolerance or SMOKE_TOLERANCE[self.precision]


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
    """Build in a staging folder, smoke-check there, then move into ``build/`` and record."""
    from edgexfer.backends.base import get_backend
    from edgexfer.manifest import Manifest
    from edgexfer.provenance import now_iso

    started = now_iso()
    backend = get_backend(config.backend)
    backend.require_available()
    backend.check_precision(config.precision)
    manifest = Manifest.open(config.run_dir)
    source = config.source or available_source(config.backend, config.precision, manifest)
    if not manifest.has(source):
        raise ArtifactError(_missing_source_message(config, source, manifest))
    source_sha = manifest.require(source).sha256
    build_dir = config.run_dir / "build"
    with _staging(build_dir, config.artifact_name) as staging:
        with _progress(config, total=2 if config.smoke else 1) as steps:
            t0 = time.perf_counter()
            steps.set_description(f"building {config.artifact_name}")
            result = backend.build(manifest.path_of(source), config.precision, staging, dict(config.options))
            result = _renamed(result, config.artifact_name)
            seconds = time.perf_counter() - t0
            steps.update(1)
            smoke: Dict[str, Any] = {}
            if config.smoke:
                steps.set_description("smoke check")
                smoke = smoke_check(config, manifest, result.path)
                steps.update(1)
        files = _install(config, backend.artifact_files(result.path), source, source_sha, build_dir)
    outcome = BuildOutcome(
        name=config.artifact_name,
        path=build_dir / result.path.name,
        backend=config.backend,
        precision=config.precision,
        source=source,
        seconds=seconds,
        extra={**result.extra, "backend": config.backend, "precision": config.precision},
        smoke=smoke,
    )
    _record(config, outcome, result.kind, files, source_sha, started)
    return outcome


def _renamed(result: Any, name: str) -> Any:
    """The staged build with every file of its stem renamed to ``name`` (a frame build's engine, IR weights
    and sidecar get ``_frame`` so they never overwrite the other build's files)."""
    import dataclasses

    stem = result.path.stem
    if stem == name:
        return result
    for path in list(result.path.parent.iterdir()):
        if path.is_file() and path.stem == stem:
            path.rename(path.with_name(name + path.suffix))
    return dataclasses.replace(result, path=result.path.with_name(name + result.path.suffix))


@contextlib.contextmanager
def _staging(build_dir: Path, name: str) -> Iterator[Path]:
    """A private folder beside the recorded builds (same file system, so moving out is a rename);
    removed afterwards, also on failure and Ctrl-C. A SIGKILL leaves it behind, hidden and unrecorded."""
    from edgexfer.backends.base import STAGING_SUFFIX

    build_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=STAGING_SUFFIX, dir=str(build_dir)))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _install(config: BuildConfig, staged: List[Path], source: str, source_sha: str, build_dir: Path) -> List[Path]:
    """Move the checked files into ``build/``. The previous record is dropped first, so no record ever
    describes a file that is being replaced (a kill in between leaves the build unrecorded)."""
    from edgexfer.manifest import Manifest

    with Manifest.update(config.run_dir) as fresh:
        _check_source(fresh, source, source_sha, config.artifact_name)
        fresh.remove_artifact(config.artifact_name)
    installed = []
    for path in staged:  # the artifact itself last: who finds it finds its weights and sidecar
        os.replace(path, build_dir / path.name)
        installed.append(build_dir / path.name)
    return installed


def _record(config: BuildConfig, outcome: BuildOutcome, kind: str, files: List[Path], source_sha: str,
            started: str) -> None:
    """Record the installed build (its other files hashed with it) and the build stage."""
    from edgexfer.config import to_dict
    from edgexfer.manifest import Manifest

    seconds = round(outcome.seconds, 3)
    record_config = {**to_dict(config), "backend": config.backend, "precision": config.precision,
                     "source": outcome.source}
    with Manifest.update(config.run_dir) as fresh:
        _check_source(fresh, outcome.source, source_sha, outcome.name)
        fresh.add_artifact(outcome.name, outcome.path, kind=kind, stage="build", inputs=[outcome.source],
                           config=record_config, metrics={"build_seconds": seconds, "smoke": outcome.smoke},
                           extra=outcome.extra, companions=[f for f in files if f != outcome.path])
        builds = dict(fresh.stage("build").get("artifacts", {}))
        builds[outcome.name] = {"source": outcome.source, "seconds": seconds}
        fresh.record_stage("build", record_config, metrics={"smoke": outcome.smoke}, started=started,
                           artifacts=builds)


def _check_source(manifest: Any, source: str, source_sha: str, name: str) -> None:
    if manifest.require(source).sha256 != source_sha:  # another process re-exported meanwhile
        raise StaleArtifactError(f"'{source}' changed while {name} was being built; run the build again")


def _missing_source_message(config: BuildConfig, source: str, manifest: Any) -> str:
    """Which artifact is missing and the export that makes it (the target from the backend that
    builds int8 from it)."""
    from edgexfer.backends.base import BACKENDS, get_backend

    have = ", ".join(sorted(manifest.artifacts)) or "none"
    targets = {get_backend(name).int8_source: get_backend(name).int8_target for name in BACKENDS}
    how = f"'edgexfer export {config.run_dir}'"
    if source in targets:
        how = f"'edgexfer export {config.run_dir} --int8 --target {targets[source]}'"
        fallbacks = get_backend(config.backend).int8_fallback_sources if config.source is None else ()
        if fallbacks:
            how += f" (or one of {', '.join(fallbacks)}: --target {', '.join(targets[f] for f in fallbacks)})"
    return (
        f"building {config.backend} {config.precision} needs the '{source}' artifact, which run "
        f"'{config.run_dir}' does not have (it has: {have}); make it with {how}"
    )


def _progress(config: BuildConfig, total: int) -> Any:
    from tqdm import tqdm

    # disable=None: tqdm draws only on a terminal; progress=False turns it off everywhere.
    return tqdm(total=total, disable=None if config.progress else True, leave=False, unit="step")


# ---- smoke check --------------------------------------------------------------------------------
def smoke_images(
    config: BuildConfig, class_names: List[str], preprocess: Any
) -> Tuple[List[Any], Optional[np.ndarray]]:
    """A few real images, evenly spaced over the run's validation split (or ``smoke_data``), loaded for
    ``preprocess``, and their labels in the order of the model's ``class_names`` (None when the folders are
    not its classes)."""
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
    samples = samples.for_preprocess(preprocess)
    images = [samples.image(int(i)) for i in indices]
    if not set(samples.class_names) <= set(class_names):
        return images, None
    order = np.array([class_names.index(name) for name in samples.class_names])
    return images, order[samples.labels[indices]]


def _smoke_batch(images: List[Any], preprocess: Any, runner: Any, frame: Any, built: bool) -> np.ndarray:
    """The smoke images in the runner's input format; for a raw-frame build both sides see the same frames
    (each image made into a frame), the build raw and the float reference through the host preprocessing."""
    from edgexfer.preprocess import images_to_batch

    if frame is None:
        return images_to_batch(images, preprocess, runner.input_dtype, runner.input_layout)
    from edgexfer.framegraph import host_reference
    from edgexfer.frames import image_to_frame

    frames = np.stack([image_to_frame(image, frame) for image in images])
    return frames if built else np.stack([host_reference(f, preprocess, frame.channel_order) for f in frames])


def smoke_check(config: BuildConfig, manifest: Any, artifact: Path) -> Dict[str, Any]:
    """Run the new artifact and the float ONNX (ONNX Runtime) on the same images; compare their logits
    with :func:`edgexfer.compare.compare_logits` against :attr:`BuildConfig.tolerance`; where the
    images have labels, say whether the float model is better than chance on them (``verdict``)."""
    from edgexfer.backends.base import get_backend
    from edgexfer.compare import compare_logits
    from edgexfer.config import to_dict
    from edgexfer.onnxmeta import read_metadata
    from edgexfer.parity import chance_check

    if not manifest.has("onnx"):
        raise ArtifactError(
            f"the smoke check compares with the float ONNX model, which run '{config.run_dir}' "
            f"lacks; run 'edgexfer export {config.run_dir}' or build with --no-smoke"
        )
    from edgexfer.backends.sidecar import artifact_metadata
    from edgexfer.frames import frame_spec

    reference_path = manifest.path_of("onnx")
    metadata = read_metadata(reference_path)
    preprocess = metadata.preprocess
    images, labels = smoke_images(config, list(metadata.class_names), preprocess)
    frame = frame_spec(artifact_metadata(artifact))
    logits = []
    for built, name, path in ((False, "onnxruntime", reference_path), (True, config.backend, artifact)):
        with get_backend(name).load(path) as runner:
            logits.append(runner.infer(_smoke_batch(images, preprocess, runner, frame, built)))
    reference, built = logits
    if built.shape != reference.shape:
        raise ParityError(
            f"{artifact.name} returns logits of shape {built.shape}, the float model "
            f"{reference.shape}; the build is broken (it was not recorded)"
        )
    comparison = compare_logits(reference, built)
    failed = config.tolerance.failures(comparison)
    if failed:
        raise ParityError(
            f"{artifact.name} disagrees with the float ONNX on {comparison.images} real images: "
            f"{'; '.join(failed)}; it was not recorded (a previous build, if any, is unchanged)"
        )
    chance = None if labels is None else chance_check(reference, labels)
    if chance is not None and not chance.above_chance:
        log.warning("smoke check of %s inconclusive: %s", artifact.name, chance.reason)
    verdict = "inconclusive" if chance is not None and not chance.above_chance else "passed"
    return {**comparison.to_dict(), "tolerance": to_dict(config.tolerance), "verdict": verdict,
            "reference_vs_chance": None if chance is None else chance.to_dict()}
