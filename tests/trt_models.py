"""Small ONNX models for the TensorRT unit tests (float, Q/DQ, uint8-input, LayerNorm, two outputs)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import onnx_factory as factory


def uint8_nhwc(float_path: Path, out_path: Path, cast_first: bool) -> Path:
    """The float model behind a uint8 NHWC input: Cast then Transpose (what TensorRT can parse), or the
    old order, Transpose on the uint8 tensor then Cast."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(float_path))
    graph = model.graph
    for node in graph.node:
        node.input[:] = ["input_normalized" if name == "input" else name for name in node.input]
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.full((1, 3, 1, 1), 1 / 58.0, np.float32), "scale"),
            numpy_helper.from_array(np.full((1, 3, 1, 1), -2.0, np.float32), "shift"),
        ]
    )
    cast = helper.make_node("Cast", ["input" if cast_first else "nchw"], ["as_float"], to=TensorProto.FLOAT)
    transpose = helper.make_node(
        "Transpose", ["as_float_nhwc" if cast_first else "input"], ["as_float" if cast_first else "nchw"],
        perm=[0, 3, 1, 2],
    )
    if cast_first:
        cast.output[0] = "as_float_nhwc"
    nodes = [cast, transpose] if cast_first else [transpose, cast]
    nodes += [
        helper.make_node("Mul", ["as_float", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "shift"], ["input_normalized"]),
    ]
    for node in reversed(nodes):
        graph.node.insert(0, node)
    size = graph.input[0].type.tensor_type.shape.dim[2].dim_value
    del graph.input[0]
    graph.input.insert(0, helper.make_tensor_value_info("input", TensorProto.UINT8, ["batch", size, size, 3]))
    onnx.checker.check_model(model)
    onnx.save(model, str(out_path))
    return out_path


def two_outputs(float_path: Path, out_path: Path, second: str = "features") -> Path:
    """The float model with a second graph output (the logits' ReLU), like a detector head would add."""
    import onnx
    from onnx import helper

    model = onnx.load(str(float_path))
    model.graph.node.append(helper.make_node("Relu", ["logits"], [second]))
    model.graph.output.append(helper.make_tensor_value_info(second, onnx.TensorProto.FLOAT, ["batch", 3]))
    onnx.save(model, str(out_path))
    return out_path


def layer_norm(path: Path) -> Path:
    """A net with nn.LayerNorm exported at opset 17 (torch then writes LayerNormalization)."""
    import torch.nn as nn

    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.LayerNorm(4 * 32 * 32), nn.Linear(4096, 3))
    factory.export_float(net.eval(), path)
    return path


def make_models(root: Path) -> Dict[str, Path]:
    """Every model the TensorRT unit tests build, written under ``root``."""
    net = factory.tiny_net()
    float_path = factory.export_float(net, root / "model.onnx")
    return {
        "net": net,
        "float": float_path,
        "int8_trt": factory.quantize_cpu(float_path, root / "model_int8_tensorrt.onnx", symmetric=True),
        "int8_cpu": factory.quantize_cpu(float_path, root / "model_int8_cpu.onnx"),
        "uint8_cast_first": uint8_nhwc(float_path, root / "uint8_cast_first.onnx", cast_first=True),
        "uint8_transpose_first": uint8_nhwc(float_path, root / "uint8_transpose_first.onnx", cast_first=False),
        "two_outputs": two_outputs(float_path, root / "two_outputs.onnx"),
        "two_outputs_unnamed": _renamed_logits(two_outputs(float_path, root / "tmp.onnx"), root / "unnamed.onnx"),
        "layer_norm": layer_norm(root / "layer_norm.onnx"),
    }


def _renamed_logits(path: Path, out_path: Path) -> Path:
    import onnx

    model = onnx.load(str(path))
    for node in model.graph.node:
        node.output[:] = ["scores" if o == "logits" else o for o in node.output]
        node.input[:] = ["scores" if i == "logits" else i for i in node.input]
    model.graph.output[0].name = "scores"
    onnx.save(model, str(out_path))
    return out_path
