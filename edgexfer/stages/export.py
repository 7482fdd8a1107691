"""The export stage: the run's best checkpoint to a float ONNX model, an optional uint8-input variant,
and optional INT8 QDQ models per target family (see :mod:`edgexfer.stages.quantize`).

Exporter: torch's TorchScript-based exporter (``dynamo=False``). It pins the opset exactly (17 by
default, the newest TensorRT 8.5/8.6 parse; the dynamo exporter targets opset 18+ and down-converts),
writes one self-contained file (dynamo writes external data by default), folds BatchNorm into the
convolutions in eval mode, takes a dynamic batch with ``dynamic_axes``, and exports a ResNet-18 in a
fraction of a second. Every model is checked with ``onnx.checker`` and compared with torch (float) or
with the float model (uint8 variant) on real validation images before it is moved into place.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

from edgexfer.errors import ArtifactError, ConfigError, ModelError, ParityError
from edgexfer.fsutil import atomic_path
from edgexfer.manifest import Manifest, now_iso
from edgexfer.onnxmeta import OnnxMeta, set_metadata

log = logging.getLogger(__name__)

STAGE = "export"
DEFAULT_OPSET = 17
MIN_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear (axis) need 13
MAX_OPSET = 20
TARGET_CHOICES = ("cpu", "tensorrt", "all")
UINT8_LAYOUTS = ("NCHW", "NHWC")


@dataclass(frozen=True)
class ExportConfig:
    """Options of ``edgexfer export``; validated on creation."""

    run_dir: Path
    opset: int = DEFAULT_OPSET
    uint8_input: bool = False
    uint8_layout: str = "NHWC"
    int8: bool = False
    target: str = "all"
    calib: Optional[Path] = None
    calib_size: int = 512
    calib_method: str = "auto"
    max_drop: Optional[float] = None
    max_fallback: int = 16
    eval_data: Optional[Path] = None
    eval_size: int = 1000
    auto_eval_size: int = 300
    parity_images: int = 64
    parity_atol: float = 1e-3
    parity_rtol: float = 1e-4
    seed: int = 0
    batch_size: int = 64
    cache_dir: Optional[Path] = None
    shared_cache: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        from edgexfer.calibration import METHOD_CHOICES

        object.__setattr__(self, "run_dir", Path(self.run_dir))
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise ConfigError(
                f"--opset {self.opset} is not supported; choose {MIN_OPSET}-{MAX_OPSET} "
                f"(default {DEFAULT_OPSET}, the newest TensorRT 8.5/8.6 parse)"
            )
        if self.target not in TARGET_CHOICES:
            raise ConfigError(f"unknown --target '{self.target}'; choose one of {', '.join(TARGET_CHOICES)}")
        if self.int8 and "tensorrt" in self.targets and self.opset > 17:
            raise ConfigError(
                f"--opset {self.opset} cannot be parsed by TensorRT 8.5/8.6; use --opset 17 or "
                "lower with --target tensorrt/all, or --target cpu"
            )
        if self.uint8_layout.upper() not in UINT8_LAYOUTS:
            raise ConfigError(f"unknown --uint8-layout '{self.uint8_layout}'; choose nchw or nhwc")
        object.__setattr__(self, "uint8_layout", self.uint8_layout.upper())
        if self.calib_method not in METHOD_CHOICES:
            raise ConfigError(
                f"unknown --calib-method '{self.calib_method}'; choose one of {', '.join(METHOD_CHOICES)}"
            )
        for name in ("calib_size", "eval_size", "auto_eval_size", "parity_images", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_drop is not None and self.max_drop < 0:
            raise ConfigError(f"--max-drop must be >= 0 top-1 points, got {self.max_drop}")
        if self.max_fallback < 0:
            raise ConfigError(f"--max-fallback must be >= 0 layers, got {self.max_fallback}")

    @property
    def targets(self) -> Tuple[str, ...]:
        """The target families to quantize for."""
        return ("cpu", "tensorrt") if self.target == "all" else (self.target,)

    @property
    def methods(self) -> Tuple[str, ...]:
        """The calibration methods to try."""
        from edgexfer.calibration import METHODS

        return METHODS if self.calib_method == "auto" else (self.calib_method,)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-safe dict for the manifest."""
        from edgexfer.config import to_dict

        return to_dict(self)


@dataclass
class ExportResult:
    """What the stage wrote: artifact name -> path, and its metrics."""

    run_dir: Path
    paths: Dict[str, Path] = field(default_factory=dict)
    metrics: Dict[str, Dict[str, Any]] = field(default_factory=dict)


# ---- data ----------------------------------------------------------------------------------------
@dataclass
class EvalSlice:
    """The held-out images: float inputs (``to_array``), labels, and uint8 pixels (``to_uint8``) of the
    first ``parity_images`` of them."""

    inputs: np.ndarray
    pixels: np.ndarray
    labels: np.ndarray
    source: str


