"""QDQ structure rules per target family, and the TensorRT residual-branch fix-up.

One INT8 recipe does not fit all (see ../shared/deploy-notes.md):

- ``cpu``: U8 activations (asymmetric, per-tensor), S8 weights per output channel: what ONNX Runtime
  and OpenVINO run fast on x86 (VNNI).
- ``tensorrt``: symmetric S8 everywhere (zero points 0), weights per output channel, activations per
  tensor, no int32 bias DequantizeLinear (TensorRT 8.6 accepts int8 DQ only), a Q/DQ pair on the
  identity branch of every residual Add and none on the other (so TensorRT fuses that branch's conv
  with the add; conv outputs are not quantized at all), no
  Q/DQ pair shared between consumers, opset <= 17 for TensorRT 8.5/8.6.

:func:`check_rules` lists every violation; :func:`enforce_rules` raises :class:`QdqRuleError`.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np

from edgexfer.errors import ArtifactError

TARGET_FAMILIES = ("cpu", "tensorrt")
WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")
TENSORRT_MAX_OPSET = 17


class QdqRuleError(ArtifactError):
    """A quantized model breaks its target's QDQ rules (the artifact is not written)."""


class Graph:
    """Producer/consumer indexes of an ``onnx.ModelProto`` graph."""

    def __init__(self, model: Any):
        from onnx import numpy_helper

        self.model = model
        self.nodes = list(model.graph.node)
        self.initializers = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        self.producer: Dict[str, Any] = {}
        self.consumers: Dict[str, List[Any]] = {}
        for node in self.nodes:
            for out in node.output:
                self.producer[out] = node
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)

    def const(self, name: str) -> Optional[np.ndarray]:
        """The value of an initializer or Constant node output, else None."""
        if name in self.initializers:
            return self.initializers[name]
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            from onnx import numpy_helper

            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
        return None

    def is_weight_path(self, name: str) -> bool:
        """Whether ``name`` is computed from constants only (an initializer, or Q/DQ of one)."""
        if self.const(name) is not None:
            return True
        node = self.producer.get(name)
        return (
            node is not None
            and node.op_type in ("QuantizeLinear", "DequantizeLinear")
            and self.is_weight_path(node.input[0])
        )


def attr(node: Any, name: str, default: Any = None) -> Any:
    """An attribute's value of an ONNX node."""
    import onnx

    for entry in node.attribute:
        if entry.name == name:
            return onnx.helper.get_attribute_value(entry)
    return default


