"""The float ONNX model and its uint8-input variant: export, parity against torch / the float model, record.

Exporter: torch's TorchScript-based exporter (``dynamo=False``). It pins the opset exactly (17 by
default, the newest TensorRT 8.5/8.6 parse; the dynamo exporter targets opset 18+ and down-converts),
writes one self-contained file (dynamo writes external data by default), folds BatchNorm into the
convolutions in eval mode, takes a dynamic batch with ``dynamic_axes``, and exports a ResNet-18 in a
fraction of a second. Every model is checked with ``onnx.checker`` and compared with torch (float) or
with the float model (uint8 variant) on real validation images before it is moved into place.
"""

from __future__ import annotations

import inspect
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np

from edgexfer.backends.onnxruntime import session_logits
from edgexfer.compare import Tolerance, check
from edgexfer.errors import ArtifactError, ConfigError, ModelError, ParityError
from edgexfer.fsutil import atomic_path
from edgexfer.manifest import Manifest
from edgexfer.onnxedit import with_uint8_input
from edgexfer.onnxmeta import OnnxMeta, set_metadata
from edgexfer.quant.calibration import sample_indices
from edgexfer.stages.export.config import DEFAULT_OPSET, STAGE, ExportConfig

log = logging.getLogger(__name__)


@dataclass
class EvalSlice:
    """The held-out images: float inputs (``to_array``), labels, and uint8 pixels (``to_uint8``) of the
    first ``parity_images`` of them (and, for ``--frame``, those images themselves, as loaded)."""

    inputs: np.ndarray
    pixels: np.ndarray
    labels: np.ndarray
    source: str
    images: list = field(default_factory=list)


def load_eval_slice(config: ExportConfig, meta: Any) -> EvalSlice:
    """The run's validation split (or ``--eval-data``), a deterministic slice of ``eval_size`` images."""
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
    samples = samples.for_preprocess(meta.preprocess)
    chosen = sample_indices(len(samples), config.eval_size, config.seed + 1)
    # in a seeded random order, not listing order: folders list images class by class, and the INT8
    # method comparison (--auto-eval-size), the evidence and the parity checks take the slice's first N
    # images, which in listing order would be a few classes only
    chosen = chosen[np.random.default_rng(config.seed + 1).permutation(len(chosen))]
    size = meta.preprocess.size
    inputs = np.empty((len(chosen), 3, size, size), np.float32)
    # uint8 pixels only for the parity images of the uint8 variant: a 224x224 slice is big enough in float
    pixels = np.empty((min(len(chosen), config.parity_images), 3, size, size), np.uint8)
    images = []
    for row, index in enumerate(chosen):
        image = samples.image(int(index))
        inputs[row] = meta.preprocess.to_array(image)
        if row < len(pixels):
            pixels[row] = meta.preprocess.to_uint8(image, "NCHW")
            if config.frame is not None:
                images.append(image)
    return EvalSlice(inputs, pixels, samples.labels[chosen].astype(np.int64), source, images)


def export_float(model: Any, meta: Any, path: Path, opset: int) -> Any:
    """torch.onnx.export (TorchScript exporter) with the contract's names, dynamic batch and metadata."""
    import onnx
    import torch

    size = meta.preprocess.size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice; the choice is deliberate
        # torch < 2.5 has no ``dynamo`` keyword and only the TorchScript exporter; newer ones default to dynamo
        legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
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
                **legacy,
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


def parity(reference: np.ndarray, other: np.ndarray, tolerance: Tolerance, what: str) -> Dict[str, Any]:
    """:func:`edgexfer.compare.check` of two models' logits; the metrics the manifest records.

    Within the logit tolerance a top-1 can only differ where the reference's top two logits are tied
    to within twice the difference, so agreement is recorded, and the logit tolerance is the gate.
    """
    try:
        comparison = check(reference, other, tolerance, what)
    except ParityError as exc:
        raise ParityError(f"{exc}; the exported model is not kept") from exc
    return {
        "max_abs_diff": comparison.max_abs_diff,
        "tolerance": tolerance.logit_bound(comparison),
        "top1_agreement": comparison.top1_agreement,
        "images": comparison.images,
    }


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


# ---- writing and recording ----------------------------------------------------------------------
def float_model(
    config: ExportConfig, manifest: Manifest, torch_model: Any, meta: Any, eval_slice: EvalSlice, path: Path
) -> Dict[str, Any]:
    """Export (or reuse, when the recorded one is fresh and made with these options) the float model.

    A model with a deploy-time form (timm's RepVGG, MobileOne, FastViT) is reparameterized first
    (:func:`edgexfer.models.deploy_form`); that form is what is exported and what the ONNX model is
    compared with, and the reparameterized model is itself checked against the trained (train-form) one
    on the same images: both differences are gated by ``parity_tolerance`` and recorded.
    """
    from edgexfer.models import deploy_form

    deploy_model, reparameterized = deploy_form(torch_model)
    recipe = {"opset": config.opset, "exporter": "torchscript", "input": "input", "output": "logits",
              "deploy_form": "reparameterized" if reparameterized else "as trained"}
    if manifest.has("onnx") and manifest.is_fresh("onnx") and manifest.get("onnx").config == recipe:
        log.info("float ONNX model is up to date: %s", path)
        return dict(manifest.get("onnx").metrics, reused=True)
    begin = time.perf_counter()
    count = min(config.parity_images, len(eval_slice.inputs))
    reference = torch_logits(deploy_model, eval_slice.inputs[:count], config.batch_size)
    reparam: Dict[str, Any] = {}
    if reparameterized:
        reparam = parity(
            torch_logits(torch_model, eval_slice.inputs[:count], config.batch_size),
            reference,
            config.parity_tolerance,
            f"the reparameterized (deploy-time) {meta.arch} vs its train form",
        )
    with atomic_path(path) as tmp:
        export_float(deploy_model, meta, tmp, config.opset)
        metrics = parity(
            reference,
            session_logits(tmp, eval_slice.inputs[:count], config.batch_size),
            config.parity_tolerance,
            "ONNX Runtime output of the float model vs torch",
        )
    metrics["export_seconds"] = round(time.perf_counter() - begin, 3)
    metrics["opset"] = config.opset
    metrics["reparameterized"] = reparameterized
    if reparameterized:
        metrics["reparam_max_abs_diff"] = reparam["max_abs_diff"]
        metrics["reparam_top1_agreement"] = reparam["top1_agreement"]
    with Manifest.update(config.run_dir) as updated:
        updated.add_artifact(
            "onnx", path, kind="onnx", stage=STAGE, inputs=["checkpoint"], config=recipe, metrics=metrics
        )
    log.info(
        "float ONNX: %s (max abs diff vs torch %.2e on %d images%s)",
        path,
        metrics["max_abs_diff"],
        metrics["images"],
        f"; reparameterized, {metrics['reparam_max_abs_diff']:.2e} vs the train form" if reparameterized else "",
    )
    return metrics


def uint8_model(
    config: ExportConfig, meta: Any, eval_slice: EvalSlice, float_path: Path
) -> Tuple[str, Path, Dict[str, Any]]:
    """Write ``model_uint8_<layout>.onnx`` after checking it against the float model."""
    import onnx

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
            config.parity_tolerance,
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
