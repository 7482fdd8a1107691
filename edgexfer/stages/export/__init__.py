"""The export stage: the run's best checkpoint to a float ONNX model, an optional uint8-input variant,
and optional INT8 QDQ models per target family, each checked before it is moved into place and recorded.

- :mod:`~edgexfer.stages.export.config`: :class:`ExportConfig` (``edgexfer export``'s options);
- :mod:`~edgexfer.stages.export.onnx_models`: the float model (parity vs torch) and the uint8 variant;
- :mod:`~edgexfer.stages.export.frame_models`: the raw-frame variants (``--frame``), float and INT8;
- :mod:`~edgexfer.stages.export.int8`: the INT8 models (quantization itself lives in :mod:`edgexfer.quant`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict

from edgexfer.errors import ArtifactError
from edgexfer.manifest import Manifest, now_iso
from edgexfer.stages.export.config import STAGE, ExportConfig
from edgexfer.stages.export.frame_models import frame_model, int8_frame_models
from edgexfer.stages.export.int8 import int8_models
from edgexfer.stages.export.onnx_models import float_model, load_eval_slice, uint8_model


@dataclass
class ExportResult:
    """What the stage wrote: artifact name -> path, and its metrics."""

    run_dir: Path
    paths: Dict[str, Path] = field(default_factory=dict)
    metrics: Dict[str, Dict[str, Any]] = field(default_factory=dict)


def run_export(config: ExportConfig) -> ExportResult:
    """Export the run's checkpoint (float, optional uint8 variant, optional INT8 per target) and record it."""
    from edgexfer.checkpoint import load_checkpoint
    from edgexfer.torchdeps import require_torch

    require_torch("edgexfer export")  # the checkpoint is rebuilt in torch and exported by torch.onnx
    started = now_iso()
    manifest = Manifest.open(config.run_dir)
    if not manifest.has("checkpoint"):
        raise ArtifactError(
            f"run directory '{config.run_dir}' has no checkpoint; run 'edgexfer finetune "
            f"--out {config.run_dir}' first"
        )
    manifest.require("checkpoint")
    torch_model, meta = load_checkpoint(manifest.path_of("checkpoint"))
    if config.frame_spec is not None:
        config.frame_spec.check_crop(meta.preprocess)  # before anything is written
    eval_slice = load_eval_slice(config, meta)
    calib, calib_load_seconds = None, 0.0
    if config.int8:  # a missing quantizer or bad calibration input fails before anything is written
        from edgexfer.quant.calibration import run_calibration_set
        from edgexfer.quant.candidates import check_choice
        from edgexfer.quant.ort_quantize import check_quantizer
        from edgexfer.stages.export.int8 import int8_targets, qat_job_for

        check_quantizer()
        check_choice(config.quantizer, config.targets)
        int8_targets(config)
        qat_job_for(config, meta)  # a QAT request on a run without a training split fails here
        begin = time.perf_counter()
        calib = run_calibration_set(
            config.run_dir, config.calib, meta.preprocess, config.calib_size, config.seed, config.progress
        )
        calib_load_seconds = time.perf_counter() - begin
    result = ExportResult(config.run_dir)
    float_path = config.run_dir / "export" / "model.onnx"
    float_metrics = float_model(config, manifest, torch_model, meta, eval_slice, float_path)
    result.paths["onnx"], result.metrics["onnx"] = float_path, float_metrics
    if config.uint8_input:
        make = frame_model if config.frame is not None else uint8_model
        name, path, metrics = make(config, meta, eval_slice, float_path)
        result.paths[name], result.metrics[name] = path, metrics
    if calib is not None:
        int8 = int8_models(config, meta, eval_slice, float_path, calib, calib_load_seconds)
        if config.frame is not None:
            int8.update(int8_frame_models(config, meta, eval_slice, {n: p for n, (p, _) in int8.items()}))
        for name, (path, metrics) in int8.items():
            result.paths[name], result.metrics[name] = path, metrics
    with Manifest.update(config.run_dir) as manifest:
        manifest.record_stage(
            STAGE, config.to_dict(), {k: _headline(v) for k, v in result.metrics.items()}, started=started
        )
    return result


def _headline(metrics: Dict[str, Any]) -> Dict[str, Any]:
    """The few metrics of an artifact that the stage record repeats."""
    keys = (
        "max_abs_diff",
        "reparameterized",
        "reparam_max_abs_diff",
        "top1_agreement",
        "float_top1",
        "int8_top1",
        "drop",
        "calib_method",
        "quantizer",
        "export_seconds",
        "calib_seconds",
        "quantize_seconds",
        "scored_on",
        "max_grey_levels",
        "mean_cosine",
        "frame",
    )
    return {k: metrics[k] for k in keys if k in metrics}
