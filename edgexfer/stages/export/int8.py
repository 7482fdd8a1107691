"""The INT8 part of the export stage: per target, quantizer candidates compete; the kept one is written.

For each target the candidates that ``--quantizer`` allows (:mod:`edgexfer.quant.candidates`: edgexfer's
own recipe, NNCF for OpenVINO when installed) quantize the float model with the same calibration set and
are measured on the target's runtime by :func:`edgexfer.quant.selection.compete`. edgexfer's recipe takes
its calibration ranges from :mod:`edgexfer.quant.cache` (one pass for every method, cached), computed
only when it competes. This module writes each kept model atomically and records it, with every
candidate's scores, in the manifest, one target at a time.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

from edgexfer.backends.int8_judge import judge_for_target
from edgexfer.backends.onnxruntime import session_logits
from edgexfer.errors import BackendUnavailableError
from edgexfer.evidence_report import write_evidence
from edgexfer.fsutil import atomic_path
from edgexfer.manifest import Manifest
from edgexfer.onnxmeta import OnnxMeta, set_metadata
from edgexfer.quant.cache import RangeCache, default_cache_dir, ranges_for
from edgexfer.quant.calibration import CalibrationSet
from edgexfer.quant.candidates import QuantizeRequest
from edgexfer.quant.evidence import collect as collect_evidence
from edgexfer.quant.guard import QuantizeJob
from edgexfer.quant.ort_quantize import prepare_for_quantization
from edgexfer.quant.recipes import recipe_for
from edgexfer.quant.selection import Competition, compete
from edgexfer.stages.export.config import QAT_QUANTIZER, STAGE, ExportConfig
from edgexfer.stages.export.onnx_models import EvalSlice

log = logging.getLogger(__name__)


def int8_targets(config: ExportConfig) -> Tuple[List[str], Dict[str, str]]:
    """(the targets to quantize for, {target: why skipped}): a target whose scoring runtime is not
    installed is skipped under ``--target all`` and refused (exit 4) when asked for by name."""
    from edgexfer.backends.base import get_backend

    targets, skipped = [], {}
    for target in config.targets:
        runtime = recipe_for(target).runtime
        ok, reason = get_backend(runtime).availability()
        if ok:
            targets.append(target)
        elif config.target == "all":
            skipped[target] = f"its candidates are scored on {runtime}, which is not usable here: {reason}"
        else:
            raise BackendUnavailableError(
                f"--target {target} scores INT8 candidates on {runtime}, which is not usable here ({reason}); "
                f"pip install 'edgexfer[{runtime}]' or choose another --target"
            )
    for target, why in skipped.items():
        log.warning("INT8 target %s skipped: %s", target, why)
    return targets, skipped


def qat_job_for(config: ExportConfig, meta: Any) -> Any:
    """QAT's job (:mod:`edgexfer.quant.qat_quantizer`) when ``--qat-epochs`` asks for it, else None; a run
    without a training split is refused here (ConfigError), before anything is written."""
    if not config.qat_epochs:
        return None
    from edgexfer.quant.qat import QatSettings
    from edgexfer.quant.qat_quantizer import qat_job

    settings = QatSettings(epochs=config.qat_epochs, lr=config.qat_lr, seed=config.seed,
                           max_images=config.qat_images)
    return qat_job(config.run_dir, meta.preprocess, settings, config.progress)


def int8_models(
    config: ExportConfig,
    meta: Any,
    eval_slice: EvalSlice,
    float_path: Path,
    calib: CalibrationSet,
    calib_load_seconds: float,
) -> Dict[str, Tuple[Path, Dict[str, Any]]]:
    """Per target: quantizer candidates compete on the target's runtime; write and record the kept one."""
    out_dir = config.run_dir / "export"
    float_sha = Manifest.open(config.run_dir).require("onnx").sha256
    begin = time.perf_counter() - calib_load_seconds
    folders = [out_dir / "calib_cache"]
    if config.shared_cache:
        folders.append(Path(config.cache_dir) if config.cache_dir else default_cache_dir())
    calib_metrics: Dict[str, Any] = {
        "calib_images": len(calib),
        "calib_available": calib.available,
        "calib_source": calib.source,
        "calib_fingerprint": calib.fingerprint,
        "eval_source": eval_slice.source,
    }
    targets, skipped = int8_targets(config)
    written: Dict[str, Tuple[Path, Dict[str, Any]]] = {}
    evidences: Dict[str, Dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix=".int8-work-", dir=os.fspath(out_dir)) as work:
        prepared = prepare_for_quantization(float_path, Path(work) / "prepared.onnx")
        float_logits = session_logits(float_path, eval_slice.inputs, config.batch_size)

        def make_job() -> QuantizeJob:
            ranges, hits = ranges_for(
                prepared, float_sha, calib, config.methods, RangeCache(folders), batch_size=16,
                progress=config.progress,
            )
            calib_metrics.update(calib_seconds=round(time.perf_counter() - begin, 3), calib_cache_hit=hits)
            log.info(
                "calibration: %d images from %s, methods %s (%s) in %.1f s",
                len(calib),
                calib.source,
                ", ".join(ranges),
                ", ".join(f"{m}: {'cached' if hit else 'computed'}" for m, hit in hits.items()),
                calib_metrics["calib_seconds"],
            )
            return QuantizeJob(
                prepared=prepared,
                work_dir=Path(work),
                ranges=ranges,
                eval_inputs=eval_slice.inputs,
                eval_labels=eval_slice.labels,
                float_logits=float_logits,
                sensitivity_inputs=calib.arrays[:32],
                max_drop=config.max_drop,
                max_fallback=config.max_fallback,
                batch_size=config.batch_size,
                auto_images=config.auto_eval_size,
            )

        request = QuantizeRequest(
            float_path=float_path,
            prepared=prepared,
            work_dir=Path(work),
            calib=calib,
            eval_inputs=eval_slice.inputs,
            eval_labels=eval_slice.labels,
            float_logits=float_logits,
            max_drop=config.max_drop,
            batch_size=config.batch_size,
            make_job=make_job,
            asked=(QAT_QUANTIZER,) if config.qat_epochs else (),
            qat=qat_job_for(config, meta),
        )
        for target in targets:
            # scored on the runtime that ships the target's model where it is here (TensorRT engines,
            # whose timing cache goes to the run's build folder for 'edgexfer build'), else ONNX Runtime
            with judge_for_target(target, config.run_dir / "build") as judge:
                _judged_slice(request, judge, eval_slice.inputs, eval_slice.labels, float_logits)
                if judge.stand_in:
                    log.warning(
                        "INT8 %s: %s is not usable here (%s); its candidates are scored on %s (%d of %d held-out "
                        "images), whose CPU kernels only approximate the engine: run export where %s runs to "
                        "judge the engine",
                        target, judge.facts["stand_in_for"], judge.facts["stand_in_reason"], judge.scored_on,
                        len(request.eval_labels), len(eval_slice.labels), judge.facts["stand_in_for"],
                    )
                elif judge.scored_on != "onnxruntime":
                    log.info("INT8 %s: scoring candidates on %s", target, judge.scored_on)
                request.judge = judge
                competition = compete(target, config.quantizer, request)
                request.judge = None
                # the evidence is scored the way the candidates were (compete passes the judge alike)
                evidences[target] = collect_evidence(
                    competition, request, judge if competition.runtime == "onnxruntime" else None,
                    config.evidence_layers,
                )
            files = write_evidence(out_dir, evidences)[target]
            log.info("INT8 %s: evidence in %s (%.1f s)", target, out_dir / files["report"],
                     evidences[target]["seconds"])
            metrics = dict(competition.metrics, **calib_metrics, targets_skipped=skipped,
                           evidence=dict(files, seconds=evidences[target]["seconds"]))
            written[f"onnx_int8_{target}"] = (_write_int8(config, meta, competition, metrics), metrics)
    return written


