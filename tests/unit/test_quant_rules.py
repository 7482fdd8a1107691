"""Per-target QDQ recipes and rule checks, the TensorRT fix-ups, sensitivity ranking and the accuracy guard."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import qdq_audit
from edgexfer.backends.onnxruntime import session_logits
from edgexfer.errors import ParityError
from edgexfer.quant import fixups, graph, rules, sensitivity
from edgexfer.quant.guard import QuantizeJob, quantize_target
from edgexfer.quant.ort_quantize import prepare_for_quantization, quantize_with_ranges
from edgexfer.quant.ranges import collect_ranges
from edgexfer.quant.recipes import RECIPES, QuantRecipe

CPU, TRT = rules.QdqRules.cpu(), rules.QdqRules.tensorrt()


def _resnet18_onnx(path, size=32):
    import torch

    from edgexfer.models import build_model
    from edgexfer.preprocess import Preprocess
    from edgexfer.stages.export.onnx_models import export_float

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
    cpu = quantize_with_ranges(prepared, QuantRecipe.cpu_x86(), "minmax", ranges["minmax"], root)
    trt = quantize_with_ranges(prepared, QuantRecipe.tensorrt(), "minmax", ranges["minmax"], root)
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
        for node, index in graph.residual_adds(onnx.load(str(quantized["prepared"])))
    }
    assert len(found) == 8  # resnet18: 2 BasicBlocks x 4 stages
    assert found["/layer1/layer1.0/Add"] == "/maxpool/MaxPool_output_0"
    assert found["/layer1/layer1.1/Add"] == "/layer1/layer1.0/relu_1/Relu_output_0"
    assert "downsample" in found["/layer2/layer2.0/Add"]  # the 1x1 shortcut, not the 3x3 branch


def test_both_recipes_follow_their_rules(quantized):
    assert rules.check_rules(quantized["cpu"], CPU) == []
    assert rules.check_rules(quantized["tensorrt"], TRT) == []
    summary = rules.qdq_summary(quantized["tensorrt"])
    assert summary["weighted_ops"] == summary["quantized_weighted_ops"] == 21  # 20 convs + fc


def test_models_pass_an_independent_audit(quantized):
    """The same models against tests/qdq_audit.py, written from TensorRT's and x86's requirements
    (trt-review section 2), not from edgexfer's rule checker."""
    assert qdq_audit.tensorrt_problems(quantized["tensorrt"]) == []
    assert qdq_audit.cpu_problems(quantized["cpu"]) == []
    # the audits can fail: each recipe breaks the other's requirements
    cpu_for_trt = " ".join(qdq_audit.tensorrt_problems(quantized["cpu"]))
    assert "dequantizes int32" in cpu_for_trt and "zero point" in cpu_for_trt and "residual" in cpu_for_trt
    assert "activation zero point int8" in " ".join(qdq_audit.cpu_problems(quantized["tensorrt"]))
    adds = [n for n in quantized["tensorrt"].graph.node if n.op_type == "Add"]
    assert len(adds) == 8  # every residual Add of resnet18 was audited


def test_recipes_break_each_others_rules(quantized):
    trt_problems = " ".join(rules.check_rules(quantized["cpu"], TRT))
    assert "int32 bias" in trt_problems and "non-zero zero point" in trt_problems
    assert "has Q/DQ on its conv branch" in trt_problems  # the CPU recipe quantizes conv outputs
    assert "has no Q/DQ on its identity input" not in trt_problems
    cpu_problems = " ".join(rules.check_rules(quantized["tensorrt"], CPU))
    assert "expected uint8" in cpu_problems


