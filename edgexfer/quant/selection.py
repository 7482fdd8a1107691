"""Quantizer candidates measured on the target's own runtime and one kept: :func:`compete`.

The runtime is the backend the target's recipe names (:attr:`QuantRecipe.runtime`: ONNX Runtime for cpu
and tensorrt, which cannot run at export time, OpenVINO for openvino). Every candidate must follow the
target's QDQ rules (:mod:`edgexfer.quant.rules`); the choice itself is :func:`~edgexfer.quant.candidates.choose`.

Accuracy: each candidate's logits on the held-out slice against the float model's
(:func:`edgexfer.compare.compare_logits`: top-1 agreement, logit SNR) and against the labels (top-1).
Latency, only when there is a choice to make: batch-1 inference, every candidate loaded at once and run
in interleaved rounds, so load from other processes falls on all of them alike; the p50 is kept.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence

import numpy as np

from edgexfer.quant.candidates import (
    ACCURACY_TIE_POINTS,
    CandidateModel,
    CandidateScore,
    QuantizeRequest,
    choose,
    quantizers_for,
)

log = logging.getLogger(__name__)

LATENCY_WARMUP = 5
LATENCY_ROUNDS = 6
LATENCY_RUNS_PER_ROUND = 10


def score_candidates(
    candidates: Sequence[CandidateModel],
    runtime: str,
    eval_inputs: np.ndarray,
    eval_labels: np.ndarray,
    float_logits: np.ndarray,
    batch_size: int = 64,
    judge: Any = None,
) -> List[CandidateScore]:
    """Score every candidate on ``runtime``, or through ``judge`` (a TensorRT engine, or ONNX Runtime
    standing in for one) when given; latency too when there is more than one candidate."""
    from edgexfer.backends.base import get_backend
    from edgexfer.compare import compare_logits
    from edgexfer.metrics import topk_accuracy

    backend = get_backend(runtime)
    backend.require_available()
    float_top1 = topk_accuracy(float_logits, eval_labels, 1)
    scores: List[CandidateScore] = []
    with contextlib.ExitStack() as stack:
        runners = [stack.enter_context(backend.load(c.path, {"precision": "int8"})) for c in candidates]
        for candidate, runner in zip(candidates, runners):
            known = _scored_already(candidate, judge, len(eval_labels))
            if known is not None:  # the guard's last step ran this very model through this judge on these images
                scores.append(known)
                continue
            if judge is not None:
                logits = judge.logits(candidate.model, eval_inputs, batch_size)
            else:
                logits = np.concatenate(
                    [runner.infer(eval_inputs[i : i + batch_size]) for i in range(0, len(eval_inputs), batch_size)]
                )
            comparison = compare_logits(float_logits, logits)
            top1 = topk_accuracy(logits, eval_labels, 1)
            scores.append(
                CandidateScore(
                    candidate.quantizer, runtime if judge is None else judge.scored_on, top1,
                    comparison.top1_agreement, comparison.snr_db,
                    float_top1 - top1, int(len(eval_labels)), logits=logits,
                )
            )
        if len(candidates) > 1:
            _measure_latency(candidates, scores, runners, eval_inputs[:1])
    return scores


def _measure_latency(candidates: Sequence[CandidateModel], scores: Sequence[CandidateScore], runners: Sequence,
                     batch: np.ndarray) -> None:
    """Each distinct graph's p50; a candidate whose graph is another's (``details["same_graph_as"]``: only
    constants differ, e.g. corrected biases) gets that one's, so timing noise cannot tell them apart."""
    names = [c.quantizer for c in candidates]
    twin = {i: names.index(c.details["same_graph_as"]) for i, c in enumerate(candidates)
            if c.details.get("same_graph_as") in names}
    timed = [i for i in range(len(candidates)) if i not in twin]
    for index, p50 in zip(timed, interleaved_p50_ms([runners[i] for i in timed], batch)):
        scores[index].latency_ms = p50
    for index, source in twin.items():
        scores[index].latency_ms = scores[source].latency_ms


def _scored_already(candidate: CandidateModel, judge: Any, images: int) -> Any:
    """The candidate's own scores when its quantizer scored exactly this model through ``judge`` on all
    ``images`` held-out images (edgexfer's guard does), so an engine does not run the slice twice."""
    details = candidate.details
    if judge is None or details.get("scored_on") != judge.scored_on or details.get("eval_images") != images:
        return None
    if not all(key in details for key in ("int8_top1", "agreement", "snr_db", "drop")):
        return None
    return CandidateScore(candidate.quantizer, judge.scored_on, details["int8_top1"], details["agreement"],
                          details["snr_db"], details["drop"], images, logits=candidate.logits)


