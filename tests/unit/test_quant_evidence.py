"""Bias correction, the per-layer evidence (float-layer variants, profiler attribution) and the report writer."""

from __future__ import annotations

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgexfer.evidence_report import evidence_markdown, write_evidence  # noqa: E402
from edgexfer.quant import bias_correction, evidence  # noqa: E402


# ---- bias correction: a one-conv model whose quantized weights are off by a known amount ----------------
def _one_conv(qdq: bool, int32_bias: bool = False):
    """Conv 1->1, 3x3, weights 0.26, bias 0.5. The QDQ version stores the weights as int8 3 with scale 0.1
    (0.3: +0.04 per weight, so +0.36 on every output of an all-ones input) and quantizes the input exactly
    (scale 0.01, zero point 0, inputs are multiples of 0.01)."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 1, 4, 4])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, None)
    inits = [numpy_helper.from_array(np.full((1, 1, 3, 3), 0.26, np.float32), "w"),
             numpy_helper.from_array(np.array([0.5], np.float32), "b")]
    if not qdq:
        nodes = [helper.make_node("Conv", ["input", "w", "b"], ["out"], name="conv")]
    else:
        inits = [
            numpy_helper.from_array(np.full((1, 1, 3, 3), 3, np.int8), "w_q"),
            numpy_helper.from_array(np.array([0.1], np.float32), "w_scale"),
            numpy_helper.from_array(np.array([0], np.int8), "w_zero"),
            numpy_helper.from_array(np.array(0.01, np.float32), "x_scale"),
            numpy_helper.from_array(np.array(0, np.uint8), "x_zero"),
        ]
        nodes = [
            helper.make_node("QuantizeLinear", ["input", "x_scale", "x_zero"], ["x_q"], name="x_Q"),
            helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"], name="x_DQ"),
            helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w_dq"], name="w_DQ", axis=0),
        ]
        if int32_bias:  # ONNX Runtime's cpu recipe: int32 bias in scale x_scale * w_scale = 0.001
            inits += [numpy_helper.from_array(np.array([500], np.int32), "b_q"),
                      numpy_helper.from_array(np.array([0.001], np.float32), "b_scale"),
                      numpy_helper.from_array(np.array([0], np.int32), "b_zero")]
            nodes.append(helper.make_node("DequantizeLinear", ["b_q", "b_scale", "b_zero"], ["b_dq"], name="b_DQ",
                                          axis=0))
            bias = "b_dq"
        else:
            inits.append(numpy_helper.from_array(np.array([0.5], np.float32), "b"))
            bias = "b"
        nodes.append(helper.make_node("Conv", ["x_dq", "w_dq", bias], ["out"], name="conv"))
    graph = helper.make_graph(nodes, "one_conv", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _bias_value(model, int32_bias):
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return float(inits["b_q"][0]) * 0.001 if int32_bias else float(inits["b"][0])


@pytest.mark.parametrize("int32_bias", [False, True])
def test_bias_correction_moves_the_bias_against_the_quantization_shift(int32_bias):
    float_model, qdq_model = _one_conv(False), _one_conv(True, int32_bias)
    inputs = np.ones((4, 1, 4, 4), np.float32)
    before = bias_correction.mean_output_error(float_model, qdq_model, inputs, ["conv"])["conv"]
    assert before == pytest.approx(0.36, abs=1e-4)  # the quantized conv outputs 0.36 too much
    result = bias_correction.correct_biases(float_model, qdq_model, inputs, batch_size=3)
    # a flipped sign would give 0.86 and double the error
    assert _bias_value(qdq_model, int32_bias) == pytest.approx(0.5 - 0.36, abs=1e-3)
    assert result.shifts == {"conv": pytest.approx(0.36, abs=1e-4)} and result.skipped == {}
    assert bias_correction.mean_output_error(float_model, qdq_model, inputs, ["conv"])["conv"] < 1e-3


def test_bias_correction_reduces_the_mean_error_of_a_real_quantized_net(tmp_path):
    pytest.importorskip("torch")
    import onnx_factory
    from edgexfer.quant.ort_quantize import prepare_for_quantization

    float_path = onnx_factory.export_float(onnx_factory.tiny_net(), tmp_path / "float.onnx")
    prepared = prepare_for_quantization(float_path, tmp_path / "prepared.onnx")
    qdq_path = onnx_factory.quantize_cpu(prepared, tmp_path / "int8.onnx")
    float_model, qdq_model = onnx.load(str(prepared)), onnx.load(str(qdq_path))
    calib = np.concatenate(onnx_factory.calibration_batches(size=32, count=16))
    convs = [n.name for n in float_model.graph.node if n.op_type in ("Conv", "Gemm")]
    before = bias_correction.mean_output_error(float_model, qdq_model, calib, convs)
    result = bias_correction.correct_biases(float_model, qdq_model, calib)
    assert set(result.shifts) == set(convs)
    after = bias_correction.mean_output_error(float_model, qdq_model, calib, convs)
    assert after[convs[0]] < 0.5 * before[convs[0]]  # the first layer's input is exactly float: fully corrected
    assert sum(after.values()) < sum(before.values())


# ---- float-layer variants and profiler attribution -------------------------------------------------------
def test_keep_layer_float_takes_float_inputs_and_the_float_weights():
    float_model, qdq_model = _one_conv(False), _one_conv(True, int32_bias=True)
    variant = evidence.keep_layer_float(qdq_model, float_model, "conv")
    conv = next(n for n in variant.graph.node if n.op_type == "Conv")
    assert conv.input[0] == "input" and [n.op_type for n in variant.graph.node] == ["Conv"]  # dead Q/DQ gone
    inits = {i.name: numpy_helper.to_array(i) for i in variant.graph.initializer}
    assert np.allclose(inits[conv.input[1]], 0.26) and np.allclose(inits[conv.input[2]], 0.5)
    assert len(qdq_model.graph.node) == 5  # the original is untouched
    x = np.random.default_rng(0).random((2, 1, 4, 4)).astype(np.float32)
    outputs = [bias_correction._session(m).run(None, {"input": x})[0] for m in (float_model, variant)]
    assert np.allclose(outputs[0], outputs[1], atol=1e-6)
    with pytest.raises(KeyError):
        evidence.keep_layer_float(qdq_model, float_model, "nope")


def test_latency_shares_map_fused_nodes_to_their_layer():
    times = {"conv1_quant": 2.0, "conv1_token_3": 0.5, "conv2": 1.0, "x_QuantizeLinear": 0.25, "Relu_7": 0.25}
    per_layer, other, total = evidence.latency_shares(times, ["conv1", "conv2", "fc"])
    assert per_layer == {"conv1": 2.5, "conv2": 1.0, "fc": 0.0} and other == 0.5 and total == 4.0


def test_node_times_come_from_the_profiler(tmp_path):
    path = tmp_path / "one.onnx"
    onnx.save(_one_conv(True), str(path))
    times = evidence.node_times_ms(path, np.ones((1, 1, 4, 4), np.float32), runs=4)
    assert set(times) >= {"conv"} or any(name.startswith("conv") for name in times)
    assert all(ms >= 0 for ms in times.values()) and not list(tmp_path.glob("**/*.json"))


def test_layer_table_reuses_known_logits_and_memoised_sqnr(tmp_path, monkeypatch):
    """The kept model's own logits come from the caller when it has them (the competition scored it on the
    same images), and a byte-identical model reuses the SQNR and profile of an earlier table (cpu/openvino)."""
    float_model, qdq_model = _one_conv(False), _one_conv(True)
    float_path = tmp_path / "float.onnx"
    onnx.save(float_model, str(float_path))
    inputs = (np.random.default_rng(0).integers(0, 100, (6, 1, 4, 4)) / 100.0).astype(np.float32)
    float_logits = bias_correction._session(float_model).run(None, {"input": inputs})[0].reshape(6, -1)
    int8_logits = bias_correction._session(qdq_model).run(None, {"input": inputs})[0].reshape(6, -1)
    labels = np.zeros(6, dtype=int)
    runs = []

    def logits_of(model):
        runs.append(model)
        return bias_correction._session(model).run(None, {"input": inputs})[0].reshape(6, -1)

    from edgexfer.quant import sensitivity

    calls = {"sqnr": 0}
    real_sqnr = sensitivity.layer_sqnr

    def counted(*args, **kwargs):
        calls["sqnr"] += 1
        return real_sqnr(*args, **kwargs)

    monkeypatch.setattr(sensitivity, "layer_sqnr", counted)  # layer_table imports it when called
    memo = {}
    first = evidence.layer_table(float_path, qdq_model, tmp_path, inputs, logits_of, float_logits, labels, top_k=1,
                                 int8_logits=int8_logits, memo=memo)
    assert len(runs) == 1 and calls["sqnr"] == 1  # only the float-layer variant ran, not the kept model itself
    stamped = onnx.ModelProto()
    stamped.CopyFrom(qdq_model)
    onnx.helper.set_model_props(stamped, {"target": "openvino"})  # what export's _write_int8 adds to the kept model
    second = evidence.layer_table(float_path, stamped, tmp_path, inputs, logits_of, float_logits, labels, top_k=1,
                                  memo=memo)
    assert len(runs) == 3 and calls["sqnr"] == 1  # no known logits: the kept model ran; the SQNR came from memo
    assert first["layers"] == second["layers"] and first["int8_agreement"] == second["int8_agreement"]


def test_pareto_points_mark_kept_and_dominated():
    from edgexfer.quant.candidates import CandidateScore

    scores = [CandidateScore("edgexfer", "onnxruntime", 90.0, 0.99, 30.0, 0.5, 100),
              CandidateScore("slow-bad", "onnxruntime", 89.0, 0.97, 20.0, 1.5, 100)]
    points = evidence.pareto_points(scores, {"float": 10.0, "edgexfer": 4.0, "slow-bad": 5.0}, "edgexfer")
    by_name = {p["name"]: p for p in points}
    assert by_name["edgexfer"]["kept"] and not by_name["float"]["kept"]
    assert by_name["slow-bad"]["dominated"] and not by_name["edgexfer"]["dominated"]
    assert not by_name["float"]["dominated"]  # slower but no drop


# ---- the report writer -----------------------------------------------------------------------------------
def _evidence():
    rows = [{"layer": "conv_b", "op": "Conv", "sqnr_db": 12.3, "latency_ms": 1.5, "latency_share": 0.6,
             "drop_if_float": 0.1, "recovered": 0.4, "agreement_if_float": 0.995},
            {"layer": "conv_a", "op": "Conv", "sqnr_db": 25.0, "latency_ms": 0.5, "latency_share": 0.2}]
    return {
        "target": "cpu", "kept": "edgexfer", "reason": "most accurate", "runtime": "onnxruntime",
        "latency_runtime": "onnxruntime", "seconds": 3.2,
        "pareto": [{"name": "float", "drop": 0.0, "agreement": 1.0, "latency_ms": 10.0, "kept": False,
                    "dominated": False},
                   {"name": "edgexfer", "drop": 0.5, "agreement": 0.99, "latency_ms": 4.0, "kept": True,
                    "dominated": False},
                   {"name": "edgexfer-bc", "drop": 0.6, "agreement": 0.98, "latency_ms": 4.0, "kept": False,
                    "dominated": True}],
        "table": {"layers": rows, "quantized_layers": 2, "top_k": 1, "images": 200, "sqnr_images": 32,
                  "int8_drop": 0.5, "int8_agreement": 0.99, "latency_source": "onnxruntime profiler",
                  "latency_total_ms": 2.5, "latency_other_ms": 0.5},
    }


def test_evidence_markdown_has_every_layer_and_candidate():
    text = evidence_markdown(_evidence(), "pareto_cpu.png")
    lines = text.splitlines()
    row_b = next(line for line in lines if "`conv_b`" in line)
    row_a = next(line for line in lines if "`conv_a`" in line)
    assert lines.index(row_b) < lines.index(row_a)  # lowest SQNR first, as given
    assert row_b.split("|")[3:9] == [" 12.3 ", " 0.10 ", " 0.40 ", " 0.9950 ", " 1.500 ", " 60.0% "]
    assert row_a.split("|")[4:7] == [" - ", " - ", " - "]  # not measured: beyond top-k
    assert "the 1 layers with the lowest SQNR only" in text and "![Pareto" in text
    assert any(line.startswith("| edgexfer |") and line.rstrip().endswith("kept |") for line in lines)
    assert any(line.startswith("| edgexfer-bc |") and "dominated" in line for line in lines)


def test_write_evidence_writes_json_png_and_report(tmp_path):
    files = write_evidence(tmp_path, {"cpu": _evidence()})
    assert files == {"cpu": {"json": "evidence_cpu.json", "report": "report.md", "pareto_png": "pareto_cpu.png"}}
    assert json.loads((tmp_path / "evidence_cpu.json").read_text()) == _evidence()
    assert (tmp_path / "pareto_cpu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## INT8 evidence: target cpu" in (tmp_path / "report.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evidence_cpu.json", "pareto_cpu.png", "report.md"]