def test_rule_violations_are_caught(quantized):
    from onnx import numpy_helper

    model = copy.deepcopy(quantized["tensorrt"])
    index_ = graph.Graph(model)
    node, index = graph.residual_adds(model)[2]
    dq = index_.producer[node.input[index]]
    node.input[index] = index_.producer[dq.input[0]].input[0]  # bypass the identity Q/DQ
    model.opset_import[0].version = 18
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    scale_name = index_.producer[conv.input[1]].input[1]
    init = next(i for i in model.graph.initializer if i.name == scale_name)
    init.CopyFrom(numpy_helper.from_array(np.array(0.01, np.float32), scale_name))  # per-tensor weight
    problems = " ".join(rules.check_rules(model, TRT))
    assert f"residual Add '{node.name}' has no Q/DQ" in problems
    assert "opset 18 is above 17" in problems
    assert "not quantized per output channel" in problems
    with pytest.raises(rules.QdqRuleError, match="breaks the tensorrt QDQ rules"):
        RECIPES["tensorrt"].enforce(model)
    # the independent audit sees the same three breaks
    audit = " ".join(qdq_audit.tensorrt_problems(model))
    assert f"residual {node.name}" in audit and "opset 18" in audit and "not per output channel" in audit
    # a node deliberately kept in float needs no QDQ
    assert not any(conv.name in p for p in rules.check_rules(quantized["cpu"], CPU, excluded=[conv.name]))


def test_dedicated_pairs_keep_outputs(quantized):
    """Shared DQs become one pair per consumer, and the model computes the same logits."""
    model = copy.deepcopy(quantized["cpu"])
    shared_before = sum(
        len(graph.Graph(model).consumers.get(n.output[0], [])) > 1
        for n in model.graph.node
        if n.op_type == "DequantizeLinear"
    )
    assert shared_before > 0
    added = fixups.dedicate_qdq_pairs(model)
    index = graph.Graph(model)
    assert added >= shared_before
    assert all(
        len(index.consumers.get(n.output[0], [])) <= 1
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and not index.is_weight_path(n.input[0])
    )
    x = quantized["inputs"][:4]
    np.testing.assert_allclose(session_logits(model, x), session_logits(quantized["cpu"], x), atol=1e-5)


def _fake_quant_sqnr(weight, dq, index):
    """The test's own SQNR of one weight under its DequantizeLinear's scale/zero point (numpy only)."""
    scale = index.const(dq.input[1]).astype(np.float64)
    zero = index.const(dq.input[2])
    info = np.iinfo(zero.dtype)
    shape = [1] * weight.ndim
    if scale.size > 1:
        shape[graph.attr(dq, "axis", 1)] = scale.size
    scale, zero = scale.reshape(shape), zero.astype(np.float64).reshape(shape if zero.size > 1 else [1] * weight.ndim)
    dequantized = (np.clip(np.round(weight / scale) + zero, info.min, info.max) - zero) * scale
    return 10.0 * np.log10(np.sum(weight.astype(np.float64) ** 2) / np.sum((weight - dequantized) ** 2))


@pytest.mark.parametrize("target", ["cpu", "tensorrt"])
def test_layer_sqnr_equals_an_independent_fake_quantization(quantized, target, tmp_path):
    """Weight SQNR through ONNX Runtime's qdq_loss_debug equals the test's own fake quantization, for both
    ways of storing weights (int8 initializers for cpu, float behind Q/DQ for tensorrt)."""
    import onnx
    from onnx import numpy_helper

    path = tmp_path / "qdq.onnx"
    onnx.save(quantized[target], str(path))
    activations, weights = sensitivity.layer_sqnr(quantized["prepared"], path, quantized["inputs"][:8])
    assert len(weights) == 21 and 30.0 < min(weights.values()) and max(weights.values()) < 60.0  # ~8 bit
    float_model = onnx.load(str(quantized["prepared"]))
    float_init = {i.name: numpy_helper.to_array(i) for i in float_model.graph.initializer}
    index = graph.Graph(quantized[target])
    for node in float_model.graph.node:
        if node.name in weights:
            dq = index.producer[next(n for n in index.nodes if n.name == node.name).input[1]]
            expected = _fake_quant_sqnr(float_init[node.input[1]], dq, index)
            assert weights[node.name] == pytest.approx(expected, abs=1e-3), node.name
    assert "input" in activations and all(np.isfinite(list(activations.values())))