def load_eval_slice(config: ExportConfig, meta: Any) -> EvalSlice:
    """The run's validation split (or ``--eval-data``), a deterministic slice of ``eval_size`` images."""
    from edgexfer.calibration import sample_indices
    from edgexfer.data import folder_samples, samples_for_run

    if config.eval_data is not None:
        samples = folder_samples(config.eval_data, class_names=meta.class_names)
        source = str(config.eval_data)
    else:
        try:
            samples = samples_for_run(config.run_dir, "val")
        except ArtifactError as exc:
            raise ArtifactError(f"{exc}; or pass --eval-data DIR (labelled <class>/<image> folders)") from exc
        source = "run val split"
    if list(samples.class_names) != list(meta.class_names):
        raise ConfigError(
            f"evaluation classes {samples.class_names[:5]} differ from the checkpoint's "
            f"{meta.class_names[:5]}"
        )
    chosen = sample_indices(len(samples), config.eval_size, config.seed + 1)
    size = meta.preprocess.size
    inputs = np.empty((len(chosen), 3, size, size), np.float32)
    # uint8 pixels only for the parity images of the uint8 variant: a 224x224 slice is big enough in float
    pixels = np.empty((min(len(chosen), config.parity_images), 3, size, size), np.uint8)
    for row, index in enumerate(chosen):
        image = samples.image(int(index))
        inputs[row] = meta.preprocess.to_array(image)
        if row < len(pixels):
            pixels[row] = meta.preprocess.to_uint8(image, "NCHW")
    return EvalSlice(inputs, pixels, samples.labels[chosen].astype(np.int64), source)


# ---- float export and parity ---------------------------------------------------------------------
def export_float(model: Any, meta: Any, path: Path, opset: int) -> Any:
    """torch.onnx.export (TorchScript exporter) with the contract's names, dynamic batch and metadata."""
    import onnx
    import torch

    size = meta.preprocess.size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice; the choice is deliberate
        try:
            torch.onnx.export(
                model,
                torch.zeros(2, 3, size, size),
                os.fspath(path),
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        except Exception as exc:  # noqa: BLE001 - the exporter raises many types
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ModelError(
                f"torch.onnx.export of {meta.arch} at opset {opset} failed: {first}; "
                f"try the default --opset {DEFAULT_OPSET}"
            ) from exc
    proto = onnx.load(os.fspath(path))
    set_metadata(
        proto,
        OnnxMeta(
            arch=meta.arch,
            class_names=list(meta.class_names),
            preprocess=meta.preprocess,
            input_format="float_nchw",
            precision="fp32",
        ),
    )
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, os.fspath(path))
    return proto


def parity(reference: np.ndarray, other: np.ndarray, atol: float, rtol: float, what: str) -> Dict[str, Any]:
    """Max abs logit difference and top-1 agreement; ParityError beyond ``atol + rtol * max|reference|``.

    Within that tolerance a top-1 can only differ where the reference's top two logits are tied to
    within twice the difference, so agreement is recorded, and the logit tolerance is the gate.
    """
    diff = float(np.max(np.abs(reference - other)))
    tolerance = atol + rtol * float(np.max(np.abs(reference)))
    result = {
        "max_abs_diff": diff,
        "tolerance": tolerance,
        "top1_agreement": float(np.mean(reference.argmax(1) == other.argmax(1))),
        "images": int(len(reference)),
    }
    if not diff <= tolerance:  # also catches NaN
        raise ParityError(
            f"{what} differs: max abs logit difference {diff:.3g} (tolerance {tolerance:.3g}), "
            f"top-1 agreement {result['top1_agreement']:.4f}; the exported model is not kept"
        )
    return result


