"""Read-only views of an ONNX graph that the QDQ rules, fix-ups and sensitivity ranking share.

:class:`Graph` indexes producers, consumers and constants; :func:`residual_adds` finds the residual
Adds and which of their inputs is the identity (shortcut) branch.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


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

            for entry in node.attribute:
                if entry.name == "value":
                    return numpy_helper.to_array(entry.t)
        return None

    def input_const(self, node: Any, index: int) -> Optional[np.ndarray]:
        """The constant value of ``node.input[index]``; None when absent or not constant."""
        if len(node.input) <= index or not node.input[index]:
            return None
        return self.const(node.input[index])

    def is_weight_path(self, name: str) -> bool:
        """Whether ``name`` is computed from constants only (an initializer, or Q/DQ of one)."""
        if self.const(name) is not None:
            return True
        node = self.producer.get(name)
        return node is not None and node.op_type in QDQ_OPS and self.is_weight_path(node.input[0])

    def dequantized_by(self, name: str) -> Optional[Any]:
        """The DequantizeLinear that produces ``name`` directly, or None."""
        node = self.producer.get(name)
        return node if node is not None and node.op_type == "DequantizeLinear" else None


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


def _ancestors(graph: Graph, name: str, limit: int = 400) -> Dict[str, int]:
    """Distances (in nodes) from tensor ``name`` back to each ancestor tensor, Q/DQ nodes not counted."""
    distances = {name: 0}
    queue = deque([name])
    while queue and len(distances) < limit:
        current = queue.popleft()
        node = graph.producer.get(current)
        if node is None:
            continue
        step = 0 if node.op_type in QDQ_OPS else 1
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