def test_fallback_steps():
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
    recipe = RECIPES[target]
    baseline = quantize_target(_job(quantized, quantized["ranges"], max_drop=None), recipe).metrics["drop"]
    budget = baseline + 5.0  # 3 of 60 images above the untouched INT8 model (a random net has tiny margins)
    ranges = {"minmax": dict(quantized["ranges"]["minmax"])}
    low, high = ranges["minmax"]["input"]
    ranges["minmax"]["input"] = (low * 300, high * 300)
    outcome = quantize_target(_job(quantized, ranges, max_drop=budget), recipe)
    m = outcome.metrics
    assert m["guard"]["before"]["drop"] > budget + 10.0  # collapsed
    assert m["guard"]["ranking"][0]["node"] == "/conv1/Conv" and m["excluded_nodes"][0] == "/conv1/Conv"
    assert len(m["excluded_nodes"]) <= 4
    assert m["drop"] <= budget and m["guard"]["after"]["drop"] == m["drop"]
    assert [s["float_layers"] for s in m["guard"]["steps"]] == list(range(1, len(m["excluded_nodes"]) + 1))
    assert rules.check_rules(outcome.model, recipe.rules, excluded=m["excluded_nodes"]) == []
    index = graph.Graph(outcome.model)
    float_convs = {n.name for n in index.nodes if n.op_type == "Conv" and index.producer.get(n.input[0]) is None}
    assert "/conv1/Conv" in float_convs  # its input is the raw graph input again


def _wrecked(quantized):
    return {"minmax": {name: (lo * 300, hi * 300) for name, (lo, hi) in quantized["ranges"]["minmax"].items()}}


def test_guard_gives_up_loudly(quantized):
    with pytest.raises(ParityError, match="stays above --max-drop 0.5"):
        quantize_target(_job(quantized, _wrecked(quantized), max_drop=0.5, max_fallback=1), RECIPES["cpu"])


def test_guard_without_fallback_layers_is_a_parity_error(quantized):
    """--max-fallback 0 with the drop over budget: a ParityError (exit 3), not an IndexError (exit 1)."""
    with pytest.raises(ParityError, match=r"stays above --max-drop 0.5.* with 0 layer\(s\) kept in float"):
        quantize_target(_job(quantized, _wrecked(quantized), max_drop=0.5, max_fallback=0), RECIPES["cpu"])


def _measured(model, inputs, labels, float_logits):
    """The test's own scores of a model: top-1 % vs labels, agreement and SNR (dB) vs the float logits."""
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": inputs})[0].astype(np.float64)
    noise = np.sum((logits - float_logits) ** 2)
    return {
        "top1": 100.0 * float(np.mean(logits.argmax(1) == labels)),
        "agreement": float(np.mean(logits.argmax(1) == float_logits.argmax(1))),
        "snr_db": float(10 * np.log10(np.sum(float_logits.astype(np.float64) ** 2) / noise)),
    }


@pytest.mark.slow
def test_auto_scores_every_method_without_guard(quantized):
    """Each method's recorded scores, the choice and the drop equal what the test measures itself."""
    import onnxruntime as ort

    ranges = collect_ranges(quantized["prepared"], quantized["inputs"], ["minmax", "entropy", "percentile"])
    job = _job(quantized, ranges, max_drop=None)
    recipe = RECIPES["tensorrt"]
    outcome = quantize_target(job, recipe)
    float_logits = ort.InferenceSession(str(quantized["prepared"]), providers=["CPUExecutionProvider"]).run(
        None, {"input": job.eval_inputs}
    )[0]
    measured = {
        method: _measured(
            quantize_with_ranges(job.prepared, recipe, method, ranges[method], job.work_dir),
            job.eval_inputs,
            job.eval_labels,
            float_logits,
        )
        for method in ranges
    }
    scores = outcome.metrics["method_scores"]
    assert set(scores) == set(measured) and outcome.metrics["method_score_images"] == len(job.eval_labels)
    for method, mine in measured.items():
        assert scores[method]["top1"] == pytest.approx(mine["top1"], abs=1e-4), method
        assert scores[method]["agreement"] == pytest.approx(mine["agreement"], abs=1e-6), method
        assert scores[method]["snr_db"] == pytest.approx(mine["snr_db"], abs=2e-3), method
    assert len({(m["agreement"], m["snr_db"]) for m in measured.values()}) == 3  # the choice matters
    # the spec: best agreement with float, logit SNR breaks ties
    assert outcome.method == max(measured, key=lambda m: (measured[m]["agreement"], measured[m]["snr_db"]))
    kept = _measured(outcome.model, job.eval_inputs, job.eval_labels, float_logits)
    float_top1 = 100.0 * float(np.mean(float_logits.argmax(1) == job.eval_labels))
    assert outcome.metrics["int8_top1"] == pytest.approx(kept["top1"], abs=1e-4)
    assert outcome.metrics["float_top1"] == pytest.approx(float_top1, abs=1e-4)
    assert outcome.metrics["drop"] == pytest.approx(float_top1 - kept["top1"], abs=1e-4)
    assert outcome.metrics["guard"]["steps"] == []