def torch_logits(model: Any, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    """Float logits of the torch model in eval mode."""
    import torch

    with torch.no_grad():
        return np.concatenate(
            [
                model(torch.from_numpy(inputs[i : i + batch_size])).numpy()
                for i in range(0, len(inputs), batch_size)
            ]
        ).astype(np.float32)


# ---- the stage -----------------------------------------------------------------------------------
def run_export(config: ExportConfig) -> ExportResult:
    """Export the run's checkpoint (float, optional uint8 variant, optional INT8 per target) and record it."""
    from edgexfer.checkpoint import load_checkpoint

    started = now_iso()
    manifest = Manifest.open(config.run_dir)
    if not manifest.has("checkpoint"):
        raise ArtifactError(
            f"run directory '{config.run_dir}' has no checkpoint; run 'edgexfer finetune "
            f"--out {config.run_dir}' first"
        )
    manifest.require("checkpoint")
    torch_model, meta = load_checkpoint(manifest.path_of("checkpoint"))
    eval_slice = load_eval_slice(config, meta)
    calib, calib_load_seconds = None, 0.0
    if config.int8:  # bad calibration input fails before anything is written
        from edgexfer.stages.quantize import calibration_set_for

        begin = time.perf_counter()
        calib = calibration_set_for(config, meta)
        calib_load_seconds = time.perf_counter() - begin
    result = ExportResult(config.run_dir)
    float_path = config.run_dir / "export" / "model.onnx"
    float_metrics = _float_model(config, manifest, torch_model, meta, eval_slice, float_path)
    result.paths["onnx"], result.metrics["onnx"] = float_path, float_metrics
    if config.uint8_input:
        name, path, metrics = _uint8_model(config, meta, eval_slice, float_path)
        result.paths[name], result.metrics[name] = path, metrics
    if config.int8:
        from edgexfer.stages.quantize import export_int8

        for name, (path, metrics) in export_int8(
            config, meta, eval_slice, float_path, calib, calib_load_seconds
        ).items():
            result.paths[name], result.metrics[name] = path, metrics
    with Manifest.update(config.run_dir) as manifest:
        manifest.record_stage(
            STAGE, config.to_dict(), {k: _headline(v) for k, v in result.metrics.items()}, started=started
        )
    return result


def _headline(metrics: Dict[str, Any]) -> Dict[str, Any]:
    keys = (
        "max_abs_diff",
        "top1_agreement",
        "float_top1",
        "int8_top1",
        "drop",
        "calib_method",
        "export_seconds",
        "calib_seconds",
        "quantize_seconds",
    )
    return {k: metrics[k] for k in keys if k in metrics}


def _float_model(
    config: ExportConfig, manifest: Manifest, torch_model: Any, meta: Any, eval_slice: EvalSlice, path: Path
) -> Dict[str, Any]:
    """Export (or reuse, when the recorded one is fresh and made with these options) the float model."""
    recipe = {"opset": config.opset, "exporter": "torchscript", "input": "input", "output": "logits"}
    if manifest.has("onnx") and manifest.is_fresh("onnx") and manifest.get("onnx").config == recipe:
        log.info("float ONNX model is up to date: %s", path)
        return dict(manifest.get("onnx").metrics, reused=True)
    begin = time.perf_counter()
    with atomic_path(path) as tmp:
        export_float(torch_model, meta, tmp, config.opset)
        from edgexfer.backends.onnxruntime import session_logits

        count = min(config.parity_images, len(eval_slice.inputs))
        reference = torch_logits(torch_model, eval_slice.inputs[:count], config.batch_size)
        metrics = parity(
            reference,
            session_logits(tmp, eval_slice.inputs[:count], config.batch_size),
            config.parity_atol,
            config.parity_rtol,
            "ONNX Runtime output of the float model vs torch",
        )
    metrics["export_seconds"] = round(time.perf_counter() - begin, 3)
    metrics["opset"] = config.opset
    with Manifest.update(config.run_dir) as updated:
        updated.add_artifact(
            "onnx", path, kind="onnx", stage=STAGE, inputs=["checkpoint"], config=recipe, metrics=metrics
        )
    log.info(
        "float ONNX: %s (max abs diff vs torch %.2e on %d images)",
        path,
        metrics["max_abs_diff"],
        metrics["images"],
    )
    return metrics


def _uint8_model(
    config: ExportConfig, meta: Any, eval_slice: EvalSlice, float_path: Path
) -> Tuple[str, Path, Dict[str, Any]]:
    """Write ``model_uint8_<layout>.onnx`` after checking it against the float model."""
    import onnx

    from edgexfer.backends.onnxruntime import session_logits
    from edgexfer.onnxedit import with_uint8_input

    layout = config.uint8_layout
    path = config.run_dir / "export" / f"model_uint8_{layout.lower()}.onnx"
    model = with_uint8_input(onnx.load(os.fspath(float_path)), meta.preprocess, layout)
    input_format = f"uint8_{layout.lower()}"
    set_metadata(
        model,
        OnnxMeta(
            arch=meta.arch,
            class_names=list(meta.class_names),
            preprocess=meta.preprocess,
            input_format=input_format,
            precision="fp32",
        ),
    )
    count = min(config.parity_images, len(eval_slice.inputs))
    pixels = eval_slice.pixels[:count]
    if layout == "NHWC":
        pixels = np.ascontiguousarray(pixels.transpose(0, 2, 3, 1))
    with atomic_path(path) as tmp:
        onnx.save(model, os.fspath(tmp))
        reference = session_logits(float_path, eval_slice.inputs[:count], config.batch_size)
        metrics = parity(
            reference,
            session_logits(tmp, pixels, config.batch_size),
            config.parity_atol,
            config.parity_rtol,
            f"the uint8 ({layout}) model vs the float model",
        )
    metrics["input_format"] = input_format
    with Manifest.update(config.run_dir) as manifest:
        manifest.add_artifact(
            "onnx_uint8",
            path,
            kind="onnx",
            stage=STAGE,
            inputs=["checkpoint", "onnx"],
            config={"layout": layout, "opset": config.opset},
            metrics=metrics,
        )
    return "onnx_uint8", path, metrics
