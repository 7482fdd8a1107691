"""edgexfer.parity: the chance-level rule behind verify's INCONCLUSIVE verdict, and every verify gate, on
hand-made predictions whose expected outcome is worked out here independently of the code under test."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgexfer import metrics, parity
from edgexfer.errors import ConfigError


def _logits_for(pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Logits whose argmax is ``pred``."""
    return np.eye(num_classes)[pred] * 5.0


def _score_test_interval(k: int, n: int, z: float = 1.959963984540054) -> tuple:
    """The Wilson interval by its definition, inverted on a fine grid: every p with
    |k/n - p| <= z * sqrt(p (1 - p) / n) (independent of the closed form in edgexfer.metrics)."""
    grid = np.linspace(0.0, 1.0, 2_000_001)
    inside = np.abs(k / n - grid) <= z * np.sqrt(grid * (1 - grid) / n)
    return float(grid[inside].min()), float(grid[inside].max())


@pytest.mark.parametrize("k,n", [(0, 10), (1, 8), (5, 8), (48, 48), (100, 1000), (15, 100), (20, 100)])
def test_wilson_interval_is_the_inverted_score_test(k, n):
    low, high = metrics.wilson_interval(k, n, 0.95)
    want_low, want_high = _score_test_interval(k, n)
    assert low == pytest.approx(want_low, abs=2e-6) and high == pytest.approx(want_high, abs=2e-6)


def test_wilson_interval_refuses_impossible_counts():
    for k, n in ((3, 2), (-1, 5), (0, 0)):
        with pytest.raises(ConfigError):
            metrics.wilson_interval(k, n)


# ---- chance ------------------------------------------------------------------------------------
def test_a_model_collapsed_onto_one_class_is_at_chance():
    labels = np.repeat(np.arange(10), 30)  # 300 images, 10 balanced classes: chance 10%
    check = parity.chance_check(_logits_for(np.full(300, 4), 10), labels)
    assert (check.images, check.correct, check.top1, check.chance) == (300, 30, 10.0, 10.0)
    assert not check.above_chance
    assert "not better than chance on these 300 images" in check.reason and "chance level 10.00%" in check.reason
    assert check.to_dict()["reason"] == check.reason and check.to_dict()["above_chance"] is False


@pytest.mark.parametrize("correct,above", [(14, False), (15, False), (18, True), (20, True)])
def test_better_than_chance_when_the_interval_excludes_it(correct, above):
    # 100 images of 10 classes, ``correct`` of them right; the score test says above chance (10%) when
    # its lower end is above 0.10: 15/100 -> 0.093 (not), 18/100 -> 0.117 (yes).
    labels = np.repeat(np.arange(10), 10)
    pred = (labels + 1) % 10
    pred[:correct] = labels[:correct]
    check = parity.chance_check(_logits_for(pred, 10), labels)
    assert check.above_chance is above
    assert check.above_chance is (_score_test_interval(correct, 100)[0] > 0.10)
    assert check.top1_low == pytest.approx(100 * _score_test_interval(correct, 100)[0], abs=1e-3)
    assert (check.reason is None) is above


def test_chance_is_the_most_frequent_class_share_on_unbalanced_labels():
    # 70% of the images are class 0: always answering 0 scores 70% without looking at the image.
    labels = np.array([0] * 70 + [1] * 20 + [2] * 10)
    blind = parity.chance_check(_logits_for(np.zeros(100, int), 3), labels)
    assert blind.chance == 70.0 and blind.top1 == 70.0 and not blind.above_chance
    perfect = parity.chance_check(_logits_for(labels, 3), labels)
    assert perfect.top1 == 100.0 and perfect.above_chance


def test_a_few_images_can_not_show_much():
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    assert parity.chance_check(_logits_for(labels, 3), labels).above_chance  # 8 of 8: low end 67.6% > 37.5%
    pred = labels.copy()
    pred[:3] = (pred[:3] + 1) % 3  # 5 of 8: low end 30.6% < 37.5% (class 0 and 1 are 3 of 8 each)
    assert not parity.chance_check(_logits_for(pred, 3), labels).above_chance


