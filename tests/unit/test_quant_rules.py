"""Per-target QDQ recipes and rule checks, the TensorRT fix-ups, sensitivity ranking and the accuracy guard."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from edgexfer.calibration import collect_ranges
from edgexfer.errors import ParityError
from edgexfer.quant import rules, sensitivity
from edgexfer.backends.onnxruntime import session_logits
from edgexfer.stages.quantize import (
    QuantizeJob,
    prepare_for_quantization,
    quantize_target,
    quantize_with_ranges,
)


def _resnet18_onnx(path, size=32):
    import torch

    from edgexfer.models import build_model
    from edgexfer.preprocess import Preprocess
    from edgexfer.stages.export import export_float

    torch.manual_seed(0)
    model = build_model("resnet18", 3).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)

    class Meta:
        arch, class_names = "resnet18", ["a", "b", "c"]
        preprocess = Preprocess(size=size, resize_size=size, augment="none")

    export_float(model, Meta, path, 17)
    return path


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """resnet18 at 32x32: prepared float model, minmax ranges, CPU and TensorRT QDQ models."""
    root = tmp_path_factory.mktemp("quant")
    prepared = prepare_for_quantization(_resnet18_onnx(root / "model.onnx"), root / "prepared.onnx")
    rng = np.random.default_rng(0)
    inputs = (rng.normal(size=(24, 3, 32, 32)) * rng.uniform(0.3, 1.5, size=(24, 1, 1, 1))).astype(np.float32)
    ranges = collect_ranges(prepared, inputs, ["minmax"])
    cpu = quantize_with_ranges(prepared, "cpu", "minmax", ranges["minmax"], root)
    trt = quantize_with_ranges(prepared, "tensorrt", "minmax", ranges["minmax"], root)
    return {
        "root": root,
        "prepared": prepared,
        "ranges": ranges,
        "inputs": inputs,
        "cpu": cpu,
        "tensorrt": trt,
    }


def test_residual_adds_find_the_identity_branch(quantized):
    import onnx

    found = {
        node.name: node.input[index]
        for node, index in rules.residual_adds(onnx.load(str(quantized["prepared"])))
    }
    assert len(found) == 8  # resnet18: 2 BasicBlocks x 4 stages
    assert found["/layer1/layer1.0/Add"] == "/maxpool/MaxPool_output_0"
    assert found["/layer1/layer1.1/Add"] == "/layer1/layer1.0/relu_1/Relu_output_0"
    assert "downsample" in found["/layer2/layer2.0/Add"]  # the 1x1 shortcut, not the 3x3 branch


def test_both_recipes_follow_their_rules(quantized):
    assert rules.check_rules(quantized["cpu"], "cpu") == []
    assert rules.check_rules(quantized["tensorrt"], "tensorrt") == []
    summary = rules.qdq_summary(quantized["tensorrt"])
    assert summary["weighted_ops"] == summary["quantized_weighted_ops"] == 21  # 20 convs + fc
    graph = rules.Graph(quantized["tensorrt"])
    for node, index in rules.residual_adds(quantized["tensorrt"]):
        dq = graph.producer[node.input[index]]
        assert dq.op_type == "DequantizeLinear" and len(graph.consumers[dq.output[0]]) == 1
        assert graph.producer[node.input[1 - index]].op_type == "Conv"  # the fused branch stays float
    for node in graph.nodes:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zero = graph.const(node.input[2])
            assert zero.dtype == np.int8 and not zero.any()
    cpu_zero_types = {
        rules.Graph(quantized["cpu"]).const(n.input[2]).dtype.name
        for n in quantized["cpu"].graph.node
        if n.op_type == "QuantizeLinear"
    }
    assert cpu_zero_types == {"uint8"}


def test_recipes_break_each_others_rules(quantized):
    trt_problems = " ".join(rules.check_rules(quantized["cpu"], "tensorrt"))
    assert "int32 bias" in trt_problems and "non-zero zero point" in trt_problems
    assert "has Q/DQ on its conv branch" in trt_problems  # the CPU recipe quantizes conv outputs
    assert "has no Q/DQ on its identity input" not in trt_problems
    cpu_problems = " ".join(rules.check_rules(quantized["tensorrt"], "cpu"))
    assert "expected uint8" in cpu_problems


def test_rule_violations_are_caught(quantized):
    from onnx import numpy_helper

    model = copy.deepcopy(quantized["tensorrt"])
    graph = rules.Graph(model)
    node, index = rules.residual_adds(model)[2]
    dq = graph.producer[node.input[index]]
    node.input[index] = graph.producer[dq.input[0]].input[0]  # bypass the identity Q/DQ
    model.opset_import[0].version = 18
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    scale_name = graph.producer[conv.input[1]].input[1]
    init = next(i for i in model.graph.initializer if i.name == scale_name)
    init.CopyFrom(numpy_helper.from_array(np.array(0.01, np.float32), scale_name))  # per-tensor weight
    problems = " ".join(rules.check_rules(model, "tensorrt"))
    assert f"residual Add '{node.name}' has no Q/DQ" in problems
    assert "opset 18 is above 17" in problems
    assert "not quantized per output channel" in problems
    with pytest.raises(rules.QdqRuleError, match="breaks the tensorrt QDQ rules"):
        rules.enforce_rules(model, "tensorrt")
    # a node deliberately kept in float needs no QDQ
    assert not any(conv.name in p for p in rules.check_rules(quantized["cpu"], "cpu", excluded=[conv.name]))


def test_dedicated_pairs_keep_outputs(quantized):
    """Shared DQs become one pair per consumer, and the model computes the same logits."""
    model = copy.deepcopy(quantized["cpu"])
    shared_before = sum(
        len(rules.Graph(model).consumers.get(n.output[0], [])) > 1
        for n in model.graph.node
        if n.op_type == "DequantizeLinear"
    )
    assert shared_before > 0
    added = rules.dedicate_qdq_pairs(model)
    graph = rules.Graph(model)
    assert added >= shared_before
    assert all(
        len(graph.consumers.get(n.output[0], [])) <= 1
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and not graph.is_weight_path(n.input[0])
    )
    x = quantized["inputs"][:4]
    np.testing.assert_allclose(session_logits(model, x), session_logits(quantized["cpu"], x), atol=1e-5)


def test_weight_sqnr_and_steps(quantized):
    import onnx

    float_model = onnx.load(str(quantized["prepared"]))
    for target in ("cpu", "tensorrt"):
        sqnr = sensitivity.weight_sqnr(quantized[target], float_model)
        assert len(sqnr) == 21 and 30.0 < min(sqnr.values()) and max(sqnr.values()) < 60.0  # ~8-bit: 40-50 dB
    assert sensitivity.fallback_steps(10) == [1, 2, 3, 4, 6, 9, 10]
    assert sensitivity.fallback_steps(0) == []


def _job(quantized, ranges, max_drop, max_fallback=4):
    """A guard job on 60 inputs labelled by the float model itself (float top-1 = 100%)."""
    rng = np.random.default_rng(1)
    pool = (rng.normal(size=(400, 3, 32, 32)) * rng.uniform(0.2, 2.0, size=(400, 1, 1, 1))).astype(np.float32)
    float_logits = session_logits(quantized["prepared"], pool)
    predicted = float_logits.argmax(1)
    keep = np.concatenate([np.nonzero(predicted == c)[0][:20] for c in range(3)])
    assert len(np.unique(predicted[keep])) >= 2, "the test needs a float model that predicts several classes"
    return QuantizeJob(
        prepared=quantized["prepared"],
        work_dir=quantized["root"],
        ranges=ranges,
        eval_inputs=pool[keep],
        eval_labels=predicted[keep],
        float_logits=float_logits[keep],
        sensitivity_inputs=quantized["inputs"][:8],
        max_drop=max_drop,
        max_fallback=max_fallback,
    )


@pytest.mark.slow
@pytest.mark.parametrize("target", ["cpu", "tensorrt"])
def test_guard_keeps_the_broken_layer_in_float(quantized, target):
    """A wrecked input range ruins INT8; the guard ranks the first conv worst and keeps it in float."""
    baseline = quantize_target(_job(quantized, quantized["ranges"], max_drop=None), target).metrics["drop"]
    budget = baseline + 5.0  # 3 of 60 images above the untouched INT8 model (a random net has tiny margins)
    ranges = {"minmax": dict(quantized["ranges"]["minmax"])}
    low, high = ranges["minmax"]["input"]
    ranges["minmax"]["input"] = (low * 300, high * 300)
    outcome = quantize_target(_job(quantized, ranges, max_drop=budget), target)
    m = outcome.metrics
    assert m["guard"]["before"]["drop"] > budget + 10.0  # collapsed
    assert m["guard"]["ranking"][0]["node"] == "/conv1/Conv" and m["excluded_nodes"][0] == "/conv1/Conv"
    assert len(m["excluded_nodes"]) <= 4
    assert m["drop"] <= budget and m["guard"]["after"]["drop"] == m["drop"]
    assert [s["float_layers"] for s in m["guard"]["steps"]] == list(range(1, len(m["excluded_nodes"]) + 1))
    assert rules.check_rules(outcome.model, target, excluded=m["excluded_nodes"]) == []
    float_convs = {
        n.name
        for n in outcome.model.graph.node
        if n.op_type == "Conv" and rules.Graph(outcome.model).producer.get(n.input[0]) is None
    }
    assert "/conv1/Conv" in float_convs  # its input is the raw graph input again


def test_guard_gives_up_loudly(quantized):
    ranges = {
        "minmax": {name: (lo * 300, hi * 300) for name, (lo, hi) in quantized["ranges"]["minmax"].items()}
    }
    with pytest.raises(ParityError, match="stays above --max-drop 0.5"):
        quantize_target(_job(quantized, ranges, max_drop=0.5, max_fallback=1), "cpu")


@pytest.mark.slow
def test_auto_scores_every_method_without_guard(quantized):
    ranges = collect_ranges(quantized["prepared"], quantized["inputs"], ["minmax", "entropy", "percentile"])
    outcome = quantize_target(_job(quantized, ranges, max_drop=None), "tensorrt")
    scores = outcome.metrics["method_scores"]
    assert set(scores) == {"minmax", "entropy", "percentile"}
    best = max(scores.values(), key=lambda s: (s["agreement"], s["snr_db"]))
    assert scores[outcome.method] == best and outcome.metrics["guard"]["steps"] == []
    assert outcome.metrics["drop"] == pytest.approx(
        outcome.metrics["float_top1"] - outcome.metrics["int8_top1"]
    )
