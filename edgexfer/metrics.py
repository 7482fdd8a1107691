"""Accuracy-parity and latency statistics on plain arrays (numpy and scipy, no torch).

Everything here takes plain arrays so a device that has only ONNX Runtime or TensorRT can compute
the same numbers as the workstation (scipy is a hard dependency of edgexfer):

- top-k accuracy, prediction agreement (flip rate) and per-class accuracy deltas;
- the accuracy *drop* of an artifact against the float reference with a paired-bootstrap confidence
  interval (the same images resampled for both, so the interval reflects the correlation between them);
- McNemar's test on the discordant pairs (exact binomial when there are few, chi-square otherwise);
- logit cosine similarity and signal-to-noise ratio (Polygraphy-style output comparison);
- latency percentiles with spread and throughput.

Accuracies and drops are reported in percentage points (0-100) because that is how users state gates
(``--max-drop 1.0`` means one point of top-1).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from edgexfer.compare import cosine_rows as cosine_similarity  # noqa: F401 - re-exported
from edgexfer.compare import snr_db  # noqa: F401 - re-exported
from edgexfer.errors import ConfigError

# Below this many discordant pairs the chi-square approximation of McNemar's test is poor; the exact
# binomial test is used instead (the usual rule of thumb is b + c < 25).
MCNEMAR_EXACT_BELOW = 25
# Elements (resamples x images) the bootstrap draws at once: about 32 MB of indices and values.
BOOTSTRAP_ELEMENTS = 2_000_000


# ---- predictions ---------------------------------------------------------------------------------
def _check_logits(logits: np.ndarray, labels: Optional[np.ndarray] = None) -> np.ndarray:
    logits = np.asarray(logits)
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise ConfigError(f"logits must be a non-empty (N, num_classes) array, got shape {logits.shape}")
    if labels is not None and np.asarray(labels).shape != (logits.shape[0],):
        raise ConfigError(
            f"labels must have shape ({logits.shape[0]},) to match the logits, got {np.asarray(labels).shape}"
        )
    return logits


def topk_indices(logits: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest logits per row, best first, shape (N, k)."""
    logits = _check_logits(logits)
    k = min(int(k), logits.shape[1])
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    # A stable sort on the negated logits keeps ties in class order, so two backends with identical
    # outputs always agree on the ranking.
    return np.argsort(-logits, axis=1, kind="stable")[:, :k]


def topk_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Boolean (N,): whether each row's label is among its top ``k`` logits."""
    logits = _check_logits(logits, labels)
    labels = np.asarray(labels)
    return (topk_indices(logits, k) == labels[:, None]).any(axis=1)


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Top-``k`` accuracy in percent (0-100)."""
    return float(100.0 * topk_correct(logits, labels, k).mean())


def agreement(pred_a: np.ndarray, pred_b: np.ndarray) -> float:
    """Fraction (0-1) of samples on which two prediction vectors agree; ``1 - agreement`` is the flip rate."""
    pred_a, pred_b = np.asarray(pred_a), np.asarray(pred_b)
    if pred_a.shape != pred_b.shape or pred_a.size == 0:
        raise ConfigError(
            f"predictions must be non-empty and of equal shape, got {pred_a.shape} and {pred_b.shape}"
        )
    return float((pred_a == pred_b).mean())


def per_class_accuracy(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Top-1 accuracy in percent per class (length ``num_classes``); NaN for classes with no samples."""
    pred, labels = np.asarray(pred), np.asarray(labels)
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    hits = np.bincount(labels[pred == labels], minlength=num_classes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, 100.0 * hits / counts, np.nan)


def per_class_delta(
    pred_ref: np.ndarray, pred_other: np.ndarray, labels: np.ndarray, num_classes: int
) -> np.ndarray:
    """Per-class top-1 accuracy of ``pred_other`` minus that of ``pred_ref``, in points (NaN: no samples)."""
    return per_class_accuracy(pred_other, labels, num_classes) - per_class_accuracy(
        pred_ref, labels, num_classes
    )


# ---- paired statistics ---------------------------------------------------------------------------
@dataclass(frozen=True)
class DropCI:
    """Accuracy drop (reference minus candidate, in points) and its paired-bootstrap interval."""

    drop: float
    low: float
    high: float
    confidence: float
    resamples: int

    def to_dict(self) -> Dict[str, Any]:
        """JSON-safe dict."""
        return asdict(self)


def _paired(correct_ref: np.ndarray, correct_other: np.ndarray) -> "tuple[np.ndarray, np.ndarray]":
    ref = np.asarray(correct_ref, dtype=bool)
    other = np.asarray(correct_other, dtype=bool)
    if ref.shape != other.shape or ref.ndim != 1 or ref.size == 0:
        raise ConfigError(
            f"paired correctness vectors must be non-empty 1-D arrays of equal length, got "
            f"{ref.shape} and {other.shape}"
        )
    return ref, other


