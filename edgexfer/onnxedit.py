"""Edits of ONNX graphs that several stages need (the uint8-pixel and raw-frame input variants).

Kept below the stages so the export stage, the bench preparation and later the deploy path share one
implementation instead of importing each other.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

PREFIX = "uint8_input"


def with_uint8_input(float_model: Any, preprocess: Any, layout: str) -> Any:
    """A copy of the float model whose ``input`` is uint8 pixels (NCHW or NHWC) with normalisation inside.

    A small preprocessing model is merged in front with ``onnx.compose.merge_models``, its names
    prefixed so they can never collide with the model's (a QDQ model already has ``input_scale``):
    Cast to float **first** (TensorRT's parser cannot Transpose uint8, and TensorRT 8.5 cannot Cast
    from anything but a network input), then Transpose for NHWC, then Mul by ``1 / (255 std)`` and
    Add ``-mean / std``: one scale and shift per channel that TensorRT fuses and ONNX Runtime's
    quantizer calibrates like any activation, so the variant stays quantizable. Metadata, model-level
    fields and the input's name and batch dimension are kept.
    """
    source = float_model.graph.input[0]
    dims = [d.dim_param or d.dim_value for d in source.type.tensor_type.shape.dim]
    if layout == "NHWC":
        dims = [dims[0], dims[2], dims[3], dims[1]]
    pre = _preprocessing_model(float_model, preprocess, layout, dims, source.name)
    return _merge_in_front(float_model, pre, dims)


def with_frame_input(float_model: Any, preprocess: Any, spec: Any) -> Any:
    """A copy of the float (or QDQ) model whose ``input`` is the camera's raw uint8 frame, NHWC
    ``(batch, H, W, 3)`` in ``spec``'s channel order, with resize, centre crop, channel swap and
    normalisation inside (:func:`edgexfer.framegraph.frame_preprocessing_model`: Cast first, then
    Pillow's resampling weights). Merged like :func:`with_uint8_input`, names prefixed."""
    from edgexfer.framegraph import frame_preprocessing_model

    source = float_model.graph.input[0]
    batch = source.type.tensor_type.shape.dim[0]
    batch = batch.dim_param or batch.dim_value or "batch"
    opsets = [o for o in float_model.opset_import if o.domain in ("", "ai.onnx")]
    pre = frame_preprocessing_model(preprocess, spec, source.name, opsets, float_model.ir_version, batch)
    return _merge_in_front(float_model, pre, [batch, spec.height, spec.width, 3])


def _merge_in_front(float_model: Any, pre: Any, dims: list) -> Any:
    """``pre`` (uint8 input named like the model's, float ``normalized`` out) merged in front of the model;
    the model's metadata, model-level fields, input name and opsets kept; checked."""
    import onnx
    from onnx import TensorProto, helper

    source = float_model.graph.input[0]
    prefix = _free_prefix(float_model)
    merged = onnx.compose.merge_models(
        pre,
        float_model,
        io_map=[("normalized", source.name)],
        prefix1=prefix,
        name=float_model.graph.name,
        doc_string=float_model.graph.doc_string,
    )
    # the float model's input name is free now (the io_map rewired its consumers): give it back
    for node in merged.graph.node:
        for i, name in enumerate(node.input):
            if name == prefix + source.name:
                node.input[i] = source.name
    merged.graph.input[0].CopyFrom(helper.make_tensor_value_info(source.name, TensorProto.UINT8, dims))
    for name in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(merged, name, getattr(float_model, name))
    del merged.opset_import[:]  # merge_models lists the shared default domain twice
    merged.opset_import.extend(float_model.opset_import)
    onnx.checker.check_model(merged, full_check=True)
    return merged


def _preprocessing_model(float_model: Any, preprocess: Any, layout: str, dims: list, input_name: str) -> Any:
    """uint8 ``input_name`` -> Cast -> (Transpose) -> Mul -> Add -> float ``normalized`` (NCHW)."""
    from onnx import TensorProto, helper, numpy_helper

    mean = np.asarray(preprocess.mean, np.float32)
    std = np.asarray(preprocess.std, np.float32)
    scale = (1.0 / (255.0 * std)).reshape(1, 3, 1, 1).astype(np.float32)
    shift = (-mean / std).reshape(1, 3, 1, 1).astype(np.float32)
    nodes = [helper.make_node("Cast", [input_name], ["float"], name="cast", to=TensorProto.FLOAT)]
    nchw = "float"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", ["float"], ["nchw"], name="to_nchw", perm=[0, 3, 1, 2]))
        nchw = "nchw"
    nodes += [
        helper.make_node("Mul", [nchw, "scale"], ["scaled"], name="scale_mul"),
        helper.make_node("Add", ["scaled", "shift"], ["normalized"], name="shift_add"),
    ]
    graph = helper.make_graph(
        nodes,
        "uint8_preprocessing",
        [helper.make_tensor_value_info(input_name, TensorProto.UINT8, dims)],
        [helper.make_tensor_value_info("normalized", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(scale, "scale"), numpy_helper.from_array(shift, "shift")],
    )
    opsets = [o for o in float_model.opset_import if o.domain in ("", "ai.onnx")]
    return helper.make_model(graph, opset_imports=opsets, ir_version=float_model.ir_version)


def _names(model: Any) -> Iterator[str]:
    """Every name in the model's main graph: nodes, tensors, initializers, value infos, inputs, outputs."""
    graph = model.graph
    for node in graph.node:
        yield node.name
        yield from node.input
        yield from node.output
    for group in (graph.initializer, graph.value_info, graph.input, graph.output):
        yield from (item.name for item in group)
    yield from (sparse.values.name for sparse in graph.sparse_initializer)


def _free_prefix(model: Any) -> str:
    """``uint8_input/`` (or ``uint8_input_<n>/``): a prefix that begins none of the model's names."""
    names = set(_names(model))
    candidates = (f"{PREFIX}/" if n == 0 else f"{PREFIX}_{n}/" for n in range(len(names) + 1))
    return next(c for c in candidates if not any(name.startswith(c) for name in names))
