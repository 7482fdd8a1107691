"""The INT8 part of the export stage: calibrate once, choose each target's model, write and record it.

Calibration ranges come from :mod:`edgexfer.quant.cache` (one pass for every method, cached), each
target's model is chosen by :func:`edgexfer.quant.guard.quantize_target` with that target's
:class:`~edgexfer.quant.recipes.QuantRecipe`; this module writes each chosen model atomically and
records it in the manifest, one target at a time.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Tuple

from edgexfer.backends.int8_judge import judge_for_target
from edgexfer.backends.onnxruntime import session_logits
from edgexfer.fsutil import atomic_path
from edgexfer.manifest import Manifest
from edgexfer.onnxmeta import OnnxMeta, set_metadata
from edgexfer.quant.cache import RangeCache, default_cache_dir, ranges_for
from edgexfer.quant.calibration import CalibrationSet
from edgexfer.quant.guard import QuantizeJob, QuantizeOutcome, quantize_target
from edgexfer.quant.ort_quantize import prepare_for_quantization
from edgexfer.quant.recipes import recipe_for
from edgexfer.stages.export.config import STAGE, ExportConfig
from edgexfer.stages.export.onnx_models import EvalSlice

log = logging.getLogger(__name__)


def int8_models(
    config: ExportConfig,
    meta: Any,
    eval_slice: EvalSlice,
    float_path: Path,
    calib: CalibrationSet,
    calib_load_seconds: float,
) -> Dict[str, Tuple[Path, Dict[str, Any]]]:
    """Calibrate once (ranges cached), choose each target's INT8 model, then write and record it."""
    out_dir = config.run_dir / "export"
    float_sha = Manifest.open(config.run_dir).require("onnx").sha256
    begin = time.perf_counter() - calib_load_seconds
    folders = [out_dir / "calib_cache"]
    if config.shared_cache:
        folders.append(Path(config.cache_dir) if config.cache_dir else default_cache_dir())
    written: Dict[str, Tuple[Path, Dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix=".int8-work-", dir=os.fspath(out_dir)) as work:
        prepared = prepare_for_quantization(float_path, Path(work) / "prepared.onnx")
        ranges, hits = ranges_for(
            prepared, float_sha, calib, config.methods, RangeCache(folders), batch_size=16, progress=config.progress
        )
        calib_seconds = time.perf_counter() - begin
        log.info(
            "calibration: %d images from %s, methods %s (%s) in %.1f s",
            len(calib),
            calib.source,
            ", ".join(ranges),
            ", ".join(f"{m}: {'cached' if hit else 'computed'}" for m, hit in hits.items()),
            calib_seconds,
        )
        calib_metrics = {
            "calib_seconds": round(calib_seconds, 3),
            "calib_images": len(calib),
            "calib_available": calib.available,
            "calib_source": calib.source,
            "calib_fingerprint": calib.fingerprint,
            "calib_cache_hit": hits,
            "eval_source": eval_slice.source,
        }
        job = QuantizeJob(
            prepared=prepared,
            work_dir=Path(work),
            ranges=ranges,
            eval_inputs=eval_slice.inputs,
            eval_labels=eval_slice.labels,
            float_logits=session_logits(float_path, eval_slice.inputs, config.batch_size),
            sensitivity_inputs=calib.arrays[:32],
            max_drop=config.max_drop,
            max_fallback=config.max_fallback,
            batch_size=config.batch_size,
            auto_images=config.auto_eval_size,
        )
        for target in config.targets:
            # scored on the runtime that ships the target's model where it is here (TensorRT engines,
            # whose timing cache goes to the run's build folder for 'edgexfer build'), else ONNX Runtime
            with judge_for_target(target, config.run_dir / "build") as judge:
                if judge.stand_in:
                    log.warning(
                        "INT8 %s: %s is not usable here (%s); its candidates are scored on %s, whose CPU "
                        "kernels only approximate the engine: run export where %s runs to judge the engine",
                        target, judge.facts["stand_in_for"], judge.facts["stand_in_reason"], judge.scored_on,
                        judge.facts["stand_in_for"],
                    )
                else:
                    log.info("INT8 %s: scoring candidates on %s", target, judge.scored_on)
                outcome = quantize_target(job, recipe_for(target), judge)
            metrics = dict(outcome.metrics, **calib_metrics)
            written[f"onnx_int8_{target}"] = (_write_int8(config, meta, outcome, metrics), metrics)
    return written


def _write_int8(config: ExportConfig, meta: Any, outcome: QuantizeOutcome, metrics: Dict[str, Any]) -> Path:
    """Write ``model_int8_<target>.onnx`` atomically (metadata set, ONNX-checked) and record it."""
    import onnx

    target = outcome.target
    set_metadata(
        outcome.model,
        OnnxMeta(
            arch=meta.arch,
            class_names=list(meta.class_names),
            preprocess=meta.preprocess,
            input_format="float_nchw",
            precision="int8",
            target=target,
        ),
    )
    path = config.run_dir / "export" / f"model_int8_{target}.onnx"
    with atomic_path(path) as tmp:
        onnx.save(outcome.model, os.fspath(tmp))
        onnx.checker.check_model(os.fspath(tmp), full_check=True)
    with Manifest.update(config.run_dir) as manifest:
        manifest.add_artifact(
            f"onnx_int8_{target}",
            path,
            kind="onnx-qdq",
            stage=STAGE,
            inputs=["checkpoint", "onnx"],
            config={
                "target": target,
                "recipe": recipe_for(target).to_dict(),
                "calib_method": config.calib_method,
                "calib_size": config.calib_size,
                "max_drop": config.max_drop,
                "seed": config.seed,
            },
            metrics=metrics,
        )
    log.info(
        "INT8 %s: %s (method %s, top-1 %.2f -> %.2f, drop %.2f, scored on %s)",
        target,
        path,
        outcome.method,
        metrics["float_top1"],
        metrics["int8_top1"],
        metrics["drop"],
        metrics["scored_on"],
    )
    return path
