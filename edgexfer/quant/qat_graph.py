"""The float ONNX model as a trainable torch module, fake-quantized on exactly the edges its QDQ model quantizes.

Quantization-aware training (:mod:`edgexfer.quant.qat`) trains the graph that ships: the float ONNX model
after ONNX Runtime's pre-processing (BatchNorm already folded into the convolutions by the export), run op by
op in torch with its Conv/Gemm/MatMul weights and biases as parameters. :func:`read_plan` reads, from the
recipe's QDQ model of that very graph, which node inputs run through Q/DQ and with which scale and zero point;
the module applies torch's fake-quantization ops (``torch.fake_quantize_per_tensor_affine`` and
``torch.fake_quantize_per_channel_affine``, straight-through gradients) on the same inputs:

- activations: the QDQ model's scale and zero point (the calibrated ranges), fixed, clamped to the Q op's
  type (uint8 0..255 or int8 -128..127) as the runtime's QuantizeLinear does;
- weights: symmetric per channel along the DequantizeLinear's axis, scale ``max|w| / 127`` recomputed from
  the current weights each step, as ONNX Runtime computes it when it quantizes the trained weights;
- biases stored as int32 (ONNX Runtime's ``QuantizeBias``): scale = input scale x weight scale per channel.

Names match because both models come from one graph: :func:`name_nodes` gives every node a unique name
first. torch is imported lazily (this is the workstation side).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from edgexfer.errors import ModelError

Edge = Tuple[str, int]  # (node name, input index)
QUANT_OPS = ("QuantizeLinear", "DequantizeLinear")
WEIGHT_BITS_MAX = 127  # ONNX Runtime's symmetric int8 range is -127..127 (get_qmin_qmax_for_qType)


@dataclass(frozen=True)
class ActivationQuant:
    """One activation edge's fixed quantization: scale, zero point, the Q op's integer range."""

    scale: float
    zero_point: int
    qmin: int
    qmax: int


@dataclass
class FakeQuantPlan:
    """Where the recipe's QDQ model quantizes, keyed by the float model's node names."""

    activations: Dict[Edge, ActivationQuant] = field(default_factory=dict)
    weights: Dict[Edge, int] = field(default_factory=dict)  # edge -> per-channel axis
    biases: Dict[Edge, Tuple[Edge, Edge]] = field(default_factory=dict)  # bias edge -> (input edge, weight edge)
    outputs: Dict[str, ActivationQuant] = field(default_factory=dict)  # graph outputs behind Q/DQ

    def describe(self) -> Dict[str, int]:
        """Counts for the manifest."""
        return {"activation_edges": len(self.activations), "weights": len(self.weights),
                "int32_biases": len(self.biases), "outputs": len(self.outputs)}


def name_nodes(model: Any) -> Any:
    """Give every unnamed (or repeated) node a unique name, in place; return the model."""
    seen = set()
    for index, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"qat_{index}_{node.op_type}"
        seen.add(node.name)
    return model


def _integer_range(dtype: Any) -> Tuple[int, int]:
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def read_plan(qdq_model: Any) -> FakeQuantPlan:
    """The :class:`FakeQuantPlan` of a QDQ model (ONNX Runtime's QDQ format, after the recipe's fix-ups)."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in qdq_model.graph.initializer}
    producer = {out: node for node in qdq_model.graph.node for out in node.output}
    plan = FakeQuantPlan()
    bias_of: Dict[Edge, Edge] = {}

    def source(dq: Any) -> Tuple[str, Any]:
        """(what the DequantizeLinear dequantizes: 'weight' / 'bias' / 'activation', the Q or DQ node)."""
        first = dq.input[0]
        if first in inits:
            return ("bias" if inits[first].dtype == np.int32 else "weight"), dq
        quantize = producer.get(first)
        if quantize is None or quantize.op_type != "QuantizeLinear":
            raise ModelError(f"DequantizeLinear {dq.name} does not follow a QuantizeLinear")
        return ("weight" if quantize.input[0] in inits else "activation"), quantize

    def activation(node: Any) -> ActivationQuant:
        scale = inits[node.input[1]]
        zero = inits[node.input[2]] if len(node.input) > 2 and node.input[2] else np.zeros((), np.uint8)
        return ActivationQuant(float(scale.reshape(-1)[0]), int(zero.reshape(-1)[0]), *_integer_range(zero.dtype))

    for node in qdq_model.graph.node:
        if node.op_type in QUANT_OPS:
            continue
        for index, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            kind, quant_node = source(dq)
            edge = (node.name, index)
            if kind == "activation":
                plan.activations[edge] = activation(quant_node)
            elif kind == "weight":
                axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
                plan.weights[edge] = int(axis)
            else:
                bias_of[edge] = edge
    for edge in bias_of:  # int32 bias = input scale x weight scale: needs the same node's input and weight
        inputs, weights = (edge[0], 0), (edge[0], 1)
        if inputs not in plan.activations or weights not in plan.weights:
            raise ModelError(f"int32 bias of {edge[0]} without a quantized input and weight")
        plan.biases[edge] = (inputs, weights)
    for output in qdq_model.graph.output:
        dq = producer.get(output.name)
        if dq is not None and dq.op_type == "DequantizeLinear":
            plan.outputs[output.name] = activation(source(dq)[1])
    return plan


