"""Latency measurement: warm-up, then timed calls until both an iteration and a time floor are met.

Honest timing rules (the ones trtexec and Polygraphy follow):
- warm-up calls first, never timed (lazy allocation, kernel selection, caches);
- every call is timed on its own with ``time.perf_counter`` so percentiles, not only a mean, exist;
- at least ``min_iterations`` calls *and* at least ``min_time_s`` seconds, so fast models get enough
  samples for a stable p99 and slow ones still finish; ``max_time_s`` caps the total;
- the caller passes the same input array to every backend, prepared outside the timed region;
- several things compared with each other are timed interleaved (:func:`measure_interleaved`), so a
  change in background load hits all of them alike and their ratios stay fair.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Hashable, Mapping, Tuple

import numpy as np

from edgexfer.errors import ConfigError


@dataclass(frozen=True)
class TimingConfig:
    """How long to warm up and measure. The defaults suit a CPU classifier at 224x224."""

    warmup: int = 10
    warmup_time_s: float = 2.0
    min_iterations: int = 50
    min_time_s: float = 1.0
    max_time_s: float = 20.0
    max_iterations: int = 100_000

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.warmup_time_s < 0:
            raise ConfigError(
                f"warm-up must be >= 0 calls and seconds, got {self.warmup}, {self.warmup_time_s}s"
            )
        if self.min_iterations < 1:
            raise ConfigError(f"timed iterations must be >= 1, got {self.min_iterations}")
        if self.min_time_s < 0 or self.max_time_s <= 0:
            raise ConfigError(
                f"timing limits must be positive, got min {self.min_time_s}s, max {self.max_time_s}s"
            )
        if self.max_iterations < self.min_iterations:
            raise ConfigError(
                f"max_iterations ({self.max_iterations}) must be >= min_iterations ({self.min_iterations})"
            )

    def to_dict(self) -> Dict[str, Any]:
        """JSON-safe dict."""
        return asdict(self)


def measure(fn: Callable[[], Any], config: TimingConfig = TimingConfig()) -> np.ndarray:
    """Call ``fn()`` up to ``config.warmup`` times untimed, then time each call; return seconds per call.

    Stops after ``min_iterations`` calls once ``min_time_s`` has passed, or when ``max_time_s`` or
    ``max_iterations`` is reached (but never before at least 3 timed calls, so percentiles exist).
    """
    # Warm-up ends after ``warmup`` calls or ``warmup_time_s``, whichever is first (at least one call
    # when warmup > 0): ten warm-up calls of a 2-second batch would only waste the budget.
    warm_start = time.perf_counter()
    for _ in range(config.warmup):
        fn()
        if time.perf_counter() - warm_start >= config.warmup_time_s:
            break
    samples = []
    clock = time.perf_counter
    started = clock()
    while True:
        t0 = clock()
        fn()
        samples.append(clock() - t0)
        count = len(samples)
        elapsed = clock() - started
        if count >= config.max_iterations:
            break
        if count >= 3 and elapsed >= config.max_time_s:
            break
        if count >= config.min_iterations and elapsed >= config.min_time_s:
            break
    return np.asarray(samples, dtype=np.float64)


def measure_interleaved(
    calls: Mapping[Hashable, Callable[[], Any]], rounds: int, round_config: Callable[[int], TimingConfig]
) -> Tuple[Dict[Hashable, np.ndarray], Dict[Hashable, Exception]]:
    """Time every call in ``rounds`` rounds, round-robin (A B C, A B C, ...), each round with
    ``round_config(round_index)``; return (seconds per call over all rounds, errors).

    A call that raises is recorded in errors and not called again; the others go on.
    """
    samples: Dict[Hashable, list] = {key: [] for key in calls}
    errors: Dict[Hashable, Exception] = {}
    for index in range(rounds):
        config = round_config(index)
        for key, call in calls.items():
            if key in errors:
                continue
            try:
                samples[key].append(measure(call, config))
            except Exception as exc:  # noqa: BLE001 - one failing runtime must not stop the others
                errors[key] = exc
    return {key: np.concatenate(parts) for key, parts in samples.items() if key not in errors}, errors
