"""INT8 post-training quantization of the exported float model: one QDQ artifact per target family.

Per target (``cpu``, ``tensorrt``; recipes in :data:`RECIPES`, rules in :mod:`edgexfer.quant.rules`):

1. ranges for each calibration method come from the cache or one calibration pass
   (:func:`edgexfer.calibration.ranges_for`);
2. each candidate method is quantized with ONNX Runtime's ``quantize_static`` (QDQ format, fed the
   ranges, so no second calibration), fixed up for the target, checked against the target's rules,
   and scored on a held-out slice by top-1 agreement with the float model (logit SNR breaks ties);
   ``auto`` keeps the best, a named method is the only candidate;
3. the accuracy guard: when the top-1 drop against float exceeds ``max_drop``, the layers with the
   worst quantization SQNR are kept in float, a few more at each step, until the drop is in budget
   (or :class:`ParityError` when ``max_fallback`` layers are not enough).

The stage writes nothing itself; :func:`edgexfer.stages.export.run_export` writes the chosen model
atomically and records it.
"""

from __future__ import annotations

import inspect
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgexfer.calibration import METHODS, Ranges, tensors_data
from edgexfer.errors import ParityError
from edgexfer.quant import rules, sensitivity

log = logging.getLogger(__name__)

# TensorRT's QDQ rules with ONNX Runtime's quantizer (deploy-notes.md); the CPU recipe is ORT's x86
# default for VNNI machines (U8 activations, S8 per-channel weights, every QDQ-capable op).
RECIPES: Dict[str, Dict[str, Any]] = {
    "cpu": {"activation_type": "QUInt8", "weight_type": "QInt8", "op_types": None, "extra_options": {}},
    "tensorrt": {
        "activation_type": "QInt8",
        "weight_type": "QInt8",
        "op_types": ("Conv", "Gemm", "MatMul"),
        "extra_options": {
            "ActivationSymmetric": True,
            "WeightSymmetric": True,
            "QuantizeBias": False,
            "DedicatedQDQPair": True,
            "AddQDQPairToWeight": True,
            # QDQ on inputs only: TensorRT fuses a conv with the residual add
            # and the next activation when the conv output stays unquantized
            "OpTypesToExcludeOutputQuantization": ["Conv", "Gemm", "MatMul"],
        },
    },
}


@dataclass
class Candidate:
    """One quantized model and how it scored against the float model on the held-out slice."""

    method: str
    model: Any
    excluded: List[str]
    top1: float
    agreement: float
    snr_db: float

    def scores(self) -> Dict[str, float]:
        """JSON-safe scores."""
        return {
            "top1": round(self.top1, 4),
            "agreement": round(self.agreement, 6),
            "snr_db": round(self.snr_db, 3),
        }


@dataclass
class QuantizeOutcome:
    """The model chosen for one target and everything the manifest records about it."""

    target: str
    model: Any
    method: str
    metrics: Dict[str, Any] = field(default_factory=dict)


def prepare_for_quantization(
    float_path: "os.PathLike[str] | str", out_path: "os.PathLike[str] | str"
) -> Path:
    """ONNX Runtime's ``quant_pre_process``: shape inference and graph clean-up before quantization."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(os.fspath(float_path), os.fspath(out_path), skip_symbolic_shape=False)
    return Path(out_path)


def quantize_with_ranges(
    prepared: "os.PathLike[str] | str",
    target: str,
    method: str,
    ranges: Ranges,
    work_dir: "os.PathLike[str] | str",
    exclude: Sequence[str] = (),
) -> Any:
    """Quantize ``prepared`` for ``target`` with precomputed ``ranges``; return the fixed-up ModelProto."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    recipe = RECIPES[target]
    data = tensors_data(ranges, method)
    with tempfile.TemporaryDirectory(prefix=".quant-", dir=os.fspath(work_dir)) as work:
        out = Path(work) / "model_int8.onnx"
        kwargs = dict(
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=False,
            activation_type=getattr(QuantType, recipe["activation_type"]),
            weight_type=getattr(QuantType, recipe["weight_type"]),
            op_types_to_quantize=list(recipe["op_types"]) if recipe["op_types"] else None,
            nodes_to_exclude=list(exclude),
            extra_options=dict(recipe["extra_options"]),
            calibrate_method=data.calibration_method,
        )
        if "calibration_cache_path" in inspect.signature(quantize_static).parameters:
            cache_file = Path(work) / "ranges.json"
            save_tensors_data(data, cache_file)
            _quiet(
                quantize_static,
                os.fspath(prepared),
                os.fspath(out),
                None,
                calibration_cache_path=os.fspath(cache_file),
                **kwargs,
            )
        else:  # ONNX Runtime < 1.2x: drive its QDQ quantizer with the ranges directly
            _quantize_legacy(prepared, out, data, kwargs)
        model = onnx.load(os.fspath(out))
    if target == "tensorrt":
        rules.add_residual_qdq(model, ranges)
    return model


