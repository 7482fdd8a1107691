"""Independent audits of INT8 QDQ models, written from what the runtimes require, not from edgexfer.quant.

The product checks its models with :mod:`edgexfer.quant.rules`; testing the product only with that
checker would test the authors' understanding against itself. These audits walk the ONNX graph with
plain ``onnx`` and assert each requirement directly, as documented elsewhere:

TensorRT (../shared/trt-review.md section 2: onnx-tensorrt's parser and operators.md, NVIDIA ModelOpt's
ORT options ``trt_guided_options``):
- every Q/DQ has all three inputs (the 8.5 parser "requires 3 inputs") and an int8 zero point equal to
  0 (UINT8 is rejected, the zero point must be 0); scales are positive;
- every DequantizeLinear dequantizes int8: DQ takes INT8 only in 8.5/8.6, so no int32 bias DQ;
- Conv/Gemm weights are quantized per output channel (scale length = output channels, axis 0 for Conv
  and for Gemm with transB=1); activations per tensor (one scale);
- no Q/DQ pair shared between consumers ("In TRT, QDQ pair can't be shared between nodes");
- a residual Add has Q/DQ on its identity input and takes its other input straight from a Conv, so the
  conv is fused with the add (ModelOpt's ``build_non_residual_input_map``);
- opset <= 17 for TensorRT 8.5/8.6.

x86 CPU (ONNX Runtime / OpenVINO with VNNI): activations uint8, weights int8 per output channel.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np

WEIGHTED = ("Conv", "Gemm")


class _Index:
    def __init__(self, model: Any):
        from onnx import numpy_helper

        self.nodes = list(model.graph.node)
        self.consts: Dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        for node in self.nodes:
            if node.op_type == "Constant":
                self.consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        self.producer = {out: node for node in self.nodes for out in node.output}
        self.consumers: Dict[str, List[Any]] = {}
        for node in self.nodes:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def made_by(self, name: str) -> Optional[str]:
        node = self.producer.get(name)
        return node.op_type if node is not None else None


def _axis(node: Any) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 1)


def _weight(index: _Index, node: Any, problems: List[str]) -> Optional[tuple]:
    """(float or int8 weight value, its DequantizeLinear) of a Conv/Gemm, or None with a problem noted."""
    dq = index.producer.get(node.input[1])
    if dq is None or dq.op_type != "DequantizeLinear":
        problems.append(f"{node.name}: weight not dequantized")
        return None
    value = index.consts.get(dq.input[0])
    if value is None and index.made_by(dq.input[0]) == "QuantizeLinear":
        value = index.consts.get(index.producer[dq.input[0]].input[0])
    if value is None:
        problems.append(f"{node.name}: weight is not a constant")
        return None
    return value, dq


def _per_channel(index: _Index, node: Any, problems: List[str]) -> None:
    found = _weight(index, node, problems)
    if found is None:
        return
    weight, dq = found
    transposed = node.op_type == "Gemm" and any(a.name == "transB" and a.i == 1 for a in node.attribute)
    channel_axis = 0 if node.op_type == "Conv" or transposed else 1
    scale = index.consts[dq.input[1]]
    if scale.size != weight.shape[channel_axis] or _axis(dq) != channel_axis:
        problems.append(f"{node.name}: weight scale {scale.shape} on axis {_axis(dq)}, not per output channel")
    zero = index.consts.get(dq.input[2]) if len(dq.input) > 2 else None
    if zero is None or zero.dtype != np.int8:
        problems.append(f"{node.name}: weight is not int8")


def tensorrt_problems(model: Any, excluded: Sequence[str] = ()) -> List[str]:
    """Every way ``model`` breaks TensorRT's explicit-quantization requirements (see the module doc);
    the ``excluded`` nodes were kept in float on purpose."""
    index = _Index(model)
    problems: List[str] = []
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset > 17:
        problems.append(f"opset {opset} > 17")
    for node in index.nodes:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if len(node.input) != 3 or not node.input[2]:
            problems.append(f"{node.name}: no zero point input")
            continue
        zero, scale = index.consts.get(node.input[2]), index.consts.get(node.input[1])
        if zero is None or zero.dtype != np.int8 or np.any(zero != 0):
            problems.append(f"{node.name}: zero point {None if zero is None else (zero.dtype, zero.ravel()[:3])}")
        if scale is None or not np.all(scale > 0):
            problems.append(f"{node.name}: scale not positive")
        if node.op_type == "DequantizeLinear":
            value = index.consts.get(node.input[0])
            if value is not None and value.dtype != np.int8:
                problems.append(f"{node.name}: dequantizes {value.dtype}")
            if len(index.consumers.get(node.output[0], [])) != 1:
                problems.append(f"{node.name}: {len(index.consumers.get(node.output[0], []))} consumers")
            weight_path = value is not None or (
                index.made_by(node.input[0]) == "QuantizeLinear"
                and index.producer[node.input[0]].input[0] in index.consts
            )
            if not weight_path and scale is not None and scale.size != 1:
                problems.append(f"{node.name}: activation quantized per channel")
    for node in index.nodes:
        if node.op_type in WEIGHTED and node.name not in excluded:
            if index.made_by(node.input[0]) != "DequantizeLinear":
                problems.append(f"{node.name}: input not quantized")
            _per_channel(index, node, problems)
        if node.op_type == "Add" and not any(name in index.consts for name in node.input):
            sources = sorted(str(index.made_by(name)) for name in node.input)
            if sources != ["Conv", "DequantizeLinear"]:
                problems.append(f"residual {node.name}: inputs from {sources}, expected one Conv and one Q/DQ")
    return problems


def cpu_problems(model: Any, excluded: Sequence[str] = ()) -> List[str]:
    """Every way ``model`` breaks the x86 CPU requirements: uint8 activations, int8 per-channel weights
    (the ``excluded`` nodes were kept in float on purpose)."""
    index = _Index(model)
    problems: List[str] = []
    for node in index.nodes:
        if node.op_type == "QuantizeLinear" and node.input[0] not in index.consts:
            zero = index.consts.get(node.input[2]) if len(node.input) > 2 else None
            if zero is None or zero.dtype != np.uint8:
                problems.append(f"{node.name}: activation zero point {None if zero is None else zero.dtype}")
        if node.op_type in WEIGHTED and node.name not in excluded:
            if index.made_by(node.input[0]) != "DequantizeLinear":
                problems.append(f"{node.name}: input not quantized")
            _per_channel(index, node, problems)
    return problems