def _judged_slice(request: QuantizeRequest, judge: Any, inputs: Any, labels: Any, float_logits: Any) -> None:
    """Point ``request`` at the held-out images ``judge`` scores on (all of them, or a stand-in's stride)."""
    picked = judge.judged(len(labels))
    if picked is None:
        request.eval_inputs, request.eval_labels, request.float_logits = inputs, labels, float_logits
    else:
        request.eval_inputs, request.eval_labels, request.float_logits = (
            inputs[picked], labels[picked], float_logits[picked]
        )


def _write_int8(config: ExportConfig, meta: Any, competition: Competition, metrics: Dict[str, Any]) -> Path:
    """Write ``model_int8_<target>.onnx`` atomically (metadata set, ONNX-checked) and record it."""
    import onnx

    winner = competition.winner
    target = winner.target
    set_metadata(
        winner.model,
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
        onnx.save(winner.model, os.fspath(tmp))
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
                "quantizer": winner.quantizer,
                "quantizer_choice": config.quantizer,
                "recipe": winner.details.get("recipe"),
                "quantizer_settings": winner.details.get("settings"),
                "calib_method": config.calib_method,
                "calib_size": config.calib_size,
                "max_drop": config.max_drop,
                "seed": config.seed,
            },
            metrics=metrics,
        )
    log.info(
        "INT8 %s: %s (%s, %s, top-1 %.2f -> %.2f on %s, drop %.2f)",
        target,
        path,
        winner.quantizer,
        metrics["calib_method"],
        metrics["float_top1"],
        metrics["int8_top1"],
        metrics["scored_on"],
        metrics["drop"],
    )
    return path
