"""One artifact's accuracy parity against the float reference on the same labelled images, and the gate.

:func:`parity_entry` measures what ``verify.json`` records per artifact (``docs/verify-schema.md``):
top-1/top-k accuracy and their drops with paired-bootstrap intervals, McNemar's test, prediction
agreement, per-class deltas, and the logit comparison of :func:`edgexfer.compare.compare_logits` (the
one comparison every parity check uses). :func:`gate_reasons` says why an entry misses
``--max-drop`` / ``--min-agreement``. Plain arrays in, JSON-safe dicts out; no torch.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

from edgexfer import metrics as m
from edgexfer.compare import compare_logits

# Top-k reported next to top-1 (clamped to the number of classes).
TOPK = 5


def parity_entry(
    ref_logits: np.ndarray,
    logits: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Dict[str, Any]:
    """Accuracy, paired statistics and logit similarity of ``logits`` against ``ref_logits``.

    Returns the ``accuracy``, ``mcnemar``, ``agreement``, ``per_class`` and ``logits`` blocks of a
    verify.json artifact entry. Drops are reference minus artifact, in top-1 points.
    """
    k = min(TOPK, num_classes)
    ref1, oth1 = m.topk_correct(ref_logits, labels, 1), m.topk_correct(logits, labels, 1)
    ref5, oth5 = m.topk_correct(ref_logits, labels, k), m.topk_correct(logits, labels, k)
    ci = m.bootstrap_drop_ci(ref1, oth1, resamples, confidence, seed)
    ci5 = m.bootstrap_drop_ci(ref5, oth5, resamples, confidence, seed)
    comparison = compare_logits(ref_logits, logits)
    pred_ref, pred = np.asarray(ref_logits).argmax(axis=1), np.asarray(logits).argmax(axis=1)
    return {
        "accuracy": {
            "top1": float(100.0 * oth1.mean()),
            "top5": float(100.0 * oth5.mean()),
            "top5_k": k,
            "top1_drop": ci.drop,
            "top1_drop_ci": [ci.low, ci.high],
            "top5_drop": ci5.drop,
            "top5_drop_ci": [ci5.low, ci5.high],
            "confidence": ci.confidence,
            "bootstrap_resamples": ci.resamples,
        },
        "mcnemar": m.mcnemar(ref1, oth1).to_dict(),
        "agreement": {
            "agreement_pct": 100.0 * comparison.top1_agreement,
            "flip_rate_pct": 100.0 * (1.0 - comparison.top1_agreement),
            "flips": int(np.count_nonzero(pred_ref != pred)),
        },
        "per_class": {
            "accuracy": m.nan_to_none(m.per_class_accuracy(pred, labels, num_classes)),
            "delta": m.nan_to_none(m.per_class_delta(pred_ref, pred, labels, num_classes)),
        },
        "logits": {
            "cosine_mean": comparison.mean_cosine,
            "cosine_min": comparison.min_cosine,
            "snr_db": m.finite_or_none(comparison.snr_db),
            "max_abs_diff": comparison.max_abs_diff,
        },
    }


def reference_entry(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> Dict[str, Any]:
    """Top-1/top-k and per-class accuracy of the reference itself (the ``reference`` block's numbers)."""
    k = min(TOPK, num_classes)
    pred = np.asarray(logits).argmax(axis=1)
    return {
        "top1": m.topk_accuracy(logits, labels, 1),
        "top5": m.topk_accuracy(logits, labels, k),
        "top5_k": k,
        "per_class_accuracy": m.nan_to_none(m.per_class_accuracy(pred, labels, num_classes)),
    }


def gate_reasons(entry: Dict[str, Any], max_drop: Optional[float], min_agreement: Optional[float]) -> List[str]:
    """One line per gate an entry of :func:`parity_entry` misses (empty: it passes, or no gate is set).

    ``max_drop`` is in top-1 points and is compared with the drop's point estimate (the interval is
    quoted); ``min_agreement`` is in percent.
    """
    reasons = []
    accuracy = entry["accuracy"]
    drop = accuracy["top1_drop"]
    if max_drop is not None and drop > max_drop:
        low, high = accuracy["top1_drop_ci"]
        reasons.append(
            f"top-1 drop {drop:.2f} pts > --max-drop {max_drop:g} "
            f"({100 * accuracy['confidence']:.0f}% CI {low:.2f}..{high:.2f})"
        )
    agree = entry["agreement"]["agreement_pct"]
    if min_agreement is not None and agree < min_agreement:
        reasons.append(f"agreement {agree:.2f}% < --min-agreement {min_agreement:g}%")
    return reasons
