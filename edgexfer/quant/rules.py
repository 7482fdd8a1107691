"""What a runtime requires of a QDQ model, as data (:class:`QdqRules`), and the check against it.

One INT8 recipe does not fit all (see ../shared/deploy-notes.md):

- :meth:`QdqRules.cpu`: U8 activations (asymmetric, per tensor), S8 weights per output channel: what
  ONNX Runtime and OpenVINO run fast on x86 (VNNI).
- :meth:`QdqRules.openvino`: OpenVINO's low-precision transformations take U8 or S8 activations (NNCF's
  symmetric presets make S8 where a tensor can be negative), per tensor, and S8 per-channel weights.
- :meth:`QdqRules.tensorrt`: symmetric S8 everywhere (zero points 0), weights per output channel,
  activations per tensor, no int32 bias DequantizeLinear (TensorRT 8.6 accepts int8 DQ only), a Q/DQ
  pair on the identity branch of every residual Add and none on the other (so TensorRT fuses that
  branch's conv with the add), no Q/DQ pair shared between consumers, opset <= 17 for TensorRT 8.5/8.6.

:func:`check_rules` lists every violation; :func:`enforce_rules` raises :class:`QdqRuleError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgexfer.backends.trt_compat import TRT8_MAX_OPSET
from edgexfer.errors import ArtifactError
from edgexfer.quant.graph import QDQ_OPS, WEIGHTED_OPS, Graph, attr, default_opset, residual_adds


class QdqRuleError(ArtifactError):
    """A quantized model breaks its target's QDQ rules (the artifact is not written)."""


@dataclass(frozen=True)
class QdqRules:
    """The QDQ structure one target family's runtime needs; :func:`check_rules` audits a model against it."""

    name: str
    activation_dtype: str
    symmetric: bool = False  # every zero point is 0
    int32_bias_dq: bool = True  # a DequantizeLinear of an int32 bias is accepted
    dedicated_pairs: bool = False  # one Q/DQ pair per consumer
    residual_qdq: bool = False  # Q/DQ on each residual Add's identity input, none on its conv branch
    max_opset: Optional[int] = None
    max_opset_reason: str = ""
    also_activation_dtypes: Tuple[str, ...] = ()  # accepted besides ``activation_dtype``
    # ops the runtime carries an INT8 tensor through unchanged: a weighted op whose input comes through
    # them from a DequantizeLinear has a quantized input
    precision_preserving: Tuple[str, ...] = ()

    @classmethod
    def cpu(cls) -> "QdqRules":
        """ONNX Runtime and OpenVINO on x86: U8 activations, S8 per-channel weights."""
        return cls(name="cpu", activation_dtype="uint8")

    @classmethod
    def openvino(cls) -> "QdqRules":
        """OpenVINO on CPU: its FakeQuantize folding runs U8 and S8 activations alike (NNCF makes S8 where a
        tensor can be negative), per tensor; S8 per-channel weights."""
        return cls(
            name="openvino",
            activation_dtype="uint8",
            also_activation_dtypes=("int8",),
            # OpenVINO's low-precision transformations move dequantization through these
            precision_preserving=("MaxPool", "Flatten", "Reshape", "Identity", "Transpose", "Squeeze", "Unsqueeze"),
        )

    @classmethod
    def tensorrt(cls) -> "QdqRules":
        """TensorRT's explicit-quantization rules (trt-review section 2)."""
        return cls(
            name="tensorrt",
            activation_dtype="int8",
            symmetric=True,
            int32_bias_dq=False,
            dedicated_pairs=True,
            residual_qdq=True,
            max_opset=TRT8_MAX_OPSET,
            max_opset_reason="the newest TensorRT 8.5/8.6 parse",
        )


def _output_channel_axis(node: Any, weight_rank: int) -> int:
    if node.op_type == "Gemm":
        return 0 if attr(node, "transB", 0) else 1
    if node.op_type == "MatMul":
        return weight_rank - 1
    return 0


def _check_weight(graph: Graph, node: Any, problems: List[str]) -> None:
    """The weight of a Conv/Gemm/MatMul must be dequantized int8 per output channel."""
    dq = graph.dequantized_by(node.input[1])
    if dq is None:
        problems.append(f"{node.op_type} '{node.name}' has an unquantized weight")
        return
    source = graph.producer.get(dq.input[0])
    weight = graph.const(dq.input[0])
    if weight is None and source is not None and source.op_type == "QuantizeLinear":
        weight = graph.const(source.input[0])
    scale = graph.const(dq.input[1])
    if weight is None or scale is None:
        problems.append(f"{node.op_type} '{node.name}': weight or its scale is not a constant")
        return
    axis = _output_channel_axis(node, weight.ndim)
    channels = weight.shape[axis]
    dq_axis = attr(dq, "axis", 1)
    if scale.size != channels or (scale.size > 1 and dq_axis % weight.ndim != axis):
        problems.append(
            f"{node.op_type} '{node.name}': weight is not quantized per output channel "
            f"(scale size {scale.size}, axis {dq_axis}; expected {channels} on axis {axis})"
        )
    zero = graph.input_const(dq, 2)
    if zero is not None and zero.dtype != np.int8:
        problems.append(f"{node.op_type} '{node.name}': weight zero point is {zero.dtype}, expected int8")


