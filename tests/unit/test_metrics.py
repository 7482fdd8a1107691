"""edgexfer.metrics and edgexfer.timing against scipy and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgexfer import metrics
from edgexfer.errors import ConfigError
from edgexfer.timing import TimingConfig, measure


def test_topk_accuracy_hand_computed():
    logits = np.array(
        [
            [0.1, 0.7, 0.2],  # top1 1, top2 {1,2}
            [0.5, 0.1, 0.4],  # top1 0, top2 {0,2}
            [0.2, 0.3, 0.5],  # top1 2, top2 {2,1}
            [0.9, 0.05, 0.05],
        ]
    )
    labels = np.array([1, 2, 1, 0])
    assert metrics.topk_accuracy(logits, labels, 1) == pytest.approx(50.0)
    assert metrics.topk_accuracy(logits, labels, 2) == pytest.approx(100.0)
    # k larger than the class count is clamped (top-5 of a 3-class model is 100 %).
    assert metrics.topk_accuracy(logits, labels, 5) == pytest.approx(100.0)
    assert metrics.topk_indices(logits, 2).tolist() == [[1, 2], [0, 2], [2, 1], [0, 1]]


def test_topk_ties_break_in_class_order():
    logits = np.array([[1.0, 1.0, 0.0]])
    assert metrics.topk_indices(logits, 1).tolist() == [[0]]


def test_bad_shapes_raise_config_error():
    with pytest.raises(ConfigError, match="logits"):
        metrics.topk_accuracy(np.zeros(3), np.zeros(3, dtype=int))
    with pytest.raises(ConfigError, match="labels"):
        metrics.topk_accuracy(np.zeros((3, 2)), np.zeros(4, dtype=int))
    with pytest.raises(ConfigError):
        metrics.mcnemar([True], [True, False])


def test_agreement_and_per_class_delta():
    labels = np.array([0, 0, 1, 1, 2, 2])
    ref = np.array([0, 0, 1, 1, 2, 0])
    oth = np.array([0, 1, 1, 1, 2, 2])
    assert metrics.agreement(ref, oth) == pytest.approx(4 / 6)
    assert metrics.per_class_accuracy(ref, labels, 4)[:3].tolist() == [100.0, 100.0, 50.0]
    delta = metrics.per_class_delta(ref, oth, labels, 4)
    assert delta[:3].tolist() == [-50.0, 0.0, 50.0]
    assert math.isnan(delta[3])  # class 3 has no samples
    assert metrics.nan_to_none(delta) == [-50.0, 0.0, 50.0, None]


def test_mcnemar_exact_hand_computed_and_scipy():
    from scipy.stats import binomtest

    ref = np.array([True] * 10 + [False] * 2 + [True] * 50 + [False] * 8)
    oth = np.array([False] * 10 + [True] * 2 + [True] * 50 + [False] * 8)
    result = metrics.mcnemar(ref, oth)
    assert (result.only_ref, result.only_other, result.method) == (10, 2, "exact")
    # 2 * (C(12,0) + C(12,1) + C(12,2)) / 2^12 = 158 / 4096
    assert result.p_value == pytest.approx(158 / 4096, rel=1e-12)
    assert result.p_value == pytest.approx(binomtest(2, 12, 0.5).pvalue, rel=1e-9)


def test_mcnemar_chi2_matches_scipy():
    from scipy.stats import chi2

    ref = np.array([True] * 30 + [False] * 10 + [True] * 100)
    oth = np.array([False] * 30 + [True] * 10 + [True] * 100)
    result = metrics.mcnemar(ref, oth)
    assert result.method == "chi2"
    assert result.statistic == pytest.approx((20 - 1) ** 2 / 40)  # 9.025
    assert result.p_value == pytest.approx(chi2.sf(9.025, 1), rel=1e-9)
    assert result.p_value == pytest.approx(0.002663, abs=2e-6)


def test_mcnemar_no_discordant_pairs_is_p_one():
    same = np.array([True, False, True])
    assert metrics.mcnemar(same, same).p_value == 1.0


@pytest.mark.parametrize("b,c", [(0, 5), (3, 3), (7, 1), (24, 0), (12, 11), (700, 600)])
def test_mcnemar_exact_matches_scipy_binomtest(b, c):
    from scipy.stats import binomtest

    ref = np.array([True] * b + [False] * c + [True, False])
    oth = np.array([False] * b + [True] * c + [True, False])
    assert metrics.mcnemar(ref, oth, exact=True).p_value == pytest.approx(
        binomtest(min(b, c), b + c, 0.5).pvalue, rel=1e-9
    )


def test_bootstrap_drop_matches_scipy_paired_percentile():
    from scipy.stats import bootstrap

    rng = np.random.default_rng(1)
    n = 400
    ref = rng.random(n) < 0.80
    # The candidate flips 40 of the reference's correct answers to wrong and 12 wrong ones to right.
    oth = ref.copy()
    right = np.flatnonzero(ref)[:40]
    wrong = np.flatnonzero(~ref)[:12]
    oth[right] = False
    oth[wrong] = True
    ours = metrics.bootstrap_drop_ci(ref, oth, resamples=9999, confidence=0.95, seed=3)
    assert ours.drop == pytest.approx(100.0 * (40 - 12) / n)  # 7.0 points
    theirs = bootstrap(
        (ref.astype(float), oth.astype(float)),
        lambda x, y, axis: 100.0 * (x.mean(axis=axis) - y.mean(axis=axis)),
        paired=True,
        vectorized=True,
        n_resamples=9999,
        confidence_level=0.95,
        method="percentile",
        random_state=np.random.default_rng(5),
    )
    # Monte-Carlo intervals from different random streams agree to a few tenths of a point.
    assert ours.low == pytest.approx(theirs.confidence_interval.low, abs=0.35)
    assert ours.high == pytest.approx(theirs.confidence_interval.high, abs=0.35)
    # And to the normal approximation of a mean of paired differences: drop +- 1.96 * sd / sqrt(n).
    diff = ref.astype(float) - oth.astype(float)
    half = 1.96 * 100.0 * diff.std(ddof=1) / math.sqrt(n)
    assert ours.low == pytest.approx(ours.drop - half, abs=0.5)
    assert ours.high == pytest.approx(ours.drop + half, abs=0.5)
    assert ours.low < ours.drop < ours.high


def test_bootstrap_equals_resampling_the_image_differences_directly():
    # The definition, written out: draw n images with replacement (the same draws for both models),
    # take the mean per-image difference, then the percentiles. Same seed -> the same interval.
    rng = np.random.default_rng(4)
    ref = rng.random(300) < 0.85
    oth = np.where(rng.random(300) < 0.08, ~ref, ref)
    diff = ref.astype(float) - oth.astype(float)
    draws = np.random.default_rng(11).integers(0, diff.size, size=(1000, diff.size))
    low, high = np.quantile(diff[draws].mean(axis=1), [0.05, 0.95])
    ours = metrics.bootstrap_drop_ci(ref, oth, resamples=1000, confidence=0.90, seed=11)
    assert (ours.low, ours.high) == pytest.approx((100 * low, 100 * high), abs=1e-9)
    assert ours.drop == pytest.approx(100 * diff.mean())


def test_bootstrap_of_one_image_is_its_point():
    ci = metrics.bootstrap_drop_ci([True], [False], resamples=100)
    assert (ci.drop, ci.low, ci.high) == (100.0, 100.0, 100.0)


def test_bootstrap_is_deterministic_and_degenerate_when_identical():
    ref = np.array([True, False] * 50)
    a = metrics.bootstrap_drop_ci(ref, ref, resamples=500, seed=0)
    assert (a.drop, a.low, a.high) == (0.0, 0.0, 0.0)
    oth = ref.copy()
    oth[:10] = ~oth[:10]
    assert metrics.bootstrap_drop_ci(ref, oth, seed=7) == metrics.bootstrap_drop_ci(ref, oth, seed=7)
    with pytest.raises(ConfigError, match="resamples"):
        metrics.bootstrap_drop_ci(ref, oth, resamples=10)


def test_cosine_and_snr_hand_computed():
    ref = np.array([[1.0, 0.0], [3.0, 4.0], [0.0, 0.0]])
    oth = np.array([[0.0, 1.0], [6.0, 8.0], [0.0, 0.0]])
    assert metrics.cosine_similarity(ref, oth).tolist() == pytest.approx([0.0, 1.0, 1.0])
    signal = np.array([[3.0, 4.0]])  # sum of squares 25
    noisy = np.array([[3.5, 4.0]])  # noise 0.25 -> SNR 100 -> 20 dB
    assert metrics.snr_db(signal, noisy) == pytest.approx(20.0)
    assert metrics.snr_db(signal, signal) == math.inf
    assert metrics.finite_or_none(math.inf) is None


def test_latency_stats_hand_computed():
    samples = np.arange(1, 101) / 1000.0  # 1..100 ms
    stats = metrics.latency_stats(samples, batch_size=8)
    assert stats["p50_ms"] == pytest.approx(50.5)
    assert stats["p90_ms"] == pytest.approx(np.percentile(np.arange(1, 101), 90))
    assert stats["p99_ms"] == pytest.approx(99.01)
    assert stats["iqr_ms"] == pytest.approx(49.5)
    assert stats["throughput_ips"] == pytest.approx(8 * 1000 / 50.5)
    assert (stats["min_ms"], stats["max_ms"], stats["n"]) == (1.0, 100.0, 100)
    with pytest.raises(ConfigError):
        metrics.latency_stats([])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=60), st.integers(0, 2**31 - 1))
def test_bootstrap_interval_contains_point_estimate_and_drop_is_bounded(flags, seed):
    rng = np.random.default_rng(seed)
    ref = np.array(flags)
    oth = rng.random(ref.size) < 0.5
    ci = metrics.bootstrap_drop_ci(ref, oth, resamples=200, seed=seed)
    assert -100.0 <= ci.low <= ci.high <= 100.0
    # The percentile interval of a mean brackets the sample mean except in tiny, skewed samples.
    assert ci.low - 1e-9 <= ci.drop <= ci.high + 1e-9 or ref.size < 20
    mc = metrics.mcnemar(ref, oth)
    assert 0.0 <= mc.p_value <= 1.0


def test_measure_warms_up_and_meets_floors():
    calls = []
    samples = measure(
        lambda: calls.append(1), TimingConfig(warmup=5, min_iterations=20, min_time_s=0.0, max_time_s=5.0)
    )
    assert len(samples) == 20
    assert len(calls) == 25
    assert np.all(samples >= 0)
    with pytest.raises(ConfigError):
        TimingConfig(min_iterations=0)


def test_measure_caps_warm_up_time_and_total_time():
    import time

    calls = []

    def slow():
        calls.append(1)
        time.sleep(0.02)

    samples = measure(
        slow, TimingConfig(warmup=50, warmup_time_s=0.05, min_iterations=1000, min_time_s=0.0, max_time_s=0.1)
    )
    warm = len(calls) - len(samples)
    assert 1 <= warm <= 4  # stopped by the 0.05 s warm-up budget, not the 50 calls
    assert 3 <= len(samples) <= 8  # stopped by max_time_s, far below min_iterations
    assert np.all(samples >= 0.019)
