"""The preprocessing graph of a raw-frame model: uint8 NHWC frame -> normalised NCHW crop, in ONNX.

uint8 ``(N, H, W, 3)`` -> **Cast to float first** -> Slice of the rows and columns the crop uses ->
vertical resampling (Gather of each output row's source rows, MatMul by their weights) -> Round/Clip to
grey levels -> Transpose to NCHW -> horizontal resampling (Gather of the source columns, Mul by their
weights, ReduceSum) -> Round/Clip -> channel swap for BGR (Gather) -> Mul ``1/(255 std)`` -> Add
``-mean/std``.

Why this shape:

- **Cast first.** TensorRT takes a uint8 network input only into a Cast to FLOAT/HALF (or Identity):
  ``DataType.UINT8`` "Use the IdentityLayer to convert uint8 network-level inputs to {float32, float16}
  prior to use with other TensorRT layers" (python/docstrings/infer/pyFoundationalTypesDoc.h, 8.5-11.x),
  Cast from UINT8 only to FLOAT/HALF (onnx-tensorrt builtin_op_importers.cpp, release/8.5-GA), and
  Transpose, Slice, Gather and Resize do not list UINT8 (onnx-tensorrt docs/operators.md, 8.5-10.x).
  tests/fake_trt_builder.py enforces the same.
- **Not ONNX Resize.** The host resizes with PIL (:meth:`Preprocess.resize_crop`), whose bilinear and
  bicubic filters are stretched by the scale when downscaling (antialiasing): a 1080p frame to 256
  averages ~9 source pixels per output pixel in each direction. ONNX Resize antialiases only from opset
  18 (``antialias=1``), above the opset 17 TensorRT 8.5/8.6 parse, and TensorRT 10 asserts
  ``antialias == 0`` ("Antialiasing is not supported currently", NVIDIA/TensorRT#3560); without it a
  bilinear Resize samples 2x2 source pixels and aliases. So the graph resamples with PIL's own filter
  weights (:func:`pil_coefficients`, a port of Pillow's ``precompute_coeffs``, libImaging/Resample.c),
  computed at export for the fixed frame size: a separable convolution as Gather + MatMul / Mul +
  ReduceSum, on ONNX ops every runtime here runs (TensorRT: Gather, Slice, MatMul, ReduceSum, Round, Clip
  on float). Rounding to grey levels after each pass, as Pillow's 8-bit path does, keeps it within a grey
  level of the host (Pillow runs the horizontal pass first and uses 22-bit fixed-point weights; ONNX
  Round is half-to-even).
- Only the rows the crop needs are resampled, and the crop itself is the resampling's box (as
  ``resize(box=...)`` on the host): no full-size resized image is ever made.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Tuple

import numpy as np

PIL_PRECISION_BITS = 32 - 8 - 2  # libImaging/Resample.c: fixed-point bits of the 8-bit path


def _bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _bicubic(x: np.ndarray) -> np.ndarray:
    a = -0.5  # Pillow's bicubic_filter uses a = -0.5
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


FILTERS: Dict[str, Tuple[Callable[[np.ndarray], np.ndarray], float]] = {
    "bilinear": (_bilinear, 1.0),
    "bicubic": (_bicubic, 2.0),
}


def pil_coefficients(in_size: int, in0: float, in1: float, out_size: int, interpolation: str
                     ) -> Tuple[np.ndarray, np.ndarray]:
    """(source indices, weights), each ``(out_size, taps)``: output pixel ``i`` is
    ``sum_t weights[i, t] * source[indices[i, t]]``, as Pillow resamples the box ``[in0, in1)`` of a line
    of ``in_size`` pixels to ``out_size`` (padding taps have weight 0 and a valid index).

    ``nearest`` follows Pillow's affine nearest path (libImaging/Geometry.c ``affine_transform``): the source
    coordinate starts at ``in0 + scale / 2`` and steps by ``scale`` in double precision, truncated.
    """
    scale = (in1 - in0) / out_size
    if interpolation == "nearest":
        steps = np.cumsum(np.concatenate([[in0 + scale * 0.5], np.full(out_size - 1, scale)]))  # sequential adds
        index = np.clip(np.where(steps < 0, -1, steps.astype(np.int64)), 0, in_size - 1)
        return index.reshape(out_size, 1).astype(np.int64), np.ones((out_size, 1), np.float64)
    kernel, support = FILTERS[interpolation]
    filterscale = max(scale, 1.0)
    support = support * filterscale
    taps = int(math.ceil(support)) * 2 + 1
    indices = np.zeros((out_size, taps), np.int64)
    weights = np.zeros((out_size, taps), np.float64)
    for i in range(out_size):
        center = in0 + (i + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)  # C's (int) truncation, as Pillow
        xmax = min(int(center + support + 0.5), in_size) - xmin
        w = kernel((np.arange(xmax) + xmin - center + 0.5) / filterscale)
        total = w.sum()
        weights[i, :xmax] = w / total if total != 0.0 else w
        indices[i, :xmax] = np.arange(xmax) + xmin
        indices[i, xmax:] = xmin
    return indices, weights


def crop_coefficients(preprocess: Any, height: int, width: int) -> Dict[str, Any]:
    """The horizontal and vertical resampling of ``preprocess``'s resize + centre crop of a frame, as
    :meth:`Preprocess.resize_crop` does it with ``resize(box=crop_box)``; indices relative to the
    rows ``[row_first, row_last)`` and columns ``[col_first, col_last)`` the crop uses."""
    left, top, right, bottom = preprocess.crop_box(width, height)
    size = preprocess.size
    cols, col_w = pil_coefficients(width, left, right, size, preprocess.interpolation)
    rows, row_w = pil_coefficients(height, top, bottom, size, preprocess.interpolation)
    return {"cols": cols - cols.min(), "col_weights": col_w, "col_first": int(cols.min()),
            "col_last": int(cols.max()) + 1, "rows": rows - rows.min(), "row_weights": row_w,
            "row_first": int(rows.min()), "row_last": int(rows.max()) + 1}


def frame_preprocessing_model(preprocess: Any, spec: Any, input_name: str, opsets: List[Any], ir_version: int,
                              batch: Any = "batch") -> Any:
    """uint8 ``input_name`` (batch, H, W, 3) -> float ``normalized`` (batch, 3, size, size): a model to merge
    in front of a float or QDQ classifier (:func:`edgexfer.onnxedit.with_frame_input`).

    The vertical pass runs first, on NHWC, where a gathered row is one contiguous run of pixels and each
    output row is a (1 x taps) @ (taps x W*3) MatMul; the small result is then transposed to NCHW and the
    horizontal pass is a Gather of the last axis with Mul + ReduceSum over the contiguous taps (measured
    on ONNX Runtime: a Mul broadcasting over the 3 interleaved channels of NHWC was ~20x slower).
    """
    from onnx import TensorProto, helper, numpy_helper

    size = preprocess.size
    plan = crop_coefficients(preprocess, spec.height, spec.width)
    inits: List[Any] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def ints(*values: int) -> np.ndarray:
        return np.array(values, np.int64)

    col_taps, row_taps = plan["cols"].shape[1], plan["rows"].shape[1]
    used_cols = plan["col_last"] - plan["col_first"]
    mean = np.asarray(preprocess.mean, np.float32)
    std = np.asarray(preprocess.std, np.float32)
    blends = preprocess.interpolation != "nearest"  # only blending filters leave fractions to round
    node = helper.make_node
    nodes = [
        node("Cast", [input_name], ["frame_f"], name="cast_first", to=TensorProto.FLOAT),
        node("Slice", ["frame_f", const("crop_start", ints(plan["row_first"], plan["col_first"])),
                       const("crop_end", ints(plan["row_last"], plan["col_last"])),
                       const("crop_axes", ints(1, 2))], ["region"], name="crop_region"),
        # vertical: (N, R, C, 3) -> (N, size*taps, C, 3) -> (N, size, taps, C*3) -> (N, size, 1, C*3)
        node("Gather", ["region", const("row_index", plan["rows"].reshape(-1))], ["v_taps"], name="v_gather",
             axis=1),
        node("Reshape", ["v_taps", const("v_shape", ints(0, size, row_taps, used_cols * 3))], ["v_taps4"],
             name="v_reshape"),
        node("MatMul", [const("row_weight", plan["row_weights"].reshape(size, 1, row_taps).astype(np.float32)),
                        "v_taps4"], ["v_sum"], name="v_matmul"),
        node("Reshape", ["v_sum", const("v_back", ints(0, size, used_cols, 3))], ["v_nhwc"], name="v_unflatten"),
    ]
    nodes += [
        node("Transpose", ["v_nhwc"], ["v_nchw"], name="to_nchw", perm=[0, 3, 1, 2]),
        # horizontal: (N, 3, size, C) -> (N, 3, size, size*taps) -> (N, 3, size, size, taps) -> (N, 3, size, size)
        node("Gather", ["v_nchw", const("col_index", plan["cols"].reshape(-1))], ["h_taps"], name="h_gather",
             axis=3),
        node("Reshape", ["h_taps", const("h_shape", ints(0, 3, size, size, col_taps))], ["h_taps5"],
             name="h_reshape"),
        node("Mul", ["h_taps5", const("col_weight", plan["col_weights"].astype(np.float32))], ["h_weighted"],
             name="h_mul"),
        node("ReduceSum", ["h_weighted", const("h_axis", ints(4))], ["h_sum"], name="h_sum", keepdims=0),
    ]
    pixels = _grey_levels(nodes, "h_sum", "pixels", blends, const)
    if spec.channel_order == "bgr":
        nodes.append(node("Gather", [pixels, const("bgr_to_rgb", ints(2, 1, 0))], ["rgb"], name="bgr_to_rgb",
                          axis=1))
        pixels = "rgb"
    nodes += [
        node("Mul", [pixels, const("scale", (1.0 / (255.0 * std)).reshape(1, 3, 1, 1))], ["scaled"],
             name="scale_mul"),
        node("Add", ["scaled", const("shift", (-mean / std).reshape(1, 3, 1, 1))], ["normalized"],
             name="shift_add"),
    ]
    graph = helper.make_graph(
        nodes,
        "frame_preprocessing",
        [helper.make_tensor_value_info(input_name, TensorProto.UINT8, [batch, spec.height, spec.width, 3])],
        [helper.make_tensor_value_info("normalized", TensorProto.FLOAT, [batch, 3, size, size])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=opsets, ir_version=ir_version)


def _grey_levels(nodes: List[Any], source: str, out: str, blends: bool, const: Callable[[str, np.ndarray], str]
                 ) -> str:
    """Round and clip to 0..255 (Pillow stores each pass as 8-bit), where the filter blends pixels."""
    from onnx import helper

    if not blends:
        return source
    nodes += [
        helper.make_node("Round", [source], [f"{out}_round"], name=f"{out}_round"),
        helper.make_node("Clip", [f"{out}_round", const(f"{out}_lo", np.array(0.0, np.float32)),
                                  const(f"{out}_hi", np.array(255.0, np.float32))], [out], name=f"{out}_clip"),
    ]
    return out


def host_reference(frame: np.ndarray, preprocess: Any, channel_order: str) -> np.ndarray:
    """What the host makes of one frame (``H x W x 3`` uint8 in ``channel_order``): Pillow's resize + crop,
    normalised, CHW float32; the reference the graph is checked against."""
    from PIL import Image

    rgb = frame[:, :, ::-1] if channel_order == "bgr" else frame
    return preprocess.to_array(Image.fromarray(np.ascontiguousarray(rgb)))