def _check_qdq_node(graph: Graph, node: Any, rules: QdqRules, problems: List[str]) -> None:
    """Zero points, dtypes, granularity and sharing of one QuantizeLinear/DequantizeLinear."""
    zero = graph.input_const(node, 2)
    value = graph.input_const(node, 0)
    if node.op_type == "DequantizeLinear" and value is not None and value.dtype == np.int32:
        if not rules.int32_bias_dq:
            problems.append(f"'{node.name}' dequantizes an int32 bias ({rules.name} accepts int8 DQ only)")
        return
    if rules.symmetric and zero is not None and np.any(zero != 0):
        problems.append(f"'{node.name}' has a non-zero zero point ({rules.name} needs symmetric QDQ)")
    if not graph.is_weight_path(node.input[0]):
        accepted = (rules.activation_dtype,) + rules.also_activation_dtypes
        if zero is not None and zero.dtype.name not in accepted:
            problems.append(
                f"'{node.name}' quantizes an activation to {zero.dtype}, expected "
                f"{' or '.join(accepted)} for target {rules.name}"
            )
        scale = graph.input_const(node, 1)
        if scale is not None and scale.size != 1:
            problems.append(f"'{node.name}' quantizes an activation per channel; expected per tensor")
    if node.op_type == "DequantizeLinear" and rules.dedicated_pairs:
        users = graph.consumers.get(node.output[0], [])
        if len(users) > 1:
            problems.append(f"'{node.name}' feeds {len(users)} nodes; {rules.name} needs one Q/DQ pair per consumer")


def _check_residuals(graph: Graph, model: Any, excluded: Sequence[str], problems: List[str]) -> None:
    """Q/DQ on the identity input of every residual Add, none on its conv branch."""
    for node, index in residual_adds(model):
        if node.name not in excluded and graph.dequantized_by(node.input[index]) is None:
            problems.append(f"residual Add '{node.name}' has no Q/DQ on its identity input '{node.input[index]}'")
        if graph.dequantized_by(node.input[1 - index]) is not None:
            problems.append(
                f"residual Add '{node.name}' has Q/DQ on its conv branch, which stops "
                "TensorRT fusing the conv with the add"
            )


def _input_dequantizer(graph: Graph, name: str, through: Sequence[str]) -> Any:
    """The DequantizeLinear feeding tensor ``name``, directly or through ``through`` ops (first inputs)."""
    found = graph.dequantized_by(name)
    producer = graph.producer.get(name)
    while found is None and producer is not None and producer.op_type in through:
        found = graph.dequantized_by(producer.input[0])
        producer = graph.producer.get(producer.input[0])
    return found


def check_rules(model: Any, rules: QdqRules, excluded: Sequence[str] = ()) -> List[str]:
    """Every way ``model`` breaks ``rules`` (empty when it follows them).

    ``excluded``: node names deliberately kept in float (accuracy guard); they need no QDQ.
    """
    graph = Graph(model)
    problems: List[str] = []
    excluded_set = set(excluded)
    for node in graph.nodes:
        if node.op_type in QDQ_OPS:
            _check_qdq_node(graph, node, rules, problems)
    for node in graph.nodes:
        if node.op_type in WEIGHTED_OPS and node.name not in excluded_set:
            if len(node.input) > 1 and graph.is_weight_path(node.input[1]):
                if _input_dequantizer(graph, node.input[0], rules.precision_preserving) is None:
                    problems.append(f"{node.op_type} '{node.name}' has an unquantized input")
                _check_weight(graph, node, problems)
    opset = default_opset(model)
    if rules.max_opset is not None and opset > rules.max_opset:
        problems.append(f"opset {opset} is above {rules.max_opset}, {rules.max_opset_reason}")
    if rules.residual_qdq:
        _check_residuals(graph, model, excluded_set, problems)
    return problems


def enforce_rules(model: Any, rules: QdqRules, excluded: Sequence[str] = (), source: str = "model") -> None:
    """Raise :class:`QdqRuleError` naming the first violations when ``model`` breaks ``rules``."""
    problems = check_rules(model, rules, excluded)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise QdqRuleError(f"{source} breaks the {rules.name} QDQ rules: {'; '.join(problems[:3])}{more}")


def qdq_summary(model: Any) -> Dict[str, int]:
    """Counts used in reports and tests: Q, DQ, quantized weighted ops, float weighted ops."""
    graph = Graph(model)
    weighted = [n for n in graph.nodes if n.op_type in WEIGHTED_OPS]
    quantized = [n for n in weighted if graph.dequantized_by(n.input[0]) is not None]
    return {
        "quantize_linear": sum(n.op_type == "QuantizeLinear" for n in graph.nodes),
        "dequantize_linear": sum(n.op_type == "DequantizeLinear" for n in graph.nodes),
        "weighted_ops": len(weighted),
        "quantized_weighted_ops": len(quantized),
        "float_weighted_ops": len(weighted) - len(quantized),
    }