def test_an_onnxruntime_without_precomputed_ranges_is_refused(monkeypatch):
    """An older system ONNX Runtime (a --system-site-packages venv) gets one line naming the floor."""
    import onnxruntime.quantization

    from edgexfer.errors import BackendUnavailableError
    from edgexfer.quant.ort_quantize import MIN_ONNXRUNTIME, check_quantizer

    check_quantizer()  # the installed one takes calibration_cache_path

    def quantize_static(model_input, model_output, calibration_data_reader, extra_options=None):
        raise AssertionError("not to be called")

    monkeypatch.setattr(onnxruntime.quantization, "quantize_static", quantize_static)
    with pytest.raises(BackendUnavailableError, match=f"needs onnxruntime >= {MIN_ONNXRUNTIME}.*pip install"):
        check_quantizer()


@pytest.mark.slow
def test_tensorrt_candidates_are_judged_on_engines_with_guarded_layers_in_fp16(quantized, monkeypatch, tmp_path):
    """Where TensorRT is usable, each TensorRT candidate is built into an engine (the backend's own build,
    INT8 + FP16) and scored on it: the layers the guard keeps out of INT8 run in fp16 there, and the
    recorded scores are the engine's, not ONNX Runtime's."""
    import fake_trt
    from edgexfer.backends.int8_judge import judge_for_target
    from edgexfer.backends.tensorrt import TensorRTBackend
    from edgexfer.compare import compare_logits

    trt = fake_trt.install(monkeypatch, "10.3.0")
    recipe = RECIPES["tensorrt"]
    baseline = quantize_target(_job(quantized, quantized["ranges"], max_drop=None), recipe).metrics["drop"]
    ranges = {"minmax": dict(quantized["ranges"]["minmax"])}
    low, high = ranges["minmax"]["input"]
    ranges["minmax"]["input"] = (low * 300, high * 300)
    job = _job(quantized, ranges, max_drop=baseline + 5.0)
    with judge_for_target("tensorrt", tmp_path / "build") as judge:
        outcome = quantize_target(job, recipe, judge)
    m = outcome.metrics
    assert m["scored_on"] == "tensorrt 10.3.0 engine" and m["stand_in"] is False
    assert m["scoring"]["float_layers_precision"] == "fp16" and {"INT8", "FP16"} <= set(m["scoring"]["builder_flags"])
    assert m["excluded_nodes"][0] == "/conv1/Conv" and m["drop"] <= baseline + 5.0
    # one engine per candidate (the method, then each guard step), every one run on the whole slice
    steps = len(m["guard"]["steps"])
    assert len(trt.log["built"]) == 1 + steps == m["scoring"]["engine_builds"]
    assert trt.log["executed"] == len(job.eval_labels) * (1 + steps)
    layers = trt.log["built"][-1]["layers"]  # the accepted candidate's engine
    assert {name for name, p in layers.items() if p == "fp16"} == set(m["excluded_nodes"])
    assert {p for name, p in layers.items() if name not in m["excluded_nodes"]} == {"int8"}
    assert not list((tmp_path / "build").glob(".*")) and len(list((tmp_path / "build").glob("timing_*"))) == 1
    # the recorded scores are the engine's (fp16 layers round), not ONNX Runtime's on the same model
    source = tmp_path / "accepted.onnx"
    import onnx

    onnx.save(outcome.model, str(source))
    engine = TensorRTBackend().build(source, "int8", tmp_path / "again", {}).path
    with TensorRTBackend().load(engine) as runner:
        on_engine = compare_logits(job.float_logits, runner.infer(job.eval_inputs))
    on_cpu = compare_logits(job.float_logits, session_logits(outcome.model, job.eval_inputs))
    assert m["snr_db"] == pytest.approx(on_engine.snr_db, abs=1e-3)
    assert abs(m["snr_db"] - on_cpu.snr_db) > 0.01
