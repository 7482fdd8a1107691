"""ONNX operators in torch, for :mod:`edgexfer.quant.qat_graph`: the ops torchvision/timm CNNs export to
(after ONNX Runtime's pre-processing), each ``op(inputs, attributes) -> output``, with ONNX's semantics
(https://onnx.ai/onnx/operators/). Constant shape arithmetic is folded by the exporter, so shapes come
from initializers. torch is imported on first use of this module (workstation side only)."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence

import torch
import torch.nn.functional as F


def attributes(node: Any) -> Dict[str, Any]:
    """The node's attributes as Python values."""
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _pads(pads: Sequence[int]) -> List[int]:
    """ONNX pads (begin..., end...) as F.pad's (last dim first, begin/end pairs)."""
    half = len(pads) // 2
    out: List[int] = []
    for dim in reversed(range(half)):
        out += [pads[dim], pads[dim + half]]
    return out


def _no_auto_pad(attrs: Dict[str, Any]) -> None:
    auto = attrs.get("auto_pad", b"NOTSET")
    if auto not in (b"NOTSET", "NOTSET"):
        from edgexfer.errors import ModelError

        raise ModelError(f"QAT runs explicit pads only, not auto_pad={auto!r}")


def conv(x: List[Any], a: Dict[str, Any]) -> Any:
    _no_auto_pad(a)
    dims = x[1].dim() - 2
    inputs = F.pad(x[0], _pads(a.get("pads", [0] * 2 * dims)))
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]
    return fn(inputs, x[1], x[2] if len(x) > 2 else None, a.get("strides", [1] * dims), 0,
              a.get("dilations", [1] * dims), a.get("group", 1))


def gemm(x: List[Any], a: Dict[str, Any]) -> Any:
    left = x[0].t() if a.get("transA", 0) else x[0]
    right = x[1].t() if a.get("transB", 0) else x[1]
    out = a.get("alpha", 1.0) * (left @ right)
    if len(x) > 2 and x[2] is not None:
        out = out + a.get("beta", 1.0) * x[2]
    return out


def max_pool(x: List[Any], a: Dict[str, Any]) -> Any:
    _no_auto_pad(a)
    kernel = a["kernel_shape"]
    padded = F.pad(x[0], _pads(a.get("pads", [0] * 2 * len(kernel))), value=float("-inf"))
    fn = F.max_pool2d if len(kernel) == 2 else F.max_pool1d
    return fn(padded, kernel, a.get("strides", [1] * len(kernel)), 0, a.get("dilations", [1] * len(kernel)),
              bool(a.get("ceil_mode", 0)))


def average_pool(x: List[Any], a: Dict[str, Any]) -> Any:
    _no_auto_pad(a)
    kernel = a["kernel_shape"]
    pads = a.get("pads", [0] * 2 * len(kernel))
    half = len(pads) // 2
    strides = a.get("strides", [1] * len(kernel))
    if pads[:half] == pads[half:]:
        return F.avg_pool2d(x[0], kernel, strides, pads[:half], bool(a.get("ceil_mode", 0)),
                            bool(a.get("count_include_pad", 0)))
    if not a.get("count_include_pad", 0):
        from edgexfer.errors import ModelError

        raise ModelError("QAT runs AveragePool with asymmetric pads only with count_include_pad=1")
    return F.avg_pool2d(F.pad(x[0], _pads(pads)), kernel, strides, 0, bool(a.get("ceil_mode", 0)))


def reshape(x: List[Any], a: Dict[str, Any]) -> Any:
    shape = [int(s) for s in x[1].tolist()]
    if not a.get("allowzero", 0):
        shape = [x[0].shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x[0].reshape(shape)


def _axes(x: List[Any], a: Dict[str, Any]) -> Any:
    if len(x) > 1 and x[1] is not None:
        return [int(v) for v in x[1].tolist()]
    return a.get("axes")


def reduce_mean(x: List[Any], a: Dict[str, Any]) -> Any:
    axes = _axes(x, a)
    keep = bool(a.get("keepdims", 1))
    if axes is None:
        return x[0].mean().reshape([1] * x[0].dim() if keep else [])
    return x[0].mean(dim=axes, keepdim=keep)


def unsqueeze(x: List[Any], a: Dict[str, Any]) -> Any:
    out = x[0]
    for axis in sorted(_axes(x, a)):
        out = out.unsqueeze(axis)
    return out


def squeeze(x: List[Any], a: Dict[str, Any]) -> Any:
    axes = _axes(x, a)
    return x[0].squeeze() if axes is None else x[0].squeeze(tuple(axes))


def clip(x: List[Any], a: Dict[str, Any]) -> Any:
    low = x[1] if len(x) > 1 and x[1] is not None else a.get("min")
    high = x[2] if len(x) > 2 and x[2] is not None else a.get("max")
    return torch.clamp(x[0], None if low is None else float(low), None if high is None else float(high))


def batch_norm(x: List[Any], a: Dict[str, Any]) -> Any:
    # frozen: the running statistics of the float model (eval semantics, what the deployed graph computes)
    return F.batch_norm(x[0], x[3], x[4], x[1], x[2], False, 0.0, a.get("epsilon", 1e-5))


def constant(x: List[Any], a: Dict[str, Any]) -> Any:
    from onnx import numpy_helper

    return torch.from_numpy(numpy_helper.to_array(a["value"]).copy())


def flatten(x: List[Any], a: Dict[str, Any]) -> Any:
    axis = a.get("axis", 1) % max(x[0].dim(), 1)
    return x[0].reshape(int(torch.tensor(x[0].shape[:axis]).prod()), -1)


OPS: Dict[str, Callable[[List[Any], Dict[str, Any]], Any]] = {
    "Conv": conv,
    "Gemm": gemm,
    "MatMul": lambda x, a: torch.matmul(x[0], x[1]),
    "Add": lambda x, a: x[0] + x[1],
    "Sub": lambda x, a: x[0] - x[1],
    "Mul": lambda x, a: x[0] * x[1],
    "Div": lambda x, a: x[0] / x[1],
    "Relu": lambda x, a: F.relu(x[0]),
    "LeakyRelu": lambda x, a: F.leaky_relu(x[0], a.get("alpha", 0.01)),
    "Sigmoid": lambda x, a: torch.sigmoid(x[0]),
    "Tanh": lambda x, a: torch.tanh(x[0]),
    "Erf": lambda x, a: torch.erf(x[0]),
    "Sqrt": lambda x, a: torch.sqrt(x[0]),
    "HardSigmoid": lambda x, a: torch.clamp(a.get("alpha", 0.2) * x[0] + a.get("beta", 0.5), 0.0, 1.0),
    "HardSwish": lambda x, a: F.hardswish(x[0]),
    "Clip": clip,
    "GlobalAveragePool": lambda x, a: x[0].mean(dim=tuple(range(2, x[0].dim())), keepdim=True),
    "AveragePool": average_pool,
    "MaxPool": max_pool,
    "Flatten": flatten,
    "Reshape": reshape,
    "Transpose": lambda x, a: x[0].permute(*a["perm"]) if "perm" in a else x[0].permute(*reversed(range(x[0].dim()))),
    "Concat": lambda x, a: torch.cat(x, dim=a["axis"]),
    "Softmax": lambda x, a: torch.softmax(x[0], dim=a.get("axis", -1)),
    "ReduceMean": reduce_mean,
    "Unsqueeze": unsqueeze,
    "Squeeze": squeeze,
    "BatchNormalization": batch_norm,
    "Identity": lambda x, a: x[0],
    "Dropout": lambda x, a: x[0],
    "Constant": constant,
}
