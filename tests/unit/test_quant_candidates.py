"""Quantizers as candidates: the choice rule (hand-made scores), the --quantizer checks, and compete()
measuring real candidates on the target's runtime and keeping the measured best."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from edgexfer.errors import BackendUnavailableError, ConfigError, ParityError
from edgexfer.quant import candidates
from edgexfer.quant.candidates import CandidateScore, check_choice, choose, quantizers_for

HAS_NNCF = importlib.util.find_spec("nncf") is not None
FAKES = {
    "edgexfer": "edgexfer.quant.recipe_quantizer:RecipeQuantizer",
    "flipped": "fake_quantizers:FlippedQuantizer",
    "twin": "fake_quantizers:TwinQuantizer",
    "missing": "fake_quantizers:MissingQuantizer",
}


def _score(name, top1, agreement, latency=None, drop=None):
    return CandidateScore(name, "onnxruntime", top1, agreement, 30.0, 90.0 - top1 if drop is None else drop, 1000,
                          latency)


def test_accuracy_first_then_latency_then_order():
    accurate = _score("a", 90.0, 0.995, latency=9.0)
    fast = _score("b", 89.5, 0.990, latency=4.0)  # 0.5 points behind on both: not level
    assert choose([fast, accurate])[0] is accurate
    level = _score("c", 89.9, 0.994, latency=5.0)  # within 0.2 points on both: latency decides
    winner, why = choose([accurate, level, fast])
    assert winner is level and "fastest" in why
    # agreement alone out of the band is enough to lose, even when top-1 is level
    assert choose([_score("x", 90.0, 0.990, 1.0), _score("y", 90.0, 0.996, 9.0)])[0].quantizer == "y"
    # no latency measured: the order of the candidates decides among level ones
    assert choose([_score("p", 90.0, 0.99), _score("q", 90.0, 0.99)])[0].quantizer == "p"
    assert choose([accurate]) == (accurate, "the only candidate")


def test_max_drop_rules_candidates_out():
    good, bad = _score("good", 89.0, 0.97, 9.0, drop=1.0), _score("bad", 85.0, 0.99, 1.0, drop=5.0)
    winner, why = choose([bad, good], max_drop=2.0)
    assert winner is good and "bad over --max-drop" in why
    with pytest.raises(ParityError, match=r"no INT8 candidate meets --max-drop 0.5: bad drop 5.00, good drop 1.00"):
        choose([bad, good], max_drop=0.5)


def test_quantizer_checks_say_what_to_do(monkeypatch):
    with pytest.raises(ConfigError,
                       match="unknown --quantizer 'bogus'; choose one of auto, edgexfer, edgexfer-bc, nncf, modelopt"):
        check_choice("bogus", ["cpu"])
    with pytest.raises(ConfigError, match=r"--quantizer nncf serves --target openvino, not cpu, tensorrt"):
        check_choice("nncf", ["cpu", "tensorrt", "openvino"])
    check_choice("edgexfer", ["cpu", "tensorrt", "openvino"])
    monkeypatch.setattr(candidates, "QUANTIZERS", FAKES)
    with pytest.raises(BackendUnavailableError, match=r"pip install 'edgexfer\[missing-extra\]'") as info:
        check_choice("missing", ["openvino"])
    assert info.value.exit_code == 4
    chosen, missing = quantizers_for("openvino", "auto")
    assert [q.name for q in chosen] == ["edgexfer", "flipped", "twin"]
    assert missing == {"missing": "missingpkg is not installed; pip install 'edgexfer[missing-extra]'"}
    assert [q.name for q in quantizers_for("openvino", "twin")[0]] == ["twin"]
    assert [q.name for q in quantizers_for("tensorrt", "auto")[0]] == ["edgexfer"]


@pytest.mark.skipif(HAS_NNCF, reason="nncf is installed here; the message is for environments without it")
def test_quantizer_nncf_without_nncf_names_the_extra():
    with pytest.raises(BackendUnavailableError, match=r"nncf is not installed.*pip install 'edgexfer\[nncf\]'"):
        check_choice("nncf", ["openvino"])
    assert "nncf" in quantizers_for("openvino", "auto")[1]


# ---- compete(): real candidates measured on the target's runtime ------------------------------------
@pytest.fixture(scope="module")
def request_parts(tmp_path_factory):
    """A QuantizeRequest on a tiny conv net (edgexfer's recipe makes the real candidate)."""
    import onnx_factory
    from edgexfer.backends.onnxruntime import session_logits
    from edgexfer.quant.guard import QuantizeJob
    from edgexfer.quant.ort_quantize import prepare_for_quantization
    from edgexfer.quant.ranges import collect_ranges

    work = tmp_path_factory.mktemp("compete")
    float_path = onnx_factory.export_float(onnx_factory.tiny_net(), work / "float.onnx")
    prepared = prepare_for_quantization(float_path, work / "prepared.onnx")
    calib = np.concatenate(onnx_factory.calibration_batches(size=32, count=16))
    inputs = np.concatenate(onnx_factory.calibration_batches(size=32, count=24, seed=7))
    float_logits = session_logits(float_path, inputs)
    labels = float_logits.argmax(1)
    ranges = collect_ranges(prepared, calib, ["minmax"])

    def make_request():
        def make_job():
            return QuantizeJob(prepared=prepared, work_dir=work, ranges=ranges, eval_inputs=inputs,
                               eval_labels=labels, float_logits=float_logits, sensitivity_inputs=calib[:8])

        return candidates.QuantizeRequest(float_path=float_path, prepared=prepared, work_dir=work, calib=None,
                                          eval_inputs=inputs, eval_labels=labels, float_logits=float_logits,
                                          make_job=make_job)

    return make_request, inputs, float_logits


def _measure(path, inputs, float_logits):
    from edgexfer.backends.onnxruntime import session_logits

    logits = session_logits(path, inputs)
    return float(np.mean(logits.argmax(1) == float_logits.argmax(1)))


def test_compete_keeps_the_measured_best_and_records_every_candidate(monkeypatch, request_parts):
    from edgexfer.quant.selection import compete

    make_request, inputs, float_logits = request_parts
    monkeypatch.setattr(candidates, "QUANTIZERS", FAKES)
    request = make_request()
    result = compete("cpu", "auto", request)
    recorded = result.metrics["candidates"]
    assert set(recorded) == {"edgexfer", "flipped", "twin"}
    assert result.metrics["quantizers_not_installed"] == {
        "missing": "missingpkg is not installed; pip install 'edgexfer[missing-extra]'"
    }
    for name, scores in recorded.items():  # the recorded scores are what the candidate's model measures
        path = request.work_dir / f"candidate_cpu_{name}.onnx"
        assert scores["agreement"] == pytest.approx(_measure(path, inputs, float_logits)), name
        assert scores["runtime"] == "onnxruntime" and scores["images"] == len(inputs)
        assert scores["latency_p50_ms"] > 0
    assert recorded["flipped"]["agreement"] < 0.5 < recorded["edgexfer"]["agreement"]
    # edgexfer and its twin are level on accuracy: the lower measured p50 wins
    assert recorded["twin"]["agreement"] == recorded["edgexfer"]["agreement"]
    fastest = min(("edgexfer", "twin"), key=lambda n: recorded[n]["latency_p50_ms"])
    assert result.metrics["quantizer"] == result.winner.quantizer == fastest
    assert result.metrics["agreement"] == recorded[fastest]["agreement"]


def test_compete_with_one_named_quantizer_measures_no_latency(monkeypatch, request_parts):
    from edgexfer.quant.selection import compete

    make_request, _, _ = request_parts
    monkeypatch.setattr(candidates, "QUANTIZERS", FAKES)
    result = compete("cpu", "flipped", make_request())
    assert result.winner.quantizer == "flipped" and list(result.metrics["candidates"]) == ["flipped"]
    assert result.metrics["candidates"]["flipped"]["latency_p50_ms"] is None
    assert result.reason == "the only candidate"
    with pytest.raises(ParityError, match="no INT8 candidate meets --max-drop"):
        request = make_request()
        request.max_drop = 1.0
        compete("cpu", "flipped", request)


def test_bias_corrected_candidate_shares_the_recipe_latency_and_wins_only_on_accuracy(request_parts):
    from types import SimpleNamespace

    from edgexfer.quant.selection import compete

    make_request, inputs, _ = request_parts
    request = make_request()
    request.calib = SimpleNamespace(arrays=inputs[:64])
    result = compete("cpu", "auto", request)
    recorded = result.metrics["candidates"]
    assert set(recorded) == {"edgexfer", "edgexfer-bc"}
    # same graph, other bias values: one timing for both, so noise cannot pick between them
    assert recorded["edgexfer-bc"]["latency_p50_ms"] == recorded["edgexfer"]["latency_p50_ms"] > 0
    assert recorded["edgexfer-bc"]["same_graph_as"] == "edgexfer"
    assert recorded["edgexfer-bc"]["bias_correction"]["layers_corrected"] >= 2
    bc, plain = recorded["edgexfer-bc"], recorded["edgexfer"]
    better = 100 * (bc["agreement"] - plain["agreement"]) > 0.2 and bc["top1"] - plain["top1"] >= -0.2
    assert result.winner.quantizer == ("edgexfer-bc" if better else "edgexfer")


def test_choose_when_agreement_and_top1_name_different_best():
    # a: best agreement, b: best top-1, neither level with the other on both: agreement decides
    a, b = _score("a", 80.0, 0.95, 5.0), _score("b", 81.0, 0.93, 4.0)
    winner, why = choose([b, a])
    assert winner is a and why.startswith("most accurate")


def test_package_availability_is_one_check_for_every_vendor_quantizer():
    """The find_spec + version check nncf and modelopt both use (candidates.package_availability)."""
    from edgexfer.quant.modelopt_quantizer import ModelOptQuantizer
    from edgexfer.quant.nncf_quantizer import NncfQuantizer

    assert candidates.package_availability("no_such_module_x", "no-such-dist", (1, 0)) == (
        False, "no-such-dist is not installed")
    assert candidates.package_availability("numpy", "numpy", (1, 0)) == (True, f"numpy {np.__version__}")
    ok, reason = candidates.package_availability("numpy", "numpy", (999, 0))
    assert not ok and reason == f"numpy {np.__version__} is older than 999.0"
    assert candidates.installed_version("no-such-dist") == ""
    if importlib.util.find_spec("nncf") is None:
        assert NncfQuantizer().availability() == (False, "nncf is not installed")
    if importlib.util.find_spec("modelopt") is None:
        assert ModelOptQuantizer().availability() == (False, "nvidia-modelopt is not installed")
