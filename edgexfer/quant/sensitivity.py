"""Layer sensitivity to INT8 quantization, for the accuracy guard's float fallback.

For each node whose inputs the QDQ model quantizes, the local quantization error is measured as a
signal-to-quantization-noise ratio (dB): activations with ONNX Runtime's ``qdq_loss_debug`` (the
tensor before vs after its Q/DQ pair, on real calibration images), weights by fake-quantizing the
float weight with the QDQ model's own per-channel scales. The two noises add (in linear power), and
nodes are ranked lowest SQNR first: the ones to keep in float first.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

from edgexfer.quant.rules import Graph, attr


def _sqnr_db(reference: np.ndarray, other: np.ndarray) -> float:
    noise = float(np.linalg.norm(reference - other))
    signal = float(np.linalg.norm(reference))
    if noise <= 1e-12:
        return 120.0
    return 20.0 * math.log10(max(signal, 1e-12) / noise)


def weight_sqnr(qdq_model: Any, float_model: Any) -> Dict[str, float]:
    """SQNR (dB) of each Conv/Gemm/MatMul weight under the QDQ model's scales, by node name.

    The float weight is found through the node of the same name in ``float_model`` (the model that
    was quantized), since the quantizer renames the weights it stores as integers.
    """
    from onnx import numpy_helper

    initializers = {i.name: i for i in float_model.graph.initializer}
    float_weights = {
        node.name: numpy_helper.to_array(initializers[node.input[1]])
        for node in float_model.graph.node
        if len(node.input) > 1 and node.input[1] in initializers
    }
    graph = Graph(qdq_model)
    result: Dict[str, float] = {}
    for node in graph.nodes:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        dq = graph.producer.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        weight = float_weights.get(node.name)
        scale = graph.const(dq.input[1])
        if weight is None or scale is None:
            continue
        zero = graph.const(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else np.zeros((), np.int8)
        info = np.iinfo(zero.dtype)
        shape = [1] * weight.ndim
        if scale.size > 1:
            shape[attr(dq, "axis", 1) % weight.ndim] = scale.size
        scale_b = scale.reshape(shape).astype(np.float64)
        zero_b = zero.reshape(shape if zero.size > 1 else [1] * weight.ndim).astype(np.float64)
        quantized = np.clip(np.round(weight / scale_b) + zero_b, info.min, info.max)
        result[node.name] = _sqnr_db(weight.astype(np.float64), (quantized - zero_b) * scale_b)
    return result


def activation_sqnr(
    float_path: "os.PathLike[str] | str",
    qdq_path: "os.PathLike[str] | str",
    inputs: np.ndarray,
    batch_size: int = 8,
) -> Dict[str, float]:
    """SQNR (dB) of each quantized activation tensor (before vs after Q/DQ), by float tensor name."""
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    from edgexfer.calibration import make_reader

    with tempfile.TemporaryDirectory(prefix=".sensitivity-", dir=os.fspath(Path(qdq_path).parent)) as work:
        aug_float, aug_qdq = Path(work) / "float.onnx", Path(work) / "qdq.onnx"
        modify_model_output_intermediate_tensors(os.fspath(float_path), os.fspath(aug_float))
        modify_model_output_intermediate_tensors(os.fspath(qdq_path), os.fspath(aug_qdq))
        float_acts = collect_activations(os.fspath(aug_float), _Iterable(make_reader(inputs, batch_size)))
        qdq_acts = collect_activations(os.fspath(aug_qdq), _Iterable(make_reader(inputs, batch_size)))
    matching = create_activation_matching(qdq_acts, float_acts)
    errors = compute_activation_error(matching)
    return {name: float(err["qdq_err"]) for name, err in errors.items()}


class _Iterable:
    """Adapts a CalibrationDataReader to plain iteration (older ORT readers are not iterable)."""

    def __init__(self, reader: Any):
        self.reader = reader

    def __iter__(self) -> Any:
        while True:
            item = self.reader.get_next()
            if item is None:
                return
            yield item


def rank_nodes(
    float_model: Any, act_sqnr: Dict[str, float], w_sqnr: Dict[str, float]
) -> List[Tuple[str, float]]:
    """Nodes of the float model with a quantized input, as ``(name, combined SQNR dB)``, worst first."""
    initializers = {i.name for i in float_model.graph.initializer}
    ranked = []
    for node in float_model.graph.node:
        acts = [act_sqnr[name] for name in node.input if name in act_sqnr and name not in initializers]
        weight = w_sqnr.get(node.name)
        if not acts and weight is None:
            continue
        noise = sum(10.0 ** (-db / 10.0) for db in acts + ([weight] if weight is not None else []))
        ranked.append((node.name, -10.0 * math.log10(max(noise, 1e-12))))
    ranked.sort(key=lambda item: item[1])
    return ranked


def fallback_steps(limit: int) -> List[int]:
    """How many of the worst layers to keep in float at each guard step: 1, 2, 3, 4, 6, 8, 12, 16..."""
    steps: List[int] = []
    count = 1
    while count <= limit:
        steps.append(count)
        count = count + 1 if count < 4 else int(count * 1.5)
    if limit > 0 and (not steps or steps[-1] != limit):
        steps.append(limit)
    return steps


def rank_layers(
    prepared: "os.PathLike[str] | str",
    work_dir: "os.PathLike[str] | str",
    qdq_model: Any,
    inputs: np.ndarray,
) -> List[Tuple[str, float]]:
    """Quantized layers of ``qdq_model`` (made from ``prepared``), worst combined SQNR first."""
    import onnx

    float_model = onnx.load(os.fspath(prepared))
    with tempfile.TemporaryDirectory(prefix=".rank-", dir=os.fspath(work_dir)) as work:
        qdq_path = Path(work) / "qdq.onnx"
        onnx.save(qdq_model, os.fspath(qdq_path))
        act = activation_sqnr(prepared, qdq_path, inputs)
    return rank_nodes(float_model, act, weight_sqnr(qdq_model, float_model))
