"""``edgexfer bench`` end to end: make what to time through the real stages, then run the bench stage.

For each model (random weights unless a run directory is given: latency does not depend on the weights'
values) a run directory ``<work_dir>/<model>-<size>`` is prepared through the real stages -- checkpoint,
export (float, uint8-input and INT8 QDQ with calibration images), build per backend -- and reused while
its manifest says its artifacts are fresh, so a second ``make bench`` skips export, calibration and
build. This sits at the pipeline level, above the stages, because it runs export and build: no stage
imports another (``edgexfer.stages.bench`` only times and reports).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

from edgexfer.errors import ConfigError, DataError, EdgexferError
from edgexfer.stages.bench.config import BenchConfig, BenchPlan, BenchResult

log = logging.getLogger(__name__)

# Class names of a random-weight model when the calibration folder has no class sub-folders: one
# output per class either way (latency barely depends on the head's width).
NEUTRAL_CLASSES = tuple(f"class_{i}" for i in range(10))


def run_bench(config: BenchConfig) -> BenchResult:
    """Prepare the targets, time them and write ``<machine>.json``, ``<machine>.md`` and ``<machine>.png``."""
    from tqdm import tqdm

    from edgexfer.hardware import load_average, machine_slug, measurement_record, physical_cores
    from edgexfer.provenance import now_iso
    from edgexfer.stages.bench.config import selected_backends
    from edgexfer.stages.bench.document import bench_document, write_bench_outputs
    from edgexfer.stages.bench.inputs import synthetic_photos
    from edgexfer.stages.bench.measure import measure_plans
    from edgexfer.stages.bench.targets import run_plan
    from edgexfer.torchdeps import require_torch

    if config.run_dir is None:  # random-weight models are made by torchvision and exported by torch
        require_torch("bench of random-weight torchvision models (--model; bench a run's builds with --run DIR)")
    started, clock = now_iso(), time.perf_counter()
    threads = int(config.threads or physical_cores())
    backends, skipped = selected_backends(config)
    machine = measurement_record(threads)  # before preparing: the load average of other processes only
    name = config.machine_name or machine_slug(machine)
    photos = synthetic_photos(config.work_dir / "e2e-photos", seed=config.seed)
    if config.run_dir is not None:
        plans = [run_plan(config.run_dir, backends, config)]
    else:
        models = tqdm(config.models, desc="prepare models", unit="model", disable=None if config.progress else True)
        plans = [model_plan(model, backends, config) for model in models]
    for plan in plans:
        skipped.extend(plan.skipped)
    rows = measure_plans(config, plans, photos, threads)
    machine["load_average_end"] = load_average()
    facts = {"created": started, "threads": threads, "e2e_images": len(photos),
             "elapsed_s": time.perf_counter() - clock}
    return write_bench_outputs(config, bench_document(config, machine, name, rows, skipped, facts), name)


def model_plan(model: str, backends: List[str], config: BenchConfig) -> BenchPlan:
    """The reference and every (backend, precision) artifact of a random-weight ``model``; what cannot
    be built here is a skipped row with the reason."""
    from edgexfer.backends.base import REFERENCE_BACKEND, get_backend
    from edgexfer.stages.bench.targets import build_target, reference_target

    classes, eval_data = bench_classes(config)
    run_dir = random_run(model, classes, config)
    reference = reference_target(run_dir, model)
    export_for_bench(run_dir, backends, eval_data, config)
    plan = BenchPlan([reference] if REFERENCE_BACKEND in backends else [])
    for backend_name in (b for b in backends if b != REFERENCE_BACKEND):
        backend = get_backend(backend_name)
        for precision in config.precisions:
            try:
                backend.check_precision(precision)
            except ConfigError as exc:
                plan.skipped.append(_skip(model, backend_name, precision, str(exc)))
                continue
            try:
                name = build_for_bench(run_dir, backend_name, precision, eval_data, config)
            except EdgexferError as exc:
                plan.skipped.append(_skip(model, backend_name, precision, f"build failed: {exc}"))
                continue
            except Exception as exc:  # noqa: BLE001 - one backend's bug must not lose the other rows
                log.warning("building %s %s for %s failed", backend_name, precision, model, exc_info=True)
                reason = f"build failed: {type(exc).__name__}: {str(exc).splitlines()[0]}"
                plan.skipped.append(_skip(model, backend_name, precision, reason))
                continue
            plan.targets.append(build_target(run_dir, name, reference))
    if config.frame is not None:
        frame_targets(model, backends, classes, eval_data, reference, plan, config)
    return plan


def frame_targets(model: str, backends: List[str], classes: Tuple[str, ...], eval_data: Path, reference: Any,
                  plan: BenchPlan, config: BenchConfig) -> None:
    """``--frame``: the same random-weight model exported as a raw-frame model (float and INT8, in its own
    run directory ``<model>-<size>-frame-<H>x<W>-<format>``: a frame export replaces the uint8 model) and
    built per backend and precision from it (``<backend>_<precision>_frame``); rows it cannot make are
    skipped with the reason."""
    from edgexfer.backends.base import REFERENCE_BACKEND
    from edgexfer.stages.bench.targets import build_target

    spec = config.frame_spec
    run_dir = random_run(model, classes, config, suffix=f"-frame-{spec.text}-{spec.channel_order}")
    export_for_bench(run_dir, backends, eval_data, config, frame=spec)
    for backend_name in (b for b in backends if b != REFERENCE_BACKEND):
        for precision in config.precisions:
            try:
                name = build_for_bench(run_dir, backend_name, precision, eval_data, config, frame=True)
            except EdgexferError as exc:
                plan.skipped.append(_skip(model, backend_name, f"{precision} frame", f"build failed: {exc}"))
                continue
            plan.targets.append(build_target(run_dir, name, reference))


def _skip(model: str, backend: str, precision: str, reason: str) -> Dict[str, str]:
    return {"model": model, "backend": backend, "precision": precision, "reason": reason}


def bench_classes(config: BenchConfig) -> Tuple[Tuple[str, ...], Path]:
    """(class names of the random-weight models, labelled images for the export's checks): the calibration
    folder's class sub-folders and the folder itself, else :data:`NEUTRAL_CLASSES` and synthetic photos
    filed under them (labels of a random-weight model are meaningless either way)."""
    from edgexfer.stages.bench.inputs import synthetic_photos

    folder = config.calibration
    if not folder.is_dir():
        raise DataError(f"calibration folder '{folder}' does not exist; pass --calibration DIR with images")
    classes = tuple(sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")))
    if classes:
        return classes, folder
    labelled = config.work_dir / "eval-photos"
    for index, name in enumerate(NEUTRAL_CLASSES):
        synthetic_photos(labelled / name, count=2, seed=config.seed + index)
    return NEUTRAL_CLASSES, labelled


def random_run(model: str, classes: Tuple[str, ...], config: BenchConfig, suffix: str = "") -> Path:
    """``<work_dir>/<model>-<size><suffix>``: a seeded random-weight checkpoint of ``model``, reused while
    fresh and made for the same classes."""
    from edgexfer.manifest import Manifest
    from edgexfer.models import check_model_name
    from edgexfer.preprocess import Preprocess
    from edgexfer.random_run import write_random_run

    check_model_name(model)
    run_dir = (config.work_dir / f"{model}-{config.size}{suffix}").resolve()
    try:
        manifest = Manifest.open(run_dir)
        if manifest.is_fresh("checkpoint") and manifest.get("checkpoint").config.get("class_names") == list(classes):
            return run_dir
    except EdgexferError:
        pass
    return write_random_run(run_dir, model, classes, Preprocess.imagenet(config.size, augment="none"), config.seed)


def _fresh(manifest: Any, name: str) -> bool:
    return manifest.has(name) and manifest.is_fresh(name)


def export_for_bench(run_dir: Path, backends: List[str], eval_data: Path, config: BenchConfig,
                     frame: Any = None) -> None:
    """Run the real export stage (float, uint8-input, INT8 QDQ per target) unless its outputs are fresh;
    with ``frame`` (a FrameSpec) the raw-frame models instead of the uint8 ones.

    Random weights make the calibration method irrelevant for latency, so one method (minmax) and a small
    evaluation slice keep ``make bench`` short; the calibration images are real.
    """
    from edgexfer.backends.base import REFERENCE_BACKEND, get_backend
    from edgexfer.manifest import Manifest
    from edgexfer.stages.export import ExportConfig, run_export

    int8 = "int8" in config.precisions
    builders = [get_backend(b) for b in backends if b != REFERENCE_BACKEND] if int8 else []
    targets = sorted({backend.int8_target for backend in builders})
    needed = {"onnx"} | ({"onnx_uint8"} if config.uint8_input else set()) | {b.int8_source for b in builders}
    if frame is not None:
        needed = {"onnx", "onnx_frame"} | {f"{b.int8_source}_frame" for b in builders}
    if all(_fresh(Manifest.open(run_dir), name) for name in needed):
        return
    run_export(
        ExportConfig(
            run_dir=run_dir,
            uint8_input=config.uint8_input,
            uint8_layout="NHWC",
            frame=None if frame is None else frame.text,
            frame_format="rgb" if frame is None else frame.channel_order,
            int8=bool(targets),
            target=targets[0] if len(targets) == 1 else ("all" if targets else "cpu"),
            calib=config.calibration,
            calib_size=config.calibration_images,
            calib_method="minmax",
            eval_data=eval_data,
            eval_size=32,
            parity_images=8,
            batch_size=16,
            seed=config.seed,
            progress=config.progress,
        )
    )


def build_for_bench(run_dir: Path, backend: str, precision: str, smoke_data: Path, config: BenchConfig,
                    frame: bool = False) -> str:
    """Build ``<backend>_<precision>`` (``_frame`` from the raw-frame exports) through the real build stage
    (reused when fresh, same source), smoke-checked on ``smoke_data``."""
    from edgexfer.manifest import Manifest
    from edgexfer.stages.bench.variant import uint8_int8_variant
    from edgexfer.stages.build import BuildConfig, default_source, run_build

    source = default_source(backend, precision)
    if frame:
        source = "onnx_frame" if source == "onnx" else f"{source}_frame"
    elif config.uint8_input:
        source = "onnx_uint8" if source == "onnx" else uint8_int8_variant(run_dir, source, config.calibration)
    name = f"{backend}_{precision}" + ("_frame" if frame else "")
    manifest = Manifest.open(run_dir)
    if _fresh(manifest, name) and manifest.get(name).config.get("source") == source:
        return name
    run_build(
        BuildConfig(
            run_dir=run_dir,
            backend=backend,
            precision=precision,
            source=source,
            smoke=True,
            smoke_images=4,
            smoke_data=smoke_data,
            progress=config.progress,
        )
    )
    return name

