"""Empirical bias correction of a QDQ model (the "fast bias correction" of NNCF, per layer on real data).

Quantizing a layer's weights and input shifts the mean of its output, and depthwise convolutions with
few weights per channel shift it most (MobileNet, EfficientNet). For every quantized Conv/Gemm that has
a bias, the layer is run twice on the same calibration batches: as in the float model, and as the QDQ
model's sub-graph from the layer's float input through its Q/DQ pairs to its output (the float input is
the one the float model computes, so each layer is corrected for its own error, not its predecessors':
NNCF's ``FastBiasCorrection`` does the same). The per-output-channel mean difference
``E[float output] - E[quantized output]`` is added to the layer's bias, so the corrected layer's mean
output matches the float one. A bias stored as int32 behind a DequantizeLinear is re-rounded in its own
scale. Shifts far larger than the bias itself (:data:`MAX_RELATIVE_SHIFT`, NNCF's threshold) are
skipped: they mean the statistics are not representative, not that the bias is wrong.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from edgexfer.quant.graph import Graph

log = logging.getLogger(__name__)

BIASED_OPS = ("Conv", "Gemm")
MAX_RELATIVE_SHIFT = 1000.0  # NNCF FastBiasCorrection's default threshold on |shift| / |bias|


@dataclass
class Layer:
    """One layer to correct: where its float input and output are, and its quantized sub-graph."""

    node: Any  # the QDQ model's node
    float_input: str  # the float tensor its quantized input is made from
    float_output: str
    submodel: Any = None
    channel_axis: int = 1
    total: Optional[np.ndarray] = None
    count: int = 0


@dataclass
class BiasCorrection:
    """What :func:`correct_biases` did: per corrected layer the mean |shift|, and the layers skipped."""

    shifts: Dict[str, float] = field(default_factory=dict)
    skipped: Dict[str, str] = field(default_factory=dict)
    images: int = 0

    def to_dict(self) -> Dict[str, Any]:
        """JSON-safe summary for the manifest."""
        return {
            "images": self.images,
            "layers_corrected": len(self.shifts),
            "mean_abs_shift": {k: round(v, 6) for k, v in self.shifts.items()},
            "skipped": dict(self.skipped),
        }


def correct_biases(float_model: Any, qdq_model: Any, inputs: np.ndarray, batch_size: int = 16) -> BiasCorrection:
    """Correct the biases of ``qdq_model`` (an ``onnx.ModelProto``, edited in place) against
    ``float_model`` (the model it was quantized from, same node names) on ``inputs`` (NCHW float)."""
    result = BiasCorrection(images=int(len(inputs)))
    layers = _layers(float_model, qdq_model, result)
    if not layers:
        return result
    graph_inputs = {i.name for i in float_model.graph.input}
    wanted = {n for layer in layers for n in (layer.float_input, layer.float_output)} - graph_inputs
    float_session = _session(_with_outputs(float_model, wanted))
    sub_sessions = [_session(layer.submodel) for layer in layers]
    input_name = float_session.get_inputs()[0].name
    names = [o.name for o in float_session.get_outputs()]
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start : start + batch_size]
        values = dict(zip(names, float_session.run(None, {input_name: batch})), **{input_name: batch})
        for layer, session in zip(layers, sub_sessions):
            quantized = session.run(None, {session.get_inputs()[0].name: values[layer.float_input]})[0]
            diff = values[layer.float_output].astype(np.float64) - quantized.astype(np.float64)
            axes = tuple(i for i in range(diff.ndim) if i != layer.channel_axis)
            layer.total = diff.sum(axis=axes) + (0.0 if layer.total is None else layer.total)
            layer.count += int(np.prod([diff.shape[i] for i in axes]))
    graph = Graph(qdq_model)
    for layer in layers:
        shift = (layer.total / max(layer.count, 1)).astype(np.float32)
        _apply(graph, qdq_model, layer.node, shift, result)
    return result


def _layers(float_model: Any, qdq_model: Any, result: BiasCorrection) -> List[Layer]:
    """The quantized Conv/Gemm nodes with a bias, each with its float input/output and quantized sub-graph."""
    float_nodes = {n.name: n for n in float_model.graph.node if n.op_type in BIASED_OPS}
    graph = Graph(qdq_model)
    float_tensors = {t for n in float_model.graph.node for t in n.output} | {i.name for i in float_model.graph.input}
    layers = []
    for node in graph.nodes:
        if node.op_type not in BIASED_OPS or node.name not in float_nodes:
            continue
        if len(node.input) < 3 or not node.input[2]:
            result.skipped[node.name] = "no bias"
            continue
        weight_dq = graph.dequantized_by(node.input[1])
        if weight_dq is None:
            result.skipped[node.name] = "weights not quantized"
            continue
        float_input = _float_source(graph, node.input[0])
        if float_input not in float_tensors or float_nodes[node.name].output[0] not in float_tensors:
            result.skipped[node.name] = "float input/output not found in the float model"
            continue
        layer = Layer(node, float_input, float_nodes[node.name].output[0])
        layer.submodel = _submodel(graph, qdq_model, node, float_input)
        layers.append(layer)
    return layers


def _submodel(graph: Graph, model: Any, node: Any, float_input: str) -> Any:
    """The part of ``model`` from the float tensor ``float_input`` to ``node``'s output (its Q/DQ pairs,
    weight and bias DequantizeLinears, the layer itself)."""
    import onnx

    nodes, stack, seen = [], [node], set()
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        nodes.append(current)
        for name in current.input:
            producer = graph.producer.get(name)
            if name and name != float_input and producer is not None:
                stack.append(producer)
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    nodes.sort(key=lambda n: order[id(n)])
    used = {name for n in nodes for name in n.input}
    body = onnx.helper.make_graph(
        nodes,
        "layer",
        [onnx.helper.make_tensor_value_info(float_input, onnx.TensorProto.FLOAT, None)],
        [onnx.ValueInfoProto(name=node.output[0])],
        [i for i in model.graph.initializer if i.name in used],
    )
    return onnx.helper.make_model(body, opset_imports=model.opset_import, ir_version=model.ir_version)


def _float_source(graph: Graph, name: str) -> str:
    """The float tensor an activation input is quantized from (through DQ <- Q), or ``name`` itself."""
    dq = graph.dequantized_by(name)
    if dq is None:
        return name
    q = graph.producer.get(dq.input[0])
    return q.input[0] if q is not None and q.op_type == "QuantizeLinear" else name


def _apply(graph: Graph, model: Any, node: Any, shift: np.ndarray, result: BiasCorrection) -> None:
    """Add ``shift`` to ``node``'s bias (a float initializer, or int32 behind a DequantizeLinear)."""
    from onnx import numpy_helper

    initializers = {i.name: i for i in model.graph.initializer}
    bias_name = node.input[2]
    dq = graph.dequantized_by(bias_name)
    if dq is None and bias_name in initializers:
        bias = numpy_helper.to_array(initializers[bias_name]).astype(np.float32)
        new = bias + shift.reshape(bias.shape)
        target, stored = initializers[bias_name], new.astype(bias.dtype)
    elif dq is not None and dq.input[0] in initializers and len(dq.input) > 1 and dq.input[1] in initializers:
        q_bias = numpy_helper.to_array(initializers[dq.input[0]])
        scale = numpy_helper.to_array(initializers[dq.input[1]]).astype(np.float64)
        bias = (q_bias.astype(np.float64) * scale).astype(np.float32)
        new = bias + shift.reshape(bias.shape)
        info = np.iinfo(q_bias.dtype)
        target = initializers[dq.input[0]]
        stored = np.clip(np.round(new.astype(np.float64) / scale), info.min, info.max).astype(q_bias.dtype)
    else:
        result.skipped[node.name] = "bias is neither an initializer nor a dequantized initializer"
        return
    # a bias of zeros (an untrained layer) gives no scale to judge the shift by
    magnitude = float(np.max(np.abs(shift)) / max(float(np.max(np.abs(bias))), 1e-12))
    if np.any(bias) and magnitude > MAX_RELATIVE_SHIFT:
        result.skipped[node.name] = f"shift {magnitude:.0f}x the bias"
        return
    target.CopyFrom(numpy_helper.from_array(stored, target.name))
    result.shifts[node.name] = float(np.mean(np.abs(shift)))


