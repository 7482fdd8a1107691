"""Choosing the INT8 model for one recipe: score every calibration method, keep the best, guard accuracy.

1. each candidate method's ranges are quantized with the recipe (:mod:`edgexfer.quant.ort_quantize`),
   checked against the recipe's rules, and scored on a held-out slice by comparing its logits with the
   float model's (:func:`edgexfer.compare.compare_logits`: top-1 agreement, logit SNR breaks ties);
2. the accuracy guard: when the top-1 drop against float exceeds ``max_drop``, the layers with the
   worst quantization SQNR (:mod:`edgexfer.quant.sensitivity`) are kept in float, a few more at each
   step, until the drop is in budget (or :class:`ParityError` when ``max_fallback`` layers are not enough);
3. a float model that is not better than chance on the held-out labels (:func:`edgexfer.parity.chance_check`)
   makes agreement and drop meaningless: one warning, and ``verdict: inconclusive`` in the metrics.

Candidates are run by a *judge* (:mod:`edgexfer.backends.int8_judge`): the runtime that ships the
target's model where it is usable here (TensorRT engines for ``tensorrt``, where the layers the guard
keeps out of INT8 run in fp16), else ONNX Runtime, recorded as a stand-in. Without one, ONNX Runtime.

Nothing here writes artifacts: the export stage writes and records the chosen model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from edgexfer.compare import compare_logits
from edgexfer.errors import ParityError
from edgexfer.metrics import topk_accuracy
from edgexfer.parity import chance_check
from edgexfer.quant import rules, sensitivity
from edgexfer.quant.graph import default_opset
from edgexfer.quant.ort_quantize import quantize_with_ranges
from edgexfer.quant.ranges import METHODS, Ranges
from edgexfer.quant.recipes import QuantRecipe

log = logging.getLogger(__name__)


@dataclass
class Candidate:
    """One quantized model and how it scored against the float model on the held-out slice."""

    method: str
    model: Any
    excluded: List[str]
    top1: float
    agreement: float
    snr_db: float
    logits: Optional[np.ndarray] = field(default=None, repr=False)  # on the images it was scored on

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
    logits: Optional[np.ndarray] = None  # the kept model's, on every held-out image of the job (its scores')


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

    def score(
        self, method: str, model: Any, excluded: Sequence[str], count: Optional[int] = None, judge: Any = None
    ) -> Candidate:
        """Run ``model`` on the first ``count`` held-out inputs (all by default) with ``judge`` (ONNX
        Runtime when None) and compare with float."""
        count = len(self.eval_labels) if count is None else count
        if judge is None:
            from edgexfer.backends.onnxruntime import session_logits

            logits = session_logits(model, self.eval_inputs[:count], self.batch_size)
        else:
            logits = judge.logits(model, self.eval_inputs[:count], self.batch_size)
        comparison = compare_logits(self.float_logits[:count], logits)
        return Candidate(
            method,
            model,
            list(excluded),
            topk_accuracy(logits, self.eval_labels[:count], 1),
            comparison.top1_agreement,
            comparison.snr_db,
            logits,
        )


def pick_best(candidates: Sequence[Candidate]) -> Candidate:
    """The candidate that agrees best with the float model; logit SNR breaks ties, then method order."""
    return max(candidates, key=lambda c: (round(c.agreement, 9), c.snr_db, -METHODS.index(c.method)))


def quantize_target(job: QuantizeJob, recipe: QuantRecipe, judge: Any = None) -> QuantizeOutcome:
    """Quantize by ``recipe`` with every candidate method, keep the best, apply the accuracy guard; every
    candidate is scored by ``judge`` (:class:`~edgexfer.backends.int8_judge.Int8Judge`; ONNX Runtime when
    None)."""
    target = recipe.target
    float_top1 = topk_accuracy(job.float_logits, job.eval_labels, 1)
    chance = chance_check(job.float_logits, job.eval_labels)
    if not chance.above_chance:
        log.warning("INT8 (%s) inconclusive: %s (the accuracy guard cannot judge it either)", target, chance.reason)
    started = time.perf_counter()
    # several methods are compared on the first ``auto_images`` of the slice (enough to rank them; INT8
    # models with symmetric activations run slowly on CPU), the kept one is then scored on all of it
    subset = len(job.eval_labels) if len(job.ranges) == 1 else min(job.auto_images, len(job.eval_labels))
    candidates = []
    for method in job.ranges:
        model = quantize_with_ranges(job.prepared, recipe, method, job.ranges[method], job.work_dir)
        recipe.enforce(model, source=f"the {target} INT8 model ({method})")
        candidates.append(job.score(method, model, [], subset, judge))
        scored = candidates[-1]
        log.info(
            "  %s %-10s top-1 %.2f, agreement %.4f, SNR %.1f dB on %d images",
            target,
            method,
            scored.top1,
            scored.agreement,
            scored.snr_db,
            subset,
        )
    best = pick_best(candidates)
    if subset < len(job.eval_labels):
        best = job.score(best.method, best.model, [], judge=judge)
    before = best
    guard: Dict[str, Any] = {"max_drop": job.max_drop, "steps": []}
    if job.max_drop is not None and float_top1 - best.top1 > job.max_drop:
        best = _guard(job, recipe, best, float_top1, job.max_drop, guard, judge)
    metrics = {
        "target": target,
        "calib_method": best.method,
        "method_scores": {c.method: c.scores() for c in candidates},
        "method_score_images": subset,
        "float_top1": round(float_top1, 4),
        "float_vs_chance": chance.to_dict(),
        "verdict": "passed" if chance.above_chance else "inconclusive",
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
        **_scoring(judge),
        "quantize_seconds": round(time.perf_counter() - started, 3),
        "opset": default_opset(best.model),
    }
    return QuantizeOutcome(target=target, model=best.model, method=best.method, metrics=metrics, logits=best.logits)


def _scoring(judge: Any) -> Dict[str, Any]:
    """Where the candidates ran: ``scored_on`` (e.g. "onnxruntime (stand-in for tensorrt)"), ``stand_in``,
    and the judge's details, among them the precision of the layers kept out of INT8."""
    scoring = judge.describe() if judge is not None else {"scored_on": "onnxruntime", "stand_in": False,
                                                          "float_layers_precision": "fp32"}
    return {"scored_on": scoring["scored_on"], "stand_in": scoring["stand_in"], "scoring": scoring}