def interleaved_p50_ms(runners: Sequence, batch: np.ndarray) -> List[float]:
    """p50 milliseconds of ``runner.infer(batch)`` per runner, measured in interleaved rounds."""
    times: Dict[int, List[float]] = {i: [] for i in range(len(runners))}
    for runner in runners:
        for _ in range(LATENCY_WARMUP):
            runner.infer(batch)
    for round_index in range(LATENCY_ROUNDS):
        order = list(range(len(runners)))
        for index in order if round_index % 2 == 0 else order[::-1]:  # neither always goes first
            runner = runners[index]
            for _ in range(LATENCY_RUNS_PER_ROUND):
                begin = time.perf_counter()
                runner.infer(batch)
                times[index].append(time.perf_counter() - begin)
    return [1000.0 * float(np.median(times[i])) for i in range(len(runners))]


@dataclass
class Competition:
    """The kept candidate of one target, its scores, and every candidate's scores (for the manifest)."""

    winner: CandidateModel
    score: CandidateScore
    reason: str
    metrics: Dict[str, Any]
    candidates: List[CandidateModel] = field(default_factory=list)
    scores: List[CandidateScore] = field(default_factory=list)
    runtime: str = "onnxruntime"


def compete(target: str, choice: str, request: QuantizeRequest) -> Competition:
    """Quantize with every candidate ``choice`` allows for ``target`` (``auto``: every installed one),
    check each against the target's rules, score them on its runtime and keep one."""
    from edgexfer.quant.recipes import recipe_for

    recipe = recipe_for(target)
    quantizers, missing = quantizers_for(target, choice, request.asked)
    for name, why in missing.items():
        log.info("  %s: quantizer %s not competing (%s)", target, name, why)
    candidates = []
    for quantizer in quantizers:
        candidate = quantizer.quantize(target, request)
        recipe.enforce(candidate.model, candidate.excluded, source=f"the {target} INT8 model ({quantizer.name})")
        candidates.append(candidate)
    # targets scored on ONNX Runtime (cpu, tensorrt) run through the request's judge: for tensorrt a TensorRT
    # engine where TensorRT is here, else ONNX Runtime standing in (and saying so)
    judge = request.judge if recipe.runtime == "onnxruntime" else None
    scores = score_candidates(
        candidates, recipe.runtime, request.eval_inputs, request.eval_labels, request.float_logits,
        request.batch_size, judge,
    )
    for score in scores:
        log.info(
            "  %s %-9s on %s: top-1 %.2f (drop %.2f), agreement %.4f, p50 %s",
            target, score.quantizer, score.runtime, score.top1, score.drop, score.agreement,
            "-" if score.latency_ms is None else f"{score.latency_ms:.2f} ms",
        )
    best, reason = choose(scores, request.max_drop)
    winner = next(c for c, s in zip(candidates, scores) if s is best)
    log.info("  %s: kept %s (%s)", target, best.quantizer, reason)
    metrics = dict(winner.details)
    metrics.update(
        quantizer=best.quantizer,
        quantizer_choice=choice,
        quantizer_reason=reason,
        runtime=best.runtime,
        float_top1=round(best.top1 + best.drop, 4),
        int8_top1=round(best.top1, 4),
        drop=round(best.drop, 4),
        agreement=round(best.agreement, 6),
        snr_db=round(best.snr_db, 3),
        eval_images=best.images,
        excluded_nodes=list(winner.excluded),
        candidates={c.quantizer: dict(s.to_dict(), **_summary(c)) for c, s in zip(candidates, scores)},
        quantizers_not_installed=missing,
        **_scoring(judge, best.runtime),
        selection={"tie_points": ACCURACY_TIE_POINTS, "rule": "agreement and top-1 within tie_points of the best, "
                   "then lowest p50 latency, then quantizer order"},
    )
    return Competition(winner, best, reason, metrics, list(candidates), list(scores), recipe.runtime)


def _scoring(judge: Any, runtime: str) -> Dict[str, Any]:
    """Where the kept scores come from: ``scored_on``, ``stand_in`` and the judge's details (the same keys
    the accuracy guard records for its own steps)."""
    if judge is not None:
        scoring = judge.describe()
    else:
        scoring = {"scored_on": runtime, "stand_in": False, "float_layers_precision": "fp32"}
    return {"scored_on": scoring["scored_on"], "stand_in": scoring["stand_in"], "scoring": scoring}


def _summary(candidate: CandidateModel) -> Dict[str, Any]:
    """What the manifest keeps of a candidate besides its scores."""
    keys = ("calib_method", "quantize_seconds", "settings", "same_model_as", "same_graph_as", "bias_correction",
            "qat")
    return dict({k: candidate.details[k] for k in keys if k in candidate.details}, excluded_nodes=candidate.excluded)
