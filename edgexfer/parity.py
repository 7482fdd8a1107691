"""One artifact's accuracy parity against the float reference on the same labelled images, and the gate.

:func:`parity_entry` measures what ``verify.json`` records per artifact (``docs/verify-schema.md``):
top-1/top-k accuracy and their drops with paired-bootstrap intervals, McNemar's test, prediction
agreement, per-class deltas, and the logit comparison of :func:`edgexfer.compare.compare_logits` (the
one comparison every parity check uses). :func:`gate_reasons` says why an entry misses
``--max-drop`` / ``--min-agreement``. Plain arrays in, JSON-safe dicts out; no torch.

:func:`chance_check` says whether a reference is better than chance on labelled images (verify's
INCONCLUSIVE verdict, and the notes of ``export --int8`` and the build smoke check); :class:`Gates`
holds every verify gate and :func:`judge_entry` gives an artifact its status from them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from edgexfer import metrics as m
from edgexfer.compare import compare_logits
from edgexfer.errors import ConfigError

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


# ---- gates ---------------------------------------------------------------------------------------
GATE_ON = ("point", "ci")
# Drops and per-class accuracies are differences of float percentages (3 of 10 images: 30.000000000000004);
# a value this close to its limit is at the limit, not over it.
_EPS = 1e-9


@dataclass(frozen=True)
class Gates:
    """verify's gates (``None`` leaves one out): ``max_drop`` and ``max_class_drop`` in top-1 points,
    ``min_agreement`` in percent, ``max_p99_ms`` in milliseconds (the artifact's p99 at the latency batch),
    ``min_speedup`` as a ratio (the torch float reference's p50 over the artifact's). ``gate_on`` is what
    ``max_drop`` is compared with: ``point`` the measured drop, ``ci`` the upper bound of its confidence
    interval (a pass then says the data show the drop is within budget, not only that it looked so).
    ``max_class_drop`` is always the point estimate: a class has too few images for a useful interval."""

    max_drop: Optional[float] = None
    min_agreement: Optional[float] = None
    gate_on: str = "point"
    max_class_drop: Optional[float] = None
    max_p99_ms: Optional[float] = None
    min_speedup: Optional[float] = None

    def __post_init__(self) -> None:
        if self.gate_on not in GATE_ON:
            raise ConfigError(
                f"--gate-on must be one of {', '.join(GATE_ON)} (point: the measured drop, ci: the upper "
                f"bound of its confidence interval), got '{self.gate_on}'"
            )
        if self.gate_on == "ci" and self.max_drop is None:
            raise ConfigError(
                "--gate-on ci compares the upper bound of the drop's CI with --max-drop; set --max-drop PTS"
            )
        if self.max_class_drop is not None and not 0.0 <= self.max_class_drop <= 100.0:
            raise ConfigError(f"--max-class-drop is in top-1 percentage points (0-100), got {self.max_class_drop}")
        for name, value in (("--max-p99-ms", self.max_p99_ms), ("--min-speedup", self.min_speedup)):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number, got {value}")

    @property
    def latency_options(self) -> List[str]:
        """The latency gates that are set (they need latency measured)."""
        return [name for name, v in (("--max-p99-ms", self.max_p99_ms), ("--min-speedup", self.min_speedup)) if v]

    def require_reference_latency(self, reference: Dict[str, Any]) -> None:
        """ConfigError when ``--min-speedup`` is set but there is no torch float latency to compare with."""
        if self.min_speedup is not None and not _torch_p50(reference):
            raise ConfigError(
                f"--min-speedup compares with the torch float reference's latency, which this verify did not "
                f"measure (reference: {reference.get('backend')}); drop --min-speedup or verify where torch runs"
            )

    def values(self, entry: Dict[str, Any], reference: Dict[str, Any],
               class_names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
        """The measured numbers the gates compare, gated or not (an artifact entry of :func:`parity_entry`
        with its ``latency``; the ``reference`` block with its own)."""
        accuracy = entry["accuracy"]
        drops = [(-d, i) for i, d in enumerate(entry["per_class"]["delta"]) if d is not None]
        worst, index = max(drops, key=lambda pair: pair[0]) if drops else (None, None)  # ties: first class
        latency = entry.get("latency") or {}
        p50, ref_p50 = latency.get("p50_ms"), _torch_p50(reference)
        return {
            "top1_drop": accuracy["top1_drop"],
            "top1_drop_ci": list(accuracy["top1_drop_ci"]),
            "agreement_pct": entry["agreement"]["agreement_pct"],
            "worst_class_drop": worst,
            "worst_class": None if index is None else (class_names[index] if class_names else index),
            "p99_ms": latency.get("p99_ms"),
            "speedup": ref_p50 / p50 if (p50 and ref_p50) else None,
        }

    def reasons(self, values: Dict[str, Any], confidence: float = 0.95) -> List[str]:
        """One line per gate that ``values`` (of :meth:`values`) miss; empty: every set gate passes."""
        out = []
        drop, (low, high) = values["top1_drop"], values["top1_drop_ci"]
        conf = f"{100 * confidence:.0f}% CI"
        if self.max_drop is not None and self.gate_on == "point" and drop > self.max_drop + _EPS:
            out.append(f"top-1 drop {drop:.2f} pts > --max-drop {self.max_drop:g} ({conf} {low:.2f}..{high:.2f})")
        if self.max_drop is not None and self.gate_on == "ci" and high > self.max_drop + _EPS:
            out.append(f"upper bound of the top-1 drop's {conf} {high:.2f} pts > --max-drop {self.max_drop:g} "
                       f"(--gate-on ci; measured drop {drop:.2f})")
        agree = values["agreement_pct"]
        if self.min_agreement is not None and agree < self.min_agreement - _EPS:
            out.append(f"agreement {agree:.2f}% < --min-agreement {self.min_agreement:g}%")
        worst = values["worst_class_drop"]
        if self.max_class_drop is not None and worst is not None and worst > self.max_class_drop + _EPS:
            out.append(f"class '{values['worst_class']}' top-1 drop {worst:.2f} pts > --max-class-drop "
                       f"{self.max_class_drop:g}")
        p99, speedup = values["p99_ms"], values["speedup"]
        if self.max_p99_ms is not None and not (p99 is not None and p99 <= self.max_p99_ms):
            measured = "not measured" if p99 is None else f"{p99:.2f} ms"
            out.append(f"p99 latency {measured} > --max-p99-ms {self.max_p99_ms:g}")
        if self.min_speedup is not None and not (speedup is not None and speedup >= self.min_speedup):
            measured = "not measured" if speedup is None else f"{speedup:.2f}x"
            out.append(f"speed-up over torch fp32 (p50) {measured} < --min-speedup {self.min_speedup:g}")
        return out

    def to_dict(self) -> Dict[str, Any]:
        """JSON-safe dict of the thresholds."""
        return asdict(self)


def _torch_p50(reference: Dict[str, Any]) -> Optional[float]:
    """The torch float reference's p50 latency (ms), or None when the reference is not torch or untimed."""
    if reference.get("backend") != "torch":
        return None
    return (reference.get("latency") or {}).get("p50_ms")


def judge_entry(entry: Dict[str, Any], gates: Gates, reference: Dict[str, Any],
                class_names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Give a measured artifact entry its ``gate`` block and ``status`` (entries already ``error`` or
    ``skipped`` are returned as they are): ``failed`` when a gate misses, else ``inconclusive`` when the
    reference's ``chance`` block (:class:`ChanceCheck`) says it is not better than chance, else ``passed``.
    A gate failure wins over inconclusive: an artifact that differs from its reference is wrong whatever
    the reference is worth; latency gates are judged whatever the accuracy."""
    if entry.get("status") in ("error", "skipped"):
        return entry
    values = gates.values(entry, reference, class_names)
    reasons = gates.reasons(values, entry["accuracy"]["confidence"])
    entry["gate"] = {"passed": not reasons, "reasons": reasons, "values": values}
    chance = reference.get("chance")
    if reasons:
        entry["status"] = "failed"
    elif chance is not None and not chance["above_chance"]:
        entry["status"] = "inconclusive"
    else:
        entry["status"] = "passed"
    return entry


def gate_reasons(entry: Dict[str, Any], max_drop: Optional[float], min_agreement: Optional[float]) -> List[str]:
    """The reasons of :meth:`Gates.reasons` for the two accuracy gates alone (``max_drop`` on the point)."""
    gates = Gates(max_drop=max_drop, min_agreement=min_agreement)
    return gates.reasons(gates.values(entry, {}), entry["accuracy"]["confidence"])


# ---- is the reference better than chance? --------------------------------------------------------
# Chance level is what a label-blind classifier scores on these labels: always answering the most
# frequent class. On a balanced set that is 1/num_classes; on an unbalanced one it is higher, and a
# model collapsed onto one class scores exactly that class's share. The reference is "better than
# chance" when the lower bound of the Wilson interval of its top-1 (at the verify confidence, 95% by
# default: a one-sided test at 2.5%) is above chance. No margin is added: the interval already is the
# margin, and it widens as the data shrinks (with 10 balanced classes, 3 of 8 images right, or 41 of 300).
@dataclass(frozen=True)
class ChanceCheck:
    """The reference's top-1 on labelled images against chance level (percent), with its interval."""

    images: int
    correct: int
    top1: float
    top1_low: float
    top1_high: float
    confidence: float
    chance: float
    above_chance: bool

    @property
    def reason(self) -> Optional[str]:
        """Why agreement with this reference proves nothing (None when it is above chance)."""
        if self.above_chance:
            return None
        return (
            f"the float reference is not better than chance on these {self.images} images: top-1 "
            f"{self.top1:.2f}% ({100 * self.confidence:.0f}% CI {self.top1_low:.2f}..{self.top1_high:.2f}%) "
            f"includes chance level {self.chance:.2f}% (the most frequent class's share), so agreement "
            "with it proves nothing about accuracy"
        )

    def to_dict(self) -> Dict[str, Any]:
        """JSON-safe dict, with the reason."""
        return {**asdict(self), "reason": self.reason}


def chance_check(logits: np.ndarray, labels: np.ndarray, confidence: float = 0.95) -> ChanceCheck:
    """Is the model whose ``logits`` these are better than chance on ``labels``? (see the rule above)"""
    labels = np.asarray(labels)
    correct = int(np.count_nonzero(m.topk_correct(logits, labels, 1)))
    total = int(labels.size)
    low, high = m.wilson_interval(correct, total, confidence)
    chance = 100.0 * np.bincount(labels).max() / total
    return ChanceCheck(
        images=total,
        correct=correct,
        top1=100.0 * correct / total,
        top1_low=100.0 * low,
        top1_high=100.0 * high,
        confidence=float(confidence),
        chance=float(chance),
        above_chance=bool(100.0 * low > chance),
    )
