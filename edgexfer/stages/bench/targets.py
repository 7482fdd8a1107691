"""What a run directory offers the bench: its float reference (the checkpoint) and its recorded builds."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List

from edgexfer.errors import ConfigError
from edgexfer.stages.bench.config import BenchConfig, BenchPlan, BenchTarget


def reference_target(run_dir: Path, model: str = "") -> BenchTarget:
    """The float reference of a run: its checkpoint, run by the reference backend. Without torch it is
    the float ONNX model (:func:`edgexfer.reference.float_reference`), which only lends its model name
    and preprocessing: the timed float rows are then the run's builds."""
    from edgexfer.manifest import Manifest
    from edgexfer.reference import float_reference

    reference = float_reference(Manifest.open(run_dir))
    return BenchTarget(
        model=model or reference.arch,
        backend=reference.backend,
        precision="fp32",
        path=reference.path,
        preprocess=reference.preprocess,
        artifact=reference.artifact,
    )


def build_target(run_dir: Path, name: str, reference: BenchTarget) -> BenchTarget:
    """The recorded build ``name`` of a run (checked fresh), timed with the reference's preprocessing (or fed
    raw frames, when its metadata says it takes them)."""
    from edgexfer.backends.base import artifact_target
    from edgexfer.manifest import Manifest

    from edgexfer.backends.sidecar import artifact_metadata
    from edgexfer.frames import frame_spec

    manifest = Manifest.open(run_dir)
    manifest.require(name)
    backend, precision = artifact_target(name, manifest.get(name))
    path = manifest.path_of(name)
    return BenchTarget(model=reference.model, backend=backend, precision=precision, path=path,
                       preprocess=reference.preprocess, artifact=name, frame=frame_spec(artifact_metadata(path)))


def run_plan(run_dir: Path, backends: List[str], config: BenchConfig) -> BenchPlan:
    """The reference and every built artifact of an existing run, for the chosen backends and precisions."""
    from edgexfer.backends.base import REFERENCE_BACKEND, artifact_target
    from edgexfer.manifest import Manifest

    reference = reference_target(run_dir)
    manifest = Manifest.open(run_dir)
    builds = []
    for name, record in sorted(manifest.artifacts.items()):
        if record.stage != "build":
            continue
        backend, precision = artifact_target(name, record)
        if backend in backends and precision in config.precisions:
            builds.append(build_target(run_dir, name, reference))
    if config.frame is not None:
        builds = _frame_builds(run_dir, builds, config.frame_spec)
    if not builds:  # the reference alone (or nothing, without torch) is no bench of this run
        raise ConfigError(
            f"run '{run_dir}' has no built artifacts to bench; build one first, e.g. "
            f"'edgexfer build {run_dir} --backend onnxruntime --precision int8'"
        )
    timed_reference = reference.backend == REFERENCE_BACKEND and REFERENCE_BACKEND in backends
    return BenchPlan(([reference] if timed_reference else []) + builds)


def _frame_builds(run_dir: Path, builds: List[BenchTarget], spec: Any) -> List[BenchTarget]:
    """``--frame`` with ``--run``: the run's ordinary builds and its raw-frame builds of that frame (size and
    channel order) only; a run without one is a ConfigError naming the frames it has."""
    chosen = [b for b in builds if b.frame is None or b.frame == spec]
    if any(b.frame is not None for b in chosen):
        return chosen
    have = sorted({f"{b.frame.text} {b.frame.channel_order}" for b in builds if b.frame is not None})
    raise ConfigError(
        f"run '{run_dir}' has no raw-frame build of {spec.text} {spec.channel_order} (frame builds: "
        f"{', '.join(have) or 'none'}); build one with 'edgexfer build {run_dir} --source onnx_frame' after "
        f"'edgexfer export {run_dir} --uint8-input --frame {spec.text} --frame-format {spec.channel_order}'"
    )