def default_opset(model: Any) -> int:
    """The model's default-domain opset."""
    return next(int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx"))


# ---- residual adds -------------------------------------------------------------------------------
def _ancestors(graph: Graph, name: str, limit: int = 400) -> Dict[str, int]:
    """Distances (in nodes) from tensor ``name`` back to each ancestor tensor, Q/DQ nodes not counted."""
    distances = {name: 0}
    queue = deque([name])
    while queue and len(distances) < limit:
        current = queue.popleft()
        node = graph.producer.get(current)
        if node is None:
            continue
        step = 0 if node.op_type in ("QuantizeLinear", "DequantizeLinear") else 1
        for parent in node.input[:1] if step == 0 else node.input:
            if parent and parent not in distances and graph.const(parent) is None:
                distances[parent] = distances[current] + step
                queue.append(parent)
    return distances


def residual_adds(model: Any) -> List[Tuple[Any, int]]:
    """Residual Adds as ``(node, index of the identity input)``.

    A residual Add joins two activation branches that fork from one tensor; the identity (shortcut)
    branch is the one with fewer nodes back to the fork (ResNet's skip or its 1x1 downsample,
    MobileNet's and EfficientNet's inverted-residual input).
    """
    graph = Graph(model)
    found = []
    for node in graph.nodes:
        if node.op_type != "Add" or len(node.input) != 2 or any(graph.is_weight_path(i) for i in node.input):
            continue
        left, right = (_ancestors(graph, name) for name in node.input)
        common = set(left) & set(right)
        if not common:
            continue
        fork = min(common, key=lambda t: (left[t] + right[t], max(left[t], right[t])))
        if left[fork] == right[fork]:
            continue
        found.append((node, 0 if left[fork] < right[fork] else 1))
    return found


def _through_qdq(graph: Graph, name: str) -> Optional[Any]:
    """The DequantizeLinear producing ``name`` (directly), or None."""
    node = graph.producer.get(name)
    return node if node is not None and node.op_type == "DequantizeLinear" else None


def dedicate_qdq_pairs(model: Any) -> int:
    """Give every consumer of a shared activation Q/DQ pair its own copy; return the copies added.

    ONNX Runtime's ``DedicatedQDQPair`` counts only quantized consumers, so a tensor feeding one Conv
    and one (unquantized) residual Add ends up with one DQ shared by both: TensorRT wants one each.
    """
    from onnx import helper

    graph = Graph(model)
    added = 0
    for dq in graph.nodes:
        if dq.op_type != "DequantizeLinear" or graph.is_weight_path(dq.input[0]):
            continue
        quant = graph.producer.get(dq.input[0])
        users = graph.consumers.get(dq.output[0], [])
        if quant is None or quant.op_type != "QuantizeLinear" or len(users) < 2:
            continue
        position = list(model.graph.node).index(dq) + 1
        for user in users[1:]:
            base = f"{dq.name}_dedicated{added}"
            q_out, dq_out = base + "_q", base + "_dq"
            new_q = helper.make_node(
                "QuantizeLinear",
                [quant.input[0]] + list(quant.input[1:]),
                [q_out],
                name=base + "_QuantizeLinear",
            )
            new_q.attribute.extend(quant.attribute)
            new_dq = helper.make_node(
                "DequantizeLinear", [q_out] + list(dq.input[1:]), [dq_out], name=base + "_DequantizeLinear"
            )
            new_dq.attribute.extend(dq.attribute)
            model.graph.node.insert(position, new_dq)
            model.graph.node.insert(position, new_q)
            for i, name in enumerate(user.input):
                if name == dq.output[0]:
                    user.input[i] = dq_out
            added += 1
    return added


def add_residual_qdq(model: Any, ranges: Dict[str, Tuple[float, float]]) -> int:
    """Insert a dedicated symmetric S8 Q/DQ pair on the identity input of each residual Add.

    The scale reuses an existing Q of the same tensor (so both consumers agree) or is computed from the
    calibration ``ranges`` as ORT does for symmetric int8 (``max|x| / 127``). Returns the pairs added.
    """
    from onnx import TensorProto, helper, numpy_helper

    dedicate_qdq_pairs(model)
    graph = Graph(model)
    added = 0
    for node, index in residual_adds(model):
        tensor = node.input[index]
        if _through_qdq(graph, tensor) is not None:
            continue
        scale_name = None
        for consumer in graph.consumers.get(tensor, []):
            if consumer.op_type == "QuantizeLinear" and consumer.input[0] == tensor:
                scale_name = consumer.input[1]
        base = f"{tensor}_residual{added}"
        if scale_name is None:
            if tensor not in ranges:
                raise QdqRuleError(f"no calibration range for residual tensor '{tensor}'; re-run calibration")
            low, high = ranges[tensor]
            scale = max(abs(low), abs(high)) / 127.0 or 1.0
            scale_name = base + "_scale"
            model.graph.initializer.append(
                numpy_helper.from_array(np.array(scale, dtype=np.float32), scale_name)
            )
        zero_name = base + "_zero_point"
        model.graph.initializer.append(helper.make_tensor(zero_name, TensorProto.INT8, [], [0]))
        quantized, dequantized = base + "_QuantizeLinear_Output", base + "_DequantizeLinear_Output"
        position = list(model.graph.node).index(node)
        model.graph.node.insert(
            position,
            helper.make_node(
                "DequantizeLinear",
                [quantized, scale_name, zero_name],
                [dequantized],
                name=base + "_DequantizeLinear",
            ),
        )
        model.graph.node.insert(
            position,
            helper.make_node(
                "QuantizeLinear", [tensor, scale_name, zero_name], [quantized], name=base + "_QuantizeLinear"
            ),
        )
        node.input[index] = dequantized
        added += 1
    return added


# ---- rule checks ---------------------------------------------------------------------------------
def _output_channel_axis(node: Any, weight_rank: int) -> int:
    if node.op_type == "Gemm":
        return 0 if attr(node, "transB", 0) else 1
    if node.op_type == "MatMul":
        return weight_rank - 1
    return 0


def _check_weight(graph: Graph, node: Any, problems: List[str]) -> None:
    """The weight of a Conv/Gemm/MatMul must be dequantized int8 per output channel."""
    dq = _through_qdq(graph, node.input[1])
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
    zero = graph.const(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
    if zero is not None and zero.dtype != np.int8:
        problems.append(f"{node.op_type} '{node.name}': weight zero point is {zero.dtype}, expected int8")


def check_rules(model: Any, target: str, excluded: Sequence[str] = ()) -> List[str]:
    """Every way ``model`` breaks the QDQ rules of ``target`` (empty when it follows them).

    ``excluded``: node names deliberately kept in float (accuracy guard); they need no QDQ.
    """
    if target not in TARGET_FAMILIES:
        raise ValueError(f"unknown target '{target}'")
    graph = Graph(model)
    problems: List[str] = []
    excluded_set: Set[str] = set(excluded)
    activation_dtype = np.uint8 if target == "cpu" else np.int8
    for node in graph.nodes:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        zero = graph.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        scale = graph.const(node.input[1])
        if (
            node.op_type == "DequantizeLinear"
            and graph.const(node.input[0]) is not None
            and graph.const(node.input[0]).dtype == np.int32
        ):
            if target == "tensorrt":
                problems.append(f"'{node.name}' dequantizes an int32 bias (TensorRT accepts int8 DQ only)")
            continue
        weight = graph.is_weight_path(node.input[0])
        if target == "tensorrt" and zero is not None and np.any(zero != 0):
            problems.append(f"'{node.name}' has a non-zero zero point (TensorRT needs symmetric QDQ)")
        if not weight:
            if zero is not None and zero.dtype != activation_dtype:
                problems.append(
                    f"'{node.name}' quantizes an activation to {zero.dtype}, expected "
                    f"{np.dtype(activation_dtype).name} for target {target}"
                )
            if scale is not None and scale.size != 1:
                problems.append(f"'{node.name}' quantizes an activation per channel; expected per tensor")
        if node.op_type == "DequantizeLinear" and target == "tensorrt":
            users = graph.consumers.get(node.output[0], [])
            if len(users) > 1:
                problems.append(
                    f"'{node.name}' feeds {len(users)} nodes; TensorRT needs one Q/DQ pair per consumer"
                )
    for node in graph.nodes:
        if node.op_type in WEIGHTED_OPS and node.name not in excluded_set:
            if len(node.input) > 1 and graph.is_weight_path(node.input[1]):
                if _through_qdq(graph, node.input[0]) is None:
                    problems.append(f"{node.op_type} '{node.name}' has an unquantized input")
                _check_weight(graph, node, problems)
    if target == "tensorrt":
        opset = default_opset(model)
        if opset > TENSORRT_MAX_OPSET:
            problems.append(f"opset {opset} is above {TENSORRT_MAX_OPSET}, the newest TensorRT 8.5/8.6 parse")
        for node, index in residual_adds(model):
            if node.name not in excluded_set and _through_qdq(graph, node.input[index]) is None:
                problems.append(
                    f"residual Add '{node.name}' has no Q/DQ on its identity input '{node.input[index]}'"
                )
            if _through_qdq(graph, node.input[1 - index]) is not None:
                problems.append(
                    f"residual Add '{node.name}' has Q/DQ on its conv branch, which stops "
                    "TensorRT fusing the conv with the add"
                )
    return problems


def enforce_rules(model: Any, target: str, excluded: Sequence[str] = (), source: str = "model") -> None:
    """Raise :class:`QdqRuleError` naming the first violations when ``model`` breaks ``target``'s rules."""
    problems = check_rules(model, target, excluded)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise QdqRuleError(f"{source} breaks the {target} QDQ rules: {'; '.join(problems[:3])}{more}")


def qdq_summary(model: Any) -> Dict[str, int]:
    """Counts used in reports and tests: Q, DQ, quantized weighted ops, float weighted ops."""
    graph = Graph(model)
    weighted = [n for n in graph.nodes if n.op_type in WEIGHTED_OPS]
    quantized = [n for n in weighted if _through_qdq(graph, n.input[0]) is not None]
    return {
        "quantize_linear": sum(n.op_type == "QuantizeLinear" for n in graph.nodes),
        "dequantize_linear": sum(n.op_type == "DequantizeLinear" for n in graph.nodes),
        "weighted_ops": len(weighted),
        "quantized_weighted_ops": len(quantized),
        "float_weighted_ops": len(weighted) - len(quantized),
    }