def _with_outputs(model: Any, names: "set[str]") -> Any:
    """A copy of ``model`` that also outputs the tensors ``names`` (ONNX Runtime infers their types)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    for name in sorted(names - present):
        copy.graph.output.append(onnx.ValueInfoProto(name=name))
    return copy


def _session(model: Any) -> Any:
    import onnxruntime as ort

    from edgexfer.hardware import physical_cores

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, physical_cores())
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def mean_output_error(float_model: Any, qdq_model: Any, inputs: np.ndarray, names: List[str]) -> Dict[str, float]:
    """Per node name: the mean over channels of |E[float output] - E[quantized output]| in the full models
    (the quantity bias correction reduces; used by tests and benchmarks)."""
    float_nodes = {n.name: n.output[0] for n in float_model.graph.node}
    qdq_nodes = {n.name: n.output[0] for n in qdq_model.graph.node}
    wanted = [n for n in names if n in float_nodes and n in qdq_nodes]
    float_out = _run_outputs(float_model, inputs, [float_nodes[n] for n in wanted])
    qdq_out = _run_outputs(qdq_model, inputs, [qdq_nodes[n] for n in wanted])
    errors = {}
    for name, f, q in zip(wanted, float_out, qdq_out):
        axes = tuple(i for i in range(f.ndim) if i != 1)
        errors[name] = float(np.mean(np.abs(f.mean(axis=axes) - q.mean(axis=axes))))
    return errors


def _run_outputs(model: Any, inputs: np.ndarray, names: List[str]) -> Tuple[np.ndarray, ...]:
    session = _session(_with_outputs(model, set(names)))
    outputs = [o.name for o in session.get_outputs()]
    values = dict(zip(outputs, session.run(None, {session.get_inputs()[0].name: inputs})))
    return tuple(values[n] for n in names)