def weight_scale(weight: Any, axis: int) -> Any:
    """Per-channel symmetric scale along ``axis``: ``max|w| / 127`` (ONNX Runtime's, never 0)."""
    import torch

    dims = [d for d in range(weight.dim()) if d != axis % weight.dim()]
    absmax = weight.detach().abs().amax(dim=dims)
    scale = absmax / WEIGHT_BITS_MAX
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def fake_quant_weight(weight: Any, axis: int) -> Any:
    """``weight`` through symmetric per-channel int8 fake quantization (straight-through gradient)."""
    import torch

    scale = weight_scale(weight, axis).float()
    zeros = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(weight, scale, zeros, axis % weight.dim(), -128, 127)


def fake_quant_activation(value: Any, quant: ActivationQuant) -> Any:
    """``value`` through the QDQ model's fixed per-tensor Q/DQ (straight-through gradient inside the range)."""
    import torch

    return torch.fake_quantize_per_tensor_affine(value, quant.scale, quant.zero_point, quant.qmin, quant.qmax)


def build_module(float_model: Any, plan: Optional[FakeQuantPlan]) -> Any:
    """A ``torch.nn.Module`` running ``float_model`` (named by :func:`name_nodes`), fake-quantized by
    ``plan`` while ``module.quantize`` is True; Conv/Gemm/MatMul initializers are its parameters."""
    import torch
    from onnx import numpy_helper

    from edgexfer.quant.qat_ops import OPS, attributes

    unsupported = sorted({n.op_type for n in float_model.graph.node if n.op_type not in OPS})
    if unsupported:
        raise ModelError(
            f"QAT cannot run op(s) {', '.join(unsupported)} of this model in torch (it runs {', '.join(sorted(OPS))}); "
            "export without --qat-epochs"
        )
    trainable = {name for node in float_model.graph.node if node.op_type in ("Conv", "Gemm", "MatMul")
                 for name in node.input[1:3]}

    class OnnxGraphModule(torch.nn.Module):
        """The ONNX graph, node by node, in torch."""

        def __init__(self) -> None:
            super().__init__()
            self.quantize = plan is not None
            self.plan = plan or FakeQuantPlan()
            self.keys: Dict[str, str] = {}
            self.params = torch.nn.ParameterDict()
            self.consts: Dict[str, Any] = {}
            for init in float_model.graph.initializer:
                value = torch.from_numpy(numpy_helper.to_array(init).copy())
                if init.name in trainable and value.is_floating_point():
                    self.keys[init.name] = f"p{len(self.keys)}"
                    self.params[self.keys[init.name]] = torch.nn.Parameter(value)
                else:
                    self.consts[init.name] = value
            self.nodes: List[Tuple[Any, Callable, Dict[str, Any]]] = [
                (n, OPS[n.op_type], attributes(n)) for n in float_model.graph.node
            ]
            self.input_name = float_model.graph.input[0].name
            self.output_names = [o.name for o in float_model.graph.output]

        def trained(self) -> Dict[str, np.ndarray]:
            """The current values of the trained initializers, by ONNX name."""
            return {name: self.params[key].detach().cpu().numpy() for name, key in self.keys.items()}

        def _value(self, env: Dict[str, Any], name: str) -> Any:
            if name in env:
                return env[name]
            if name in self.keys:
                return self.params[self.keys[name]]
            return self.consts[name]

        def forward(self, inputs: Any) -> Any:
            env: Dict[str, Any] = {self.input_name: inputs}
            for node, op, attrs in self.nodes:
                values = [None if not name else self._value(env, name) for name in node.input]
                if self.quantize:
                    values = self._fake_quant(node.name, values)
                outputs = op(values, attrs)
                for name, value in zip(node.output, outputs if isinstance(outputs, tuple) else (outputs,)):
                    env[name] = value
            results = []
            for name in self.output_names:
                value = env[name]
                if self.quantize and name in self.plan.outputs:
                    value = fake_quant_activation(value, self.plan.outputs[name])
                results.append(value)
            return results[0] if len(results) == 1 else tuple(results)

        def _fake_quant(self, node_name: str, values: List[Any]) -> List[Any]:
            plan = self.plan
            out = list(values)
            for index, value in enumerate(values):
                edge = (node_name, index)
                if edge in plan.activations:
                    out[index] = fake_quant_activation(value, plan.activations[edge])
                elif edge in plan.weights:
                    out[index] = fake_quant_weight(value, plan.weights[edge])
            for edge, (input_edge, weight_edge) in plan.biases.items():
                if edge[0] == node_name:
                    scale = plan.activations[input_edge].scale * weight_scale(values[1], plan.weights[weight_edge])
                    zeros = torch.zeros_like(scale, dtype=torch.int32)
                    out[edge[1]] = torch.fake_quantize_per_channel_affine(
                        values[edge[1]], scale.float(), zeros, 0, -(2**31), 2**31 - 1)
            return out

    return OnnxGraphModule()


def with_weights(float_model: Any, trained: Dict[str, np.ndarray]) -> Any:
    """A copy of ``float_model`` whose initializers named in ``trained`` hold those values."""
    import onnx
    from onnx import numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(float_model)
    for index, init in enumerate(model.graph.initializer):
        if init.name in trained:
            model.graph.initializer[index].CopyFrom(
                numpy_helper.from_array(trained[init.name].astype(numpy_helper.to_array(init).dtype), init.name))
    return model
