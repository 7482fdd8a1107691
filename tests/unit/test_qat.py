"""Quantization-aware training (edgexfer.quant.qat*): the torch module fake-quantizes exactly what the recipe's
QDQ model quantizes, the trained weights come out of ONNX Runtime's quantizer as training simulated them, the
activation scales are the calibrated ones, and the candidate joins only when asked and is kept only when it wins."""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgexfer.quant import candidates  # noqa: E402
from edgexfer.quant.candidates import CandidateScore, choose, quantizers_for  # noqa: E402
from edgexfer.quant.qat_graph import (  # noqa: E402
    build_module, fake_quant_weight, name_nodes, read_plan, weight_scale, with_weights,
)
from edgexfer.quant.recipes import recipe_for  # noqa: E402


class Tiny(torch.nn.Module):
    """conv-bn-relu, a residual block, an SE-style gate (HardSigmoid x Mul), pooling and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU())
        self.block = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.BatchNorm2d(8))
        self.gate = torch.nn.Conv2d(8, 8, 1)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(self.block(x) + x)
        x = torch.nn.functional.max_pool2d(x, 2)
        x = x * torch.nn.functional.hardsigmoid(self.gate(x.mean((2, 3), keepdim=True)))
        return self.head(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(named pre-processed float model, its path, minmax ranges, calibration inputs)."""
    import onnx

    from edgexfer.quant.ort_quantize import prepare_for_quantization
    from edgexfer.quant.ranges import collect_ranges

    root = tmp_path_factory.mktemp("qat")
    torch.manual_seed(0)
    model = Tiny().eval()
    for bn in (model.stem[1], model.block[1]):  # non-trivial statistics, so folding matters
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    torch.onnx.export(model, torch.randn(1, 3, 16, 16), os.fspath(root / "tiny.onnx"), opset_version=17,
                      dynamo=False, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    prepared = prepare_for_quantization(root / "tiny.onnx", root / "prepared.onnx")
    named = name_nodes(onnx.load(os.fspath(prepared)))
    path = root / "named.onnx"
    onnx.save(named, os.fspath(path))
    inputs = np.random.default_rng(0).normal(size=(24, 3, 16, 16)).astype(np.float32)
    ranges = collect_ranges(path, inputs, ["minmax"])["minmax"]
    return named, path, ranges, inputs, root


def _qdq(tiny, target, float_path=None):
    from edgexfer.quant.ort_quantize import quantize_with_ranges

    named, path, ranges, _, root = tiny
    return quantize_with_ranges(float_path or path, recipe_for(target), "minmax", ranges, root)


def _reference_logits(model, inputs):
    """ONNX Runtime running the QDQ model op by op (no fusion): Q and DQ computed as written."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": inputs})[0]


@pytest.mark.parametrize("target", ["cpu", "tensorrt"])
def test_fake_quant_module_computes_what_the_qdq_model_computes(tiny, target):
    named, _, _, inputs, _ = tiny
    qdq = _qdq(tiny, target)
    plan = read_plan(qdq)
    assert plan.weights and plan.activations
    if target == "cpu":  # U8 asymmetric activations, int32 biases; TensorRT: int8 symmetric, float biases
        assert plan.biases and {q.qmin for q in plan.activations.values()} == {0}
    else:
        assert not plan.biases and {(q.zero_point, q.qmin) for q in plan.activations.values()} == {(0, -128)}
    module = build_module(named, plan).eval()
    with torch.no_grad():
        simulated = module(torch.from_numpy(inputs)).numpy()
        module.quantize = False
        floats = module(torch.from_numpy(inputs)).numpy()
    deployed = _reference_logits(qdq, inputs)
    quant_error = np.abs(floats - deployed).max()
    assert quant_error > 1e-3  # quantization changes the logits ...
    # ... and the module reproduces the change: only float rounding ties differ
    assert np.abs(simulated - deployed).max() < 0.05 * quant_error


def test_the_module_without_fake_quant_is_the_float_model(tiny):
    import onnxruntime as ort

    named, path, _, inputs, _ = tiny
    module = build_module(named, None).eval()
    with torch.no_grad():
        ours = module(torch.from_numpy(inputs)).numpy()
    session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(ours, session.run(None, {"input": inputs})[0], atol=1e-4)


@pytest.mark.parametrize("target", ["cpu", "tensorrt"])
def test_trained_weights_quantize_to_what_training_simulated(tiny, target):
    """Perturbed ("trained") weights: ONNX Runtime's per-channel int8 weights, dequantized, equal the fake
    quantization of the same weights within one step; the activation scales stay the calibrated ones."""
    import onnx
    from onnx import numpy_helper

    named, _, _, _, root = tiny
    start = _qdq(tiny, target)
    plan = read_plan(start)
    module = build_module(named, plan)
    rng = np.random.default_rng(1)
    trained = {k: v * (1 + 0.3 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in module.trained().items()}
    trained_path = root / f"trained_{target}.onnx"
    onnx.save(with_weights(named, trained), os.fspath(trained_path))
    after = _qdq(tiny, target, trained_path)
    assert read_plan(after).activations == plan.activations  # not recalibrated
    inits = {i.name: numpy_helper.to_array(i) for i in after.graph.initializer}
    producer = {o: n for n in after.graph.node for o in n.output}
    float_inputs = {(n.name, i): name for n in named.graph.node for i, name in enumerate(n.input)}
    checked = 0
    for node in after.graph.node:
        for index, name in enumerate(node.input):
            if (node.name, index) not in plan.weights:
                continue
            dq = producer[name]
            stored = inits[dq.input[0]] if dq.input[0] in inits else None
            scale = inits[dq.input[1]]
            axis = plan.weights[(node.name, index)]
            weight = torch.from_numpy(trained[float_inputs[(node.name, index)]])
            np.testing.assert_allclose(scale, weight_scale(weight, axis).numpy(), rtol=1e-6)
            simulated = fake_quant_weight(weight, axis).numpy()
            if stored is None:  # TensorRT: float weights behind a Q/DQ pair; the runtime quantizes them alike
                assert producer[dq.input[0]].op_type == "QuantizeLinear"
                continue
            shape = [1] * stored.ndim
            shape[axis] = -1
            deployed = stored.astype(np.float32) * scale.reshape(shape)
            step = scale.reshape(shape)
            assert np.all(np.abs(deployed - simulated) <= step * 1.0001)
            assert np.mean(deployed == simulated) > 0.99
            checked += 1
    assert checked == (len(plan.weights) if target == "cpu" else 0)


def test_training_moves_the_weights_and_keeps_the_graph(tiny):
    from edgexfer.preprocess import Preprocess
    from edgexfer.quant.qat import QatSettings, train_qat

    named, _, _, _, _ = tiny
    plan = read_plan(_qdq(tiny, "cpu"))
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, size=(20, 3, 16, 16), dtype=np.uint8)
    labels = rng.integers(0, 3, size=20)
    preprocess = Preprocess(size=16, resize_size=16, augment="none")
    before = build_module(named, plan).trained()
    trained, record = train_qat(named, plan, pixels, labels, preprocess, QatSettings(epochs=2, lr=0.01, batch_size=8))
    assert set(trained) == set(before)
    assert any(not np.allclose(trained[k], before[k]) for k in before)
    assert record["steps"] == 6 and len(record["epoch_losses"]) == 2 and record["plan"]["weights"] == len(plan.weights)


def test_an_unknown_op_is_one_line():
    import onnx
    from onnx import helper

    from edgexfer.errors import ModelError

    graph = helper.make_graph([helper.make_node("Einsum", ["x", "x"], ["y"], equation="i,i->i")], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])])
    with pytest.raises(ModelError, match="QAT cannot run op.*Einsum.*without --qat-epochs"):
        build_module(helper.make_model(graph), None)


def test_qat_competes_only_when_asked():
    assert "edgexfer-qat" not in [q.name for q in quantizers_for("cpu", "auto")[0]]
    assert "edgexfer-qat" in [q.name for q in quantizers_for("cpu", "auto", ("edgexfer-qat",))[0]]
    assert list(candidates.QUANTIZERS)[-1] == "edgexfer-qat"  # last in tie-break order


def _score(name, agreement, top1):
    return CandidateScore(name, "onnxruntime", top1, agreement, 20.0, 90.0 - top1, 300, latency_ms=1.0)


def test_qat_is_kept_only_when_it_wins():
    ptq, qat = _score("edgexfer", 0.97, 88.0), _score("edgexfer-qat", 0.95, 87.0)
    assert choose([ptq, qat])[0] is ptq  # worse: not kept
    level = _score("edgexfer-qat", 0.971, 88.1)
    assert choose([ptq, level])[0] is ptq  # level (same graph, same latency): the PTQ recipe, first in order
    better = _score("edgexfer-qat", 0.99, 89.5)
    assert choose([ptq, better])[0] is better
