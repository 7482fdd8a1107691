"""What the bench stage times: random-weight model runs made through the real export and build stages,
or the built artifacts of an existing run directory.

A random-weight run lives in ``<work_dir>/<model>-<size>`` and is reused while its manifest says its
artifacts are fresh, so a second ``make bench`` skips export, calibration and build.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

from edgexfer.errors import ConfigError, EdgexferError

log = logging.getLogger(__name__)

# Calibration classes of the shipped set; a random-weight model gets one output per class so the
# calibration folder's labels fit it (latency barely depends on the head's width).
CALIBRATION_CLASSES = (
    "Ankle_boot",
    "Bag",
    "Coat",
    "Dress",
    "Pullover",
    "Sandal",
    "Shirt",
    "Sneaker",
    "T-shirt_top",
    "Trouser",
)


def random_run(model: str, config: Any) -> Path:
    """A run directory holding a seeded random-weight checkpoint of ``model`` at ``config.size``."""
    import torch

    from edgexfer.checkpoint import CheckpointMeta, save_checkpoint
    from edgexfer.manifest import Manifest
    from edgexfer.models import build_model, check_model_name
    from edgexfer.preprocess import Preprocess

    check_model_name(model)
    run_dir = (Path(config.work_dir) / f"{model}-{config.size}").resolve()
    try:
        if Manifest.open(run_dir).is_fresh("checkpoint"):
            return run_dir
    except EdgexferError:
        pass
    torch.manual_seed(config.seed)
    net = build_model(model, len(CALIBRATION_CLASSES)).eval()
    meta = CheckpointMeta(
        arch=model,
        class_names=list(CALIBRATION_CLASSES),
        preprocess=Preprocess.imagenet(config.size, augment="none"),
        weights_source="random initialisation (bench)",
    )
    save_checkpoint(run_dir / "finetune" / "best.pt", net.state_dict(), meta)
    with Manifest.update(run_dir, create=True) as manifest:
        manifest.add_artifact(
            "checkpoint",
            run_dir / "finetune" / "best.pt",
            kind="checkpoint",
            stage="finetune",
            config={"arch": model, "weights": "random"},
        )
        manifest.record_stage(
            "finetune", {"arch": model, "class_names": list(CALIBRATION_CLASSES), "weights": "random (bench)"}
        )
    return run_dir


def torch_target(model: str, run_dir: Path) -> Any:
    """The torch eager float reference of a run (its checkpoint)."""
    from edgexfer.checkpoint import meta_from_payload, read_checkpoint_file
    from edgexfer.manifest import Manifest
    from edgexfer.stages.bench import BenchTarget

    manifest = Manifest.open(run_dir)
    manifest.require("checkpoint")
    path = manifest.path_of("checkpoint")
    meta = meta_from_payload(read_checkpoint_file(path), str(path))
    return BenchTarget(
        model=model or meta.arch,
        backend="torch",
        precision="fp32",
        path=path,
        preprocess=meta.preprocess,
        artifact="checkpoint",
    )


def run_targets(run_dir: Path, backends: List[str], config: Any) -> Tuple[List[Any], List[Dict[str, Any]]]:
    """The torch reference and every built artifact of an existing run, for the chosen backends."""
    from edgexfer.manifest import Manifest
    from edgexfer.stages.bench import BenchTarget

    reference = torch_target("", run_dir)
    manifest = Manifest.open(run_dir)
    targets = [reference] if "torch" in backends else []
    for name, record in sorted(manifest.artifacts.items()):
        if record.stage != "build":
            continue
        backend = str(record.extra.get("backend") or name.split("_", 1)[0])
        precision = str(record.extra.get("precision") or name.split("_", 1)[-1])
        if backend in backends and precision in config.precisions:
            manifest.require(name)
            targets.append(
                BenchTarget(
                    model=reference.model,
                    backend=backend,
                    precision=precision,
                    path=manifest.path_of(name),
                    preprocess=reference.preprocess,
                    artifact=name,
                )
            )
    if len(targets) <= 1:
        raise ConfigError(
            f"run '{run_dir}' has no built artifacts to bench; build one first, e.g. "
            f"'edgexfer build {run_dir} --backend onnxruntime --precision int8'"
        )
    return targets, []


def _fresh(manifest: Any, name: str) -> bool:
    return manifest.has(name) and manifest.is_fresh(name)


def export_for_bench(run_dir: Path, backends: List[str], config: Any) -> None:
    """Run the real export stage (float, uint8-input, INT8 QDQ per target) unless its outputs are fresh.

    Random weights make calibration-method choice irrelevant for latency, so one method (minmax) and a
    small evaluation slice keep ``make bench`` short; the calibration images are real.
    """
    from edgexfer.manifest import Manifest
    from edgexfer.stages.build import default_source
    from edgexfer.stages.export import ExportConfig, run_export

    int8 = "int8" in config.precisions
    sources = {default_source(b, "int8") for b in backends if b != "torch"} if int8 else set()
    needed = {"onnx"} | ({"onnx_uint8"} if config.uint8_input else set()) | sources
    manifest = Manifest.open(run_dir)
    if all(_fresh(manifest, name) for name in needed):
        return
    target = "all" if len(sources) > 1 else ("tensorrt" if sources == {"onnx_int8_tensorrt"} else "cpu")
    run_export(
        ExportConfig(
            run_dir=run_dir,
            uint8_input=config.uint8_input,
            uint8_layout="NHWC",
            int8=int8,
            target=target,
            calib=config.calibration,
            calib_size=config.calibration_images,
            calib_method="minmax",
            eval_data=config.calibration,
            eval_size=32,
            parity_images=8,
            batch_size=16,
            seed=config.seed,
            progress=config.progress,
        )
    )


def uint8_int8_variant(run_dir: Path, source: str) -> str:
    """``<source>_uint8``: the INT8 QDQ model with uint8 pixel input, made with
    :func:`edgexfer.onnxedit.with_uint8_input` (normalisation folded in front) and checked against
    ``source``."""
    import os

    import onnx

    from edgexfer.fsutil import atomic_path
    from edgexfer.manifest import Manifest
    from edgexfer.metrics import cosine_similarity
    from edgexfer.onnxmeta import read_metadata
    from edgexfer.backends.onnxruntime import session_logits
    from edgexfer.onnxedit import with_uint8_input

    name = f"{source}_uint8"
    manifest = Manifest.open(run_dir)
    if _fresh(manifest, name):
        return name
    source_path = manifest.path_of(source)
    meta = read_metadata(source_path)
    preprocess = meta.preprocess
    model = with_uint8_input(_free_names(onnx.load(os.fspath(source_path)), _UINT8_NAMES), preprocess, "NHWC")
    entry = {p.key: p.value for p in model.metadata_props}
    entry["edgexfer.input_format"] = "uint8_nhwc"
    del model.metadata_props[:]
    for key, value in entry.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(4, 3, preprocess.size, preprocess.size), dtype=np.uint8)
    mean = np.asarray(preprocess.mean, np.float32)[None, :, None, None]
    std = np.asarray(preprocess.std, np.float32)[None, :, None, None]
    floats = ((pixels.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)
    path = run_dir / "export" / f"{Path(source_path).stem}_uint8_nhwc.onnx"
    with atomic_path(path) as tmp:
        onnx.save(model, os.fspath(tmp))
        got = session_logits(tmp, np.ascontiguousarray(pixels.transpose(0, 2, 3, 1)), 4)
        want = session_logits(source_path, floats, 4)
        cosine = float(cosine_similarity(want, got).min())
        if cosine < 0.99:
            raise ConfigError(
                f"the uint8-input variant of '{source}' disagrees with it (cosine {cosine:.4f})"
            )
    with Manifest.update(run_dir) as fresh:
        fresh.add_artifact(
            name,
            path,
            kind="onnx-qdq",
            stage="bench",
            inputs=[source],
            config={"layout": "NHWC", "made_by": "edgexfer.onnxedit.with_uint8_input"},
            metrics={"min_cosine_vs_float_input": cosine},
        )
    return name


# Tensor names with_uint8_input adds; a QDQ model may already use them (the input's quantization scale is
# called ``input_scale``), so those are renamed first.
_UINT8_NAMES = ("input_scale", "input_shift", "input_float", "input_scaled", "input_normalized", "input_nchw")


def _free_names(model: Any, names: Tuple[str, ...]) -> Any:
    """Rename every tensor of ``model`` called one of ``names`` to ``<name>_orig`` (in place)."""
    graph = model.graph
    rename = {n: f"{n}_orig" for n in names}
    for tensor in list(graph.initializer) + list(graph.sparse_initializer):
        tensor.name = rename.get(tensor.name, tensor.name) if hasattr(tensor, "name") else tensor.name
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = rename.get(name, name)
        for i, name in enumerate(node.output):
            node.output[i] = rename.get(name, name)
    for info in graph.value_info:
        info.name = rename.get(info.name, info.name)
    return model


def build_for_bench(run_dir: Path, backend: str, precision: str, config: Any) -> str:
    """Build ``<backend>_<precision>`` through the real build stage (reused when fresh, same source)."""
    from edgexfer.manifest import Manifest
    from edgexfer.stages.build import BuildConfig, default_source, run_build

    source = default_source(backend, precision)
    if config.uint8_input:
        source = "onnx_uint8" if source == "onnx" else uint8_int8_variant(run_dir, source)
    name = f"{backend}_{precision}"
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
            smoke_data=config.calibration,
            progress=config.progress,
        )
    )
    return name


def model_targets(model: str, backends: List[str], config: Any) -> Tuple[List[Any], List[Dict[str, Any]]]:
    """The torch reference and every (backend, precision) artifact of a random-weight ``model``."""
    from edgexfer.backends.base import get_backend
    from edgexfer.manifest import Manifest
    from edgexfer.stages.bench import BenchTarget

    run_dir = random_run(model, config)
    reference = torch_target(model, run_dir)
    export_for_bench(run_dir, backends, config)
    targets = [reference] if "torch" in backends else []
    skipped: List[Dict[str, Any]] = []
    for backend_name in backends:
        if backend_name == "torch":
            continue
        backend = get_backend(backend_name)
        for precision in config.precisions:
            try:
                backend.check_precision(precision)
            except ConfigError as exc:
                skipped.append(
                    {"model": model, "backend": backend_name, "precision": precision, "reason": str(exc)}
                )
                continue
            try:
                name = build_for_bench(run_dir, backend_name, precision, config)
            except EdgexferError as exc:
                skipped.append(
                    {
                        "model": model,
                        "backend": backend_name,
                        "precision": precision,
                        "reason": f"build failed: {exc}",
                    }
                )
                continue
            except Exception as exc:
                log.warning("building %s %s for %s failed", backend_name, precision, model, exc_info=True)
                skipped.append(
                    {
                        "model": model,
                        "backend": backend_name,
                        "precision": precision,
                        "reason": f"build failed: {type(exc).__name__}: {str(exc).splitlines()[0]}",
                    }
                )
                continue
            targets.append(
                BenchTarget(
                    model=model,
                    backend=backend_name,
                    precision=precision,
                    path=Manifest.open(run_dir).path_of(name),
                    preprocess=reference.preprocess,
                    artifact=name,
                )
            )
    return targets, skipped
