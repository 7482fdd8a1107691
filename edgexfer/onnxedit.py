"""Edits of ONNX graphs that several stages need (the uint8-pixel input variant).

Kept below the stages so the export stage, the bench preparation and later the deploy path share one
implementation instead of importing each other.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def with_uint8_input(float_model: Any, preprocess: Any, layout: str) -> Any:
    """A copy of the float model whose ``input`` is uint8 pixels (NCHW or NHWC) with normalisation inside.

    Added in front: (Transpose for NHWC, on uint8, the cheap side) -> Cast to float -> Mul by
    ``1 / (255 std)`` -> Add ``-mean / std``: one scale and shift per channel that TensorRT fuses and
    ONNX Runtime's quantizer calibrates like any activation, so the variant stays quantizable.
    """
    import copy

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = copy.deepcopy(float_model)
    graph = model.graph
    old = graph.input[0]
    dims = [d.dim_param or d.dim_value for d in old.type.tensor_type.shape.dim]
    internal = "input_normalized"
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old.name:
                node.input[i] = internal
    mean = np.asarray(preprocess.mean, np.float32)
    std = np.asarray(preprocess.std, np.float32)
    scale = (1.0 / (255.0 * std)).reshape(1, 3, 1, 1).astype(np.float32)
    shift = (-mean / std).reshape(1, 3, 1, 1).astype(np.float32)
    graph.initializer.extend(
        [numpy_helper.from_array(scale, "input_scale"), numpy_helper.from_array(shift, "input_shift")]
    )
    nodes = []
    source = old.name
    if layout == "NHWC":
        nodes.append(
            helper.make_node("Transpose", [source], ["input_nchw"], name="input_to_nchw", perm=[0, 3, 1, 2])
        )
        source = "input_nchw"
        dims = [dims[0], dims[2], dims[3], dims[1]]
    nodes += [
        helper.make_node("Cast", [source], ["input_float"], name="input_cast", to=TensorProto.FLOAT),
        helper.make_node("Mul", ["input_float", "input_scale"], ["input_scaled"], name="input_scale_mul"),
        helper.make_node("Add", ["input_scaled", "input_shift"], [internal], name="input_shift_add"),
    ]
    for node in reversed(nodes):
        graph.node.insert(0, node)
    del graph.input[0]
    graph.input.insert(0, helper.make_tensor_value_info(old.name, TensorProto.UINT8, dims))
    onnx.checker.check_model(model, full_check=True)
    return model