# ---- gates -------------------------------------------------------------------------------------
def _entry(ref_pred, pred, labels, num_classes, p50=None, p99=None):
    entry = parity.parity_entry(_logits_for(ref_pred, num_classes), _logits_for(pred, num_classes), labels,
                                num_classes, resamples=500)
    entry["latency"] = None if p50 is None else {"p50_ms": p50, "p99_ms": p99}
    return entry


def _reference(ref_pred, labels, num_classes, p50=20.0, backend="torch"):
    logits = _logits_for(ref_pred, num_classes)
    return {"backend": backend, "latency": {"p50_ms": p50, "p99_ms": p50 * 1.5},
            "chance": parity.chance_check(logits, labels).to_dict()}


LABELS = np.repeat(np.arange(3), 10)  # 30 images, classes a, b, c


def test_max_drop_on_the_point_and_on_the_upper_bound_of_its_ci():
    other = LABELS.copy()
    other[[0, 10]] = 2  # 2 of 30 lost: drop 6.67 points
    entry = _entry(LABELS, other, LABELS, 3)
    drop, (low, high) = entry["accuracy"]["top1_drop"], entry["accuracy"]["top1_drop_ci"]
    assert drop == pytest.approx(200 / 30) and low <= drop < high
    values = parity.Gates().values(entry, {})
    assert parity.Gates(max_drop=7).reasons(values) == []
    assert parity.Gates(max_drop=6.6).reasons(values)[0].startswith("top-1 drop 6.67 pts > --max-drop 6.6")
    # gate-on ci: the same 7-point budget fails, because the interval reaches above it ...
    assert high > 7
    (reason,) = parity.Gates(max_drop=7, gate_on="ci").reasons(values)
    assert reason.startswith(f"upper bound of the top-1 drop's 95% CI {high:.2f} pts > --max-drop 7")
    # ... and passes at exactly its upper bound
    assert parity.Gates(max_drop=high, gate_on="ci").reasons(values) == []


def test_a_drop_exactly_at_the_budget_passes():
    other = LABELS.copy()
    other[[0, 10, 20]] = (LABELS[[0, 10, 20]] + 1) % 3  # 3 of 30: 10 points (0.1 * 100 in floats)
    values = parity.Gates().values(_entry(LABELS, other, LABELS, 3), {})
    assert parity.Gates(max_drop=10, max_class_drop=10).reasons(values) == []


def test_max_class_drop_is_the_worst_class():
    other = LABELS.copy()
    other[:4] = 1   # class a: 4 of its 10 lost -> -40 points
    other[10] = 2   # class b: 1 of 10 lost -> -10 points
    ref = LABELS.copy()
    ref[25] = 0     # class c: the reference gets one wrong that the artifact gets right -> +10
    values = parity.Gates().values(_entry(ref, other, LABELS, 3), {}, ["a", "b", "c"])
    assert values["worst_class"] == "a" and values["worst_class_drop"] == pytest.approx(40.0)
    assert parity.Gates(max_class_drop=40).reasons(values) == []
    reasons = parity.Gates(max_class_drop=39.9).reasons(values)
    assert reasons == ["class 'a' top-1 drop 40.00 pts > --max-class-drop 39.9"]
    # the overall drop is only 4 of 30 (13.3 points): a --max-drop 15 gate alone would pass
    assert parity.Gates(max_drop=15).reasons(values) == []