def _guard(
    job: QuantizeJob,
    recipe: QuantRecipe,
    best: Candidate,
    float_top1: float,
    max_drop: float,
    guard: Dict[str, Any],
    judge: Any = None,
) -> Candidate:
    """Keep the most quantization-sensitive layers in float, step by step, until the drop is in budget."""
    target = recipe.target
    ranking = (
        sensitivity.rank_layers(job.prepared, job.work_dir, best.model, job.sensitivity_inputs)
        if job.max_fallback > 0
        else []
    )
    guard["ranking"] = [{"node": name, "sqnr_db": round(db, 2)} for name, db in ranking[: job.max_fallback]]
    limit = min(job.max_fallback, len(ranking))
    for count in sensitivity.fallback_steps(limit):
        excluded = [name for name, _ in ranking[:count]]
        model = quantize_with_ranges(
            job.prepared, recipe, best.method, job.ranges[best.method], job.work_dir, exclude=excluded
        )
        recipe.enforce(model, excluded=excluded, source=f"the {target} INT8 model (guard)")
        candidate = job.score(best.method, model, excluded, judge=judge)
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
        if drop <= max_drop:
            return candidate
    # with --max-fallback 0 (or nothing ranked) no step ran: the drop is still the unguarded one
    still = guard["steps"][-1]["drop"] if guard["steps"] else float_top1 - best.top1
    raise ParityError(
        f"INT8 ({target}) top-1 drop stays above --max-drop {max_drop}: float "
        f"{float_top1:.2f}, INT8 {best.top1:.2f}, still {still:.2f} with "
        f"{limit} layer(s) kept in float; raise --max-drop or --max-fallback, try another "
        f"--calib-method, or calibrate with more representative images"
    )