def _quantize_legacy(prepared: Any, out: Path, data: Any, kwargs: Dict[str, Any]) -> None:
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    op_types = kwargs["op_types_to_quantize"] or list(set(QLinearOpsRegistry) | set(QDQRegistry))
    quantizer = QDQQuantizer(
        load_model_with_shape_infer(Path(prepared)),
        True,
        False,
        kwargs["weight_type"],
        kwargs["activation_type"],
        data,
        [],
        kwargs["nodes_to_exclude"],
        op_types,
        kwargs["extra_options"],
    )
    quantizer.quantize_model()
    quantizer.model.save_model_to_file(os.fspath(out), False)


def _quiet(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn`` with ONNX Runtime's quantization warnings (pre-processing nags) kept out of the log."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        return fn(*args, **kwargs)
    finally:
        root.setLevel(level)


def score(
    method: str,
    model: Any,
    excluded: List[str],
    inputs: np.ndarray,
    labels: np.ndarray,
    float_logits: np.ndarray,
    batch_size: int,
) -> Candidate:
    """Evaluate a quantized model on the held-out slice against the labels and the float model."""
    from edgexfer.backends.onnxruntime import session_logits
    from edgexfer.metrics import agreement, snr_db, topk_accuracy

    logits = session_logits(model, inputs, batch_size)
    return Candidate(
        method,
        model,
        list(excluded),
        topk_accuracy(logits, labels, 1),
        agreement(logits.argmax(1), float_logits.argmax(1)),
        float(snr_db(float_logits, logits)),
    )


def pick_best(candidates: Sequence[Candidate]) -> Candidate:
    """The candidate that agrees best with the float model; logit SNR breaks ties, then method order."""
    return max(candidates, key=lambda c: (round(c.agreement, 9), c.snr_db, -METHODS.index(c.method)))


@dataclass
class QuantizeJob:
    """Everything :func:`quantize_target` needs, shared between targets."""

    prepared: Path
    work_dir: Path
    ranges: Dict[str, Ranges]
    eval_inputs: np.ndarray
    eval_labels: np.ndarray
    float_logits: np.ndarray
    sensitivity_inputs: np.ndarray
    max_drop: Optional[float] = None
    max_fallback: int = 16
    batch_size: int = 64
    auto_images: int = 300


def quantize_target(job: QuantizeJob, target: str) -> QuantizeOutcome:
    """Quantize for one target with every candidate method, keep the best, apply the accuracy guard."""
    from edgexfer.metrics import topk_accuracy

    float_top1 = topk_accuracy(job.float_logits, job.eval_labels, 1)
    started = time.perf_counter()
    # several methods are compared on the first ``auto_images`` of the slice (enough to rank them; INT8
    # models with symmetric activations run slowly on CPU), the kept one is then scored on all of it
    subset = len(job.eval_labels) if len(job.ranges) == 1 else min(job.auto_images, len(job.eval_labels))
    candidates = []
    for method in job.ranges:
        model = quantize_with_ranges(job.prepared, target, method, job.ranges[method], job.work_dir)
        rules.enforce_rules(model, target, source=f"the {target} INT8 model ({method})")
        candidates.append(
            score(
                method,
                model,
                [],
                job.eval_inputs[:subset],
                job.eval_labels[:subset],
                job.float_logits[:subset],
                job.batch_size,
            )
        )
        log.info(
            "  %s %-10s top-1 %.2f, agreement %.4f, SNR %.1f dB on %d images",
            target,
            method,
            candidates[-1].top1,
            candidates[-1].agreement,
            candidates[-1].snr_db,
            subset,
        )
    best = pick_best(candidates)
    if subset < len(job.eval_labels):
        best = score(
            best.method, best.model, [], job.eval_inputs, job.eval_labels, job.float_logits, job.batch_size
        )
    before = best
    guard: Dict[str, Any] = {"max_drop": job.max_drop, "steps": []}
    if job.max_drop is not None and float_top1 - best.top1 > job.max_drop:
        best = _guard(job, target, best, float_top1, guard)
    metrics = {
        "target": target,
        "calib_method": best.method,
        "method_scores": {c.method: c.scores() for c in candidates},
        "method_score_images": subset,
        "float_top1": round(float_top1, 4),
        "int8_top1": round(best.top1, 4),
        "drop": round(float_top1 - best.top1, 4),
        "agreement": round(best.agreement, 6),
        "snr_db": round(best.snr_db, 3),
        "eval_images": int(len(job.eval_labels)),
        "excluded_nodes": list(best.excluded),
        "guard": dict(
            guard,
            before={"int8_top1": round(before.top1, 4), "drop": round(float_top1 - before.top1, 4)},
            after={"int8_top1": round(best.top1, 4), "drop": round(float_top1 - best.top1, 4)},
        ),
        "qdq": rules.qdq_summary(best.model),
        "quantize_seconds": round(time.perf_counter() - started, 3),
        "opset": rules.default_opset(best.model),
    }
    return QuantizeOutcome(target=target, model=best.model, method=best.method, metrics=metrics)


def _guard(
    job: QuantizeJob, target: str, best: Candidate, float_top1: float, guard: Dict[str, Any]
) -> Candidate:
    """Keep the most quantization-sensitive layers in float, step by step, until the drop is in budget."""
    ranking = sensitivity.rank_layers(job.prepared, job.work_dir, best.model, job.sensitivity_inputs)
    guard["ranking"] = [{"node": name, "sqnr_db": round(db, 2)} for name, db in ranking[: job.max_fallback]]
    limit = min(job.max_fallback, len(ranking))
    for count in sensitivity.fallback_steps(limit):
        excluded = [name for name, _ in ranking[:count]]
        model = quantize_with_ranges(
            job.prepared, target, best.method, job.ranges[best.method], job.work_dir, exclude=excluded
        )
        rules.enforce_rules(model, target, excluded=excluded, source=f"the {target} INT8 model (guard)")
        candidate = score(
            best.method, model, excluded, job.eval_inputs, job.eval_labels, job.float_logits, job.batch_size
        )
        drop = float_top1 - candidate.top1
        guard["steps"].append(
            {
                "float_layers": count,
                "int8_top1": round(candidate.top1, 4),
                "drop": round(drop, 4),
                "agreement": round(candidate.agreement, 6),
            }
        )
        log.info("  guard: %d layer(s) in float -> top-1 %.2f, drop %.2f", count, candidate.top1, drop)
        if drop <= job.max_drop:
            return candidate
    raise ParityError(
        f"INT8 ({target}) top-1 drop stays above --max-drop {job.max_drop}: float "
        f"{float_top1:.2f}, INT8 {best.top1:.2f}, still {guard['steps'][-1]['drop']:.2f} with "
        f"{limit} layer(s) kept in float; raise --max-drop or --max-fallback, try another "
        f"--calib-method, or calibrate with more representative images"
    )


# ---- the INT8 part of the export stage -----------------------------------------------------------
def calibration_set_for(config: Any, meta: Any) -> Any:
    """The calibration images: ``--calib DIR`` or the run's training split, preprocessed as evaluated."""
    from edgexfer.calibration import run_calibration_set

    return run_calibration_set(
        config.run_dir, config.calib, meta.preprocess, config.calib_size, config.seed, config.progress
    )


def export_int8(
    config: Any, meta: Any, eval_slice: Any, float_path: Path, calib: Any, calib_load_seconds: float = 0.0
) -> Dict[str, Tuple[Path, Dict[str, Any]]]:
    """Calibrate once, quantize per target, check, guard, then write and record each INT8 artifact.

    ``calib`` is the :class:`~edgexfer.calibration.CalibrationSet` (:func:`calibration_set_for`).
    """
    import onnx

    from edgexfer.backends.onnxruntime import session_logits
    from edgexfer.calibration import RangeCache, default_cache_dir, ranges_for
    from edgexfer.fsutil import atomic_path
    from edgexfer.manifest import Manifest
    from edgexfer.onnxmeta import OnnxMeta, set_metadata

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
            prepared,
            float_sha,
            calib,
            config.methods,
            RangeCache(folders),
            batch_size=16,
            progress=config.progress,
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
            outcome = quantize_target(job, target)
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
            path = out_dir / f"model_int8_{target}.onnx"
            with atomic_path(path) as tmp:
                onnx.save(outcome.model, os.fspath(tmp))
                onnx.checker.check_model(os.fspath(tmp), full_check=True)
            metrics = dict(
                outcome.metrics,
                calib_seconds=round(calib_seconds, 3),
                calib_images=len(calib),
                calib_available=calib.available,
                calib_source=calib.source,
                calib_fingerprint=calib.fingerprint,
                calib_cache_hit=hits,
                eval_source=eval_slice.source,
            )
            name = f"onnx_int8_{target}"
            with Manifest.update(config.run_dir) as manifest:
                manifest.add_artifact(
                    name,
                    path,
                    kind="onnx-qdq",
                    stage="export",
                    inputs=["checkpoint", "onnx"],
                    config={
                        "target": target,
                        "recipe": RECIPES[target],
                        "calib_method": config.calib_method,
                        "calib_size": config.calib_size,
                        "max_drop": config.max_drop,
                        "seed": config.seed,
                    },
                    metrics=metrics,
                )
            log.info(
                "INT8 %s: %s (method %s, top-1 %.2f -> %.2f, drop %.2f)",
                target,
                path,
                outcome.method,
                metrics["float_top1"],
                metrics["int8_top1"],
                metrics["drop"],
            )
            written[name] = (path, metrics)
    return written
