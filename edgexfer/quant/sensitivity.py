"""Layer sensitivity to INT8 quantization, for the accuracy guard's float fallback.

Both halves come from ONNX Runtime's ``qdq_loss_debug`` and its one SQNR convention
(``compute_signal_to_quantization_noice_ratio``, dB): the float and the QDQ model are each run once on
real calibration images with every intermediate tensor saved; an activation's error is the tensor
before vs after its Q/DQ pair (``compute_activation_error``), a weight's error is the float weight vs
its DequantizeLinear output as ONNX Runtime computed it (``compute_weight_error``). Taking the weight
from the run covers both ways a recipe stores weights (int8 initializers, or float behind a Q/DQ
pair), where ``create_weight_matching`` only knows the first. Per node the noises add (in linear
power), and nodes are ranked lowest SQNR first: the ones to keep in float first.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from edgexfer.quant.calibration import make_reader
from edgexfer.quant.graph import WEIGHTED_OPS, Graph


def layer_sqnr(
    float_path: "os.PathLike[str] | str",
    qdq_path: "os.PathLike[str] | str",
    inputs: np.ndarray,
    batch_size: int = 8,
) -> Tuple[Dict[str, float], Dict[str, float]]:
    """``(activation SQNR by float tensor name, weight SQNR by weighted node name)``, in dB."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        compute_weight_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    with tempfile.TemporaryDirectory(prefix=".sensitivity-", dir=os.fspath(Path(qdq_path).parent)) as work:
        aug_float, aug_qdq = Path(work) / "float.onnx", Path(work) / "qdq.onnx"
        modify_model_output_intermediate_tensors(os.fspath(float_path), os.fspath(aug_float))
        modify_model_output_intermediate_tensors(os.fspath(qdq_path), os.fspath(aug_qdq))
        float_acts = collect_activations(os.fspath(aug_float), _Iterable(make_reader(inputs, batch_size)))
        qdq_acts = collect_activations(os.fspath(aug_qdq), _Iterable(make_reader(inputs, batch_size)))
    errors = compute_activation_error(create_activation_matching(qdq_acts, float_acts))
    activations = {name: float(err["qdq_err"]) for name, err in errors.items()}
    matched = _weight_matching(onnx.load(os.fspath(qdq_path)), onnx.load(os.fspath(float_path)), qdq_acts)
    return activations, {name: float(db) for name, db in compute_weight_error(matched).items()}


def _weight_matching(
    qdq_model: Any, float_model: Any, qdq_acts: Dict[str, Sequence[np.ndarray]]
) -> Dict[str, Dict[str, np.ndarray]]:
    """``{node: {"float": weight, "dequantized": its DQ output}}`` for each quantized weighted node.

    The float weight is found through the node of the same name in ``float_model`` (the quantizer keeps
    node names but renames the weights it stores as integers).
    """
    from onnx import numpy_helper

    initializers = {i.name: i for i in float_model.graph.initializer}
    float_weights = {
        node.name: initializers[node.input[1]]
        for node in float_model.graph.node
        if node.op_type in WEIGHTED_OPS and len(node.input) > 1 and node.input[1] in initializers
    }
    graph = Graph(qdq_model)
    matched: Dict[str, Dict[str, np.ndarray]] = {}
    for node in graph.nodes:
        if node.name not in float_weights or len(node.input) < 2:
            continue
        dq = graph.dequantized_by(node.input[1])
        if dq is None or not graph.is_weight_path(dq.input[0]) or dq.output[0] not in qdq_acts:
            continue
        matched[node.name] = {
            "float": numpy_helper.to_array(float_weights[node.name]),
            "dequantized": np.asarray(qdq_acts[dq.output[0]][0]),  # a constant: every batch has the same
        }
    return matched


class _Iterable:
    """Adapts a CalibrationDataReader to plain iteration (what ``collect_activations`` loops over)."""

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
    """How many of the worst layers to keep in float at each guard step: 1, 2, 3, 4, 6, 9, 13..."""
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

    with tempfile.TemporaryDirectory(prefix=".rank-", dir=os.fspath(work_dir)) as work:
        qdq_path = Path(work) / "qdq.onnx"
        onnx.save(qdq_model, os.fspath(qdq_path))
        activations, weights = layer_sqnr(prepared, qdq_path, inputs)
    return rank_nodes(onnx.load(os.fspath(prepared)), activations, weights)
