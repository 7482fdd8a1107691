"""One way to compare two models' logits on the same inputs (the Polygraphy ``Comparator`` idea).

Every place that asks "does this artifact still compute what the float model computes" -- the export
parity check, the build smoke check, INT8 candidate scoring, the uint8-input variant check and
``verify`` -- measures the same :class:`Comparison` with :func:`compare_logits` and states its bound
as a :class:`Tolerance`. :func:`check` raises :class:`ParityError` with one line that names every
bound that failed. Pure numpy, so it runs on a device without torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional

import numpy as np

from edgexfer.errors import ConfigError, ParityError


@dataclass(frozen=True)
class Comparison:
    """How far ``other`` is from ``reference``: logit distance, direction, noise and top-1 agreement.

    ``top1_agreement`` is a fraction (0-1); ``snr_db`` is ``inf`` when the logits are identical;
    ``reference_max_abs`` is kept so a relative tolerance can be judged later.
    """

    images: int
    max_abs_diff: float
    reference_max_abs: float
    mean_cosine: float
    min_cosine: float
    snr_db: float
    top1_agreement: float
    finite: bool

    def to_dict(self) -> Dict[str, Any]:
        """JSON-safe dict (non-finite numbers become None)."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Tolerance:
    """Bounds a :class:`Comparison` must meet; ``None`` leaves a bound out.

    ``atol``/``rtol`` bound the max abs logit difference by ``atol + rtol * max|reference|`` (the
    export parity gate); the cosine, SNR and agreement bounds are for quantized artifacts, where the
    logits move but their direction and the decisions must not.
    """

    atol: Optional[float] = None
    rtol: float = 0.0
    min_mean_cosine: Optional[float] = None
    min_cosine: Optional[float] = None
    min_snr_db: Optional[float] = None
    min_agreement: Optional[float] = None

    def __post_init__(self) -> None:
        for name in ("atol", "rtol"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ConfigError(f"{name} must be >= 0, got {value}")
        for name in ("min_mean_cosine", "min_cosine"):
            value = getattr(self, name)
            if value is not None and not -1.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be in [-1, 1], got {value}")
        if self.min_agreement is not None and not 0.0 <= self.min_agreement <= 1.0:
            raise ConfigError(f"min_agreement must be a fraction in [0, 1], got {self.min_agreement}")

    def logit_bound(self, comparison: Comparison) -> Optional[float]:
        """The max abs difference allowed for this comparison, or None without ``atol``."""
        if self.atol is None:
            return None
        return self.atol + self.rtol * comparison.reference_max_abs

    def failures(self, comparison: Comparison) -> List[str]:
        """A short phrase per bound that ``comparison`` misses (empty: it passes)."""
        out: List[str] = []
        if not comparison.finite:
            out.append("NaN/Inf in the logits")
        bound = self.logit_bound(comparison)
        if bound is not None and not comparison.max_abs_diff <= bound:
            out.append(f"max abs logit difference {comparison.max_abs_diff:.3g} > {bound:.3g}")
        if self.min_mean_cosine is not None and not comparison.mean_cosine >= self.min_mean_cosine:
            out.append(f"mean logit cosine {comparison.mean_cosine:.4f} < {self.min_mean_cosine}")
        if self.min_cosine is not None and not comparison.min_cosine >= self.min_cosine:
            out.append(f"min logit cosine {comparison.min_cosine:.4f} < {self.min_cosine}")
        if self.min_snr_db is not None and not comparison.snr_db >= self.min_snr_db:
            out.append(f"logit SNR {comparison.snr_db:.1f} dB < {self.min_snr_db} dB")
        if self.min_agreement is not None and not comparison.top1_agreement >= self.min_agreement:
            out.append(f"top-1 agreement {comparison.top1_agreement:.1%} < {self.min_agreement:.1%}")
        return out


def cosine_rows(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity (N,) of two equally shaped arrays; rows that are both zero count as 1."""
    ref = np.asarray(reference, dtype=np.float64)
    oth = np.asarray(other, dtype=np.float64)
    if ref.shape != oth.shape:
        raise ConfigError(f"cannot compare logits of shapes {ref.shape} and {oth.shape}")
    ref = ref.reshape(ref.shape[0], -1)
    oth = oth.reshape(oth.shape[0], -1)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(oth, axis=1)
    dots = (ref * oth).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        sims = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 0.0)
    both_zero = (np.abs(ref).sum(axis=1) == 0) & (np.abs(oth).sum(axis=1) == 0)
    return np.where(both_zero, 1.0, sims)


def snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    """Signal-to-noise ratio in dB: 10 log10(sum(ref^2) / sum((ref - other)^2)); inf when identical."""
    ref = np.asarray(reference, dtype=np.float64)
    oth = np.asarray(other, dtype=np.float64)
    if ref.shape != oth.shape:
        raise ConfigError(f"cannot compare logits of shapes {ref.shape} and {oth.shape}")
    noise = float(np.sum((ref - oth) ** 2))
    signal = float(np.sum(ref**2))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def compare_logits(reference: np.ndarray, other: np.ndarray) -> Comparison:
    """Measure ``other`` against ``reference`` (both (N, C) logits of the same inputs).

    A shape mismatch is a :class:`ParityError`: the artifact does not compute the same function.
    """
    ref = np.asarray(reference, dtype=np.float64)
    oth = np.asarray(other, dtype=np.float64)
    if ref.shape != oth.shape or ref.ndim != 2 or ref.shape[0] == 0:
        raise ParityError(f"logits of shape {oth.shape} cannot be compared with the reference's {ref.shape}")
    finite = bool(np.all(np.isfinite(oth)) and np.all(np.isfinite(ref)))
    with np.errstate(invalid="ignore", over="ignore"):
        diff = float(np.max(np.abs(ref - oth))) if finite else math.inf
        cosine = cosine_rows(ref, oth) if finite else np.array([math.nan])
        noise_ratio = snr_db(ref, oth) if finite else -math.inf
    return Comparison(
        images=int(ref.shape[0]),
        max_abs_diff=diff,
        reference_max_abs=float(np.max(np.abs(ref))) if np.all(np.isfinite(ref)) else math.inf,
        mean_cosine=float(np.mean(cosine)),
        min_cosine=float(np.min(cosine)),
        snr_db=float(noise_ratio),
        top1_agreement=float(np.mean(ref.argmax(1) == oth.argmax(1))),
        finite=finite,
    )


def check(reference: np.ndarray, other: np.ndarray, tolerance: Tolerance, what: str) -> Comparison:
    """:func:`compare_logits`, then :class:`ParityError` ``"<what> differs from ...: <failures>"``."""
    comparison = compare_logits(reference, other)
    failed = tolerance.failures(comparison)
    if failed:
        raise ParityError(
            f"{what} differs from the reference on {comparison.images} inputs: {'; '.join(failed)} "
            f"(top-1 agreement {comparison.top1_agreement:.1%})"
        )
    return comparison