def bootstrap_drop_ci(
    correct_ref: np.ndarray,
    correct_other: np.ndarray,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> DropCI:
    """Drop in accuracy (points) of ``other`` against ``ref`` with a paired percentile-bootstrap CI.

    Each resample draws the same image indices for both models (paired), so the interval accounts for
    the two models being right and wrong on largely the same images. Deterministic for a given seed.
    """
    ref, other = _paired(correct_ref, correct_other)
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must be between 0 and 1, got {confidence}")
    if resamples < 100:
        raise ConfigError(f"bootstrap resamples must be >= 100 for a usable interval, got {resamples}")
    diff = ref.astype(np.float64) - other.astype(np.float64)  # +1: only ref right, -1: only other right
    if diff.size < 2:
        # One image: every resample is that image, so the interval is the point (scipy needs two).
        low = high = float(diff.mean())
    else:
        from scipy.stats import bootstrap

        # Resampling the per-image differences is the paired bootstrap (an image is drawn for both
        # models at once), at half the cost of scipy's two-sample ``paired=True``. ``batch`` bounds the
        # resamples drawn at once (about 16 bytes per element), so 50k images do not allocate
        # resamples x n; it does not change the result, which is the same random stream either way.
        interval = bootstrap(
            (diff,),
            np.mean,
            n_resamples=int(resamples),
            batch=max(1, BOOTSTRAP_ELEMENTS // diff.size),
            vectorized=True,
            confidence_level=confidence,
            method="percentile",
            random_state=np.random.default_rng(seed),
        ).confidence_interval
        low, high = float(interval.low), float(interval.high)
    return DropCI(
        drop=float(100.0 * diff.mean()),
        low=100.0 * low,
        high=100.0 * high,
        confidence=float(confidence),
        resamples=int(resamples),
    )


def wilson_interval(successes: int, total: int, confidence: float = 0.95) -> "tuple[float, float]":
    """Wilson score interval (fractions, 0-1) for a binomial proportion ``successes / total``.

    Chosen over the normal (Wald) interval because it keeps its coverage for small ``total`` and for
    proportions near 0 or 1 (a few hundred images, accuracies near 100% or near chance), and over a
    bootstrap because it is closed-form and deterministic.
    """
    if total < 1 or not 0 <= successes <= total:
        raise ConfigError(f"need 0 <= successes <= total and total >= 1, got {successes} of {total}")
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must be between 0 and 1, got {confidence}")
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + confidence / 2.0))
    p, n = successes / total, float(total)
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2.0 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class McNemarResult:
    """McNemar's test: ``only_ref`` = reference right and candidate wrong, ``only_other`` the reverse."""

    only_ref: int
    only_other: int
    statistic: float
    p_value: float
    method: str

    def to_dict(self) -> Dict[str, Any]:
        """JSON-safe dict."""
        return asdict(self)


def mcnemar(
    correct_ref: np.ndarray, correct_other: np.ndarray, exact: Optional[bool] = None
) -> McNemarResult:
    """Two-sided McNemar test of whether two models' accuracies differ on the same images.

    ``exact=None`` picks the exact binomial test when there are fewer than 25 discordant pairs and the
    chi-square test with continuity correction otherwise. With no discordant pairs p = 1.
    """
    ref, other = _paired(correct_ref, correct_other)
    b = int(np.count_nonzero(ref & ~other))
    c = int(np.count_nonzero(~ref & other))
    n = b + c
    if exact is None:
        exact = n < MCNEMAR_EXACT_BELOW
    if n == 0:
        return McNemarResult(b, c, 0.0, 1.0, "exact" if exact else "chi2")
    from scipy.stats import binomtest, chi2

    if exact:
        # Two-sided exact binomial test of the discordant pairs with p = 0.5.
        k = min(b, c)
        return McNemarResult(b, c, float(k), float(binomtest(k, n, 0.5).pvalue), "exact")
    statistic = (abs(b - c) - 1.0) ** 2 / n  # with continuity correction
    return McNemarResult(b, c, float(statistic), float(chi2.sf(statistic, 1)), "chi2")


# ---- output similarity ---------------------------------------------------------------------------
# ``cosine_similarity`` and ``snr_db`` live in :mod:`edgexfer.compare`, with the Comparison / Tolerance
# that every parity check uses; they are imported above so existing callers keep working.


# ---- latency -------------------------------------------------------------------------------------
LATENCY_PERCENTILES = (50, 90, 99)


def latency_stats(samples_s: Sequence[float], batch_size: int = 1) -> Dict[str, Any]:
    """Latency summary in milliseconds from per-call wall times in seconds.

    Returns p50/p90/p99, mean, std, min, max, p25/p75 and the interquartile range (the spread shown
    next to the median), the sample count and throughput in images per second at the median.
    """
    samples = np.asarray(samples_s, dtype=np.float64)
    if samples.ndim != 1 or samples.size == 0 or not np.all(np.isfinite(samples)) or np.any(samples < 0):
        raise ConfigError("latency samples must be a non-empty list of finite, non-negative seconds")
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    ms = samples * 1000.0
    p50, p90, p99 = (float(np.percentile(ms, q)) for q in LATENCY_PERCENTILES)
    q25, q75 = np.percentile(ms, [25, 75])
    return {
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p99,
        "mean_ms": float(ms.mean()),
        "std_ms": float(ms.std(ddof=1)) if ms.size > 1 else 0.0,
        "p25_ms": float(q25),
        "p75_ms": float(q75),
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
        "iqr_ms": float(q75 - q25),
        "n": int(ms.size),
        "batch_size": int(batch_size),
        "throughput_ips": float(batch_size * 1000.0 / p50) if p50 > 0 else math.inf,
    }


def finite_or_none(value: float) -> Optional[float]:
    """``value`` when finite, else None: JSON has no inf/NaN (the schema documents null as 'identical')."""
    return float(value) if value is not None and math.isfinite(value) else None


def nan_to_none(values: np.ndarray) -> List[Optional[float]]:
    """A float list with NaN replaced by None, for JSON."""
    return [None if not math.isfinite(v) else float(v) for v in np.asarray(values, dtype=np.float64)]
