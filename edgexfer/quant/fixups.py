"""Post-quantization fix-ups a recipe applies to ONNX Runtime's QDQ output (see :mod:`edgexfer.quant.recipes`).

ONNX Runtime's quantizer places Q/DQ pairs by its own registry; TensorRT wants two things it does not
do: one Q/DQ pair per consumer (:func:`dedicate_qdq_pairs`), and a Q/DQ pair on the identity input of
every residual Add so TensorRT can fuse the other branch's conv with the add
(:func:`add_residual_qdq`). Each fix-up takes ``(model, ranges)`` and edits the model in place.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import numpy as np

from edgexfer.quant.graph import Graph, residual_adds
from edgexfer.quant.rules import QdqRuleError


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
                "QuantizeLinear", list(quant.input), [q_out], name=base + "_QuantizeLinear"
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
    """Dedicate Q/DQ pairs, then insert a symmetric S8 Q/DQ pair on the identity input of each residual Add.

    The scale reuses an existing Q of the same tensor (so both consumers agree) or is computed from the
    calibration ``ranges`` as ORT does for symmetric int8 (``max|x| / 127``). Returns the pairs added.
    """
    from onnx import TensorProto, helper, numpy_helper

    dedicate_qdq_pairs(model)
    graph = Graph(model)
    added = 0
    for node, index in residual_adds(model):
        tensor = node.input[index]
        if graph.dequantized_by(tensor) is not None:
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