def test_latency_gates():
    entry = _entry(LABELS, LABELS, LABELS, 3, p50=5.0, p99=9.0)
    reference = _reference(LABELS, LABELS, 3, p50=20.0)  # 20 / 5: 4x
    values = parity.Gates().values(entry, reference)
    assert values["p99_ms"] == 9.0 and values["speedup"] == pytest.approx(4.0)
    assert parity.Gates(max_p99_ms=9.0, min_speedup=4.0).reasons(values) == []
    assert parity.Gates(max_p99_ms=8.9, min_speedup=4.01).reasons(values) == [
        "p99 latency 9.00 ms > --max-p99-ms 8.9",
        "speed-up over torch fp32 (p50) 4.00x < --min-speedup 4.01",
    ]
    # not torch: no speed-up to compare with, and --min-speedup refuses before anything runs
    other = _reference(LABELS, LABELS, 3, backend="onnxruntime")
    assert parity.Gates().values(entry, other)["speedup"] is None
    with pytest.raises(ConfigError, match="--min-speedup compares with the torch float reference"):
        parity.Gates(min_speedup=2).require_reference_latency(other)
    with pytest.raises(ConfigError, match="did not measure"):
        parity.Gates(min_speedup=2).require_reference_latency({"backend": "torch", "latency": None})
    parity.Gates(min_speedup=2).require_reference_latency(reference)
    parity.Gates().require_reference_latency(other)  # no --min-speedup: nothing to refuse


@pytest.mark.parametrize("kwargs,words", [
    ({"gate_on": "mean"}, ("--gate-on", "point, ci", "'mean'")),
    ({"gate_on": "ci"}, ("--gate-on ci", "--max-drop")),
    ({"max_class_drop": -1.0}, ("--max-class-drop", "-1.0")),
    ({"max_class_drop": 101.0}, ("--max-class-drop", "101.0")),
    ({"max_p99_ms": 0.0}, ("--max-p99-ms", "positive")),
    ({"max_p99_ms": math.nan}, ("--max-p99-ms", "nan")),
    ({"min_speedup": -2.0}, ("--min-speedup", "positive")),
])
def test_gates_refuse_values_that_mean_nothing(kwargs, words):
    with pytest.raises(ConfigError) as info:
        parity.Gates(**kwargs)
    for word in words:
        assert word in str(info.value)


# ---- the status an artifact gets ----------------------------------------------------------------
def test_judge_entry_never_passes_against_a_reference_at_chance():
    blind = np.zeros(30, int)  # a collapsed reference: always class 0, 33% = chance
    at_chance = _reference(blind, LABELS, 3)
    entry = parity.judge_entry(_entry(blind, blind, LABELS, 3), parity.Gates(max_drop=1), at_chance)
    assert entry["status"] == "inconclusive" and entry["gate"]["passed"] is True
    # a gate failure is still a failure: the artifact does not compute what its reference computes
    other = blind.copy()
    other[:15] = 1
    failed = parity.judge_entry(_entry(blind, other, LABELS, 3), parity.Gates(min_agreement=90), at_chance)
    assert failed["status"] == "failed" and failed["gate"]["reasons"] == ["agreement 50.00% < --min-agreement 90%"]
    # a trained reference: the same gates pass
    trained = _reference(LABELS, LABELS, 3)
    good = parity.judge_entry(_entry(LABELS, LABELS, LABELS, 3), parity.Gates(max_drop=1), trained)
    assert good["status"] == "passed"
    # artifacts that did not run keep their status
    skipped = {"name": "x", "status": "skipped", "error": "no tensorrt"}
    assert parity.judge_entry(dict(skipped), parity.Gates(), at_chance) == skipped


def test_verdict_order_and_exit_codes():
    from edgexfer.errors import InconclusiveError, ParityError
    from edgexfer.stages.verify_report import verdict

    above = {"chance": {"above_chance": True, "reason": None}}
    below = {"chance": {"above_chance": False, "reason": "at chance"}}
    counts = {"passed": 0, "failed": 0, "inconclusive": 2, "error": 0, "skipped": 0}
    fail, err = [{"artifact": "a", "reason": "r"}], [{"artifact": "b", "reason": "e"}]
    assert verdict([], [], counts, 2, below) == ("inconclusive", "at chance")
    assert verdict(fail, [], counts, 2, below)[0] == "failed"
    assert verdict(fail, err, counts, 2, below)[0] == "error"
    assert verdict([], [], dict(counts, skipped=2), 2, below)[0] == "skipped"
    assert verdict([], [], counts, 2, above) == ("passed", None)
    assert InconclusiveError.exit_code == 5 and ParityError.exit_code == 3
