"""Helpers every runner shares: checking a batch against the model's input, reading ONNX input facts."""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import numpy as np

from edgexfer.errors import DataError

# ONNX / ONNX Runtime element type strings -> numpy dtypes runners accept.
ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(uint8)": np.uint8,
    "tensor(float16)": np.float16,
    "tensor(int8)": np.int8,
}


def layout_of_shape(shape: Sequence[Any]) -> str:
    """'NHWC' when the last axis is the 3 colour channels and the second is not, else 'NCHW'."""
    if len(shape) == 4 and shape[3] == 3 and shape[1] != 3:
        return "NHWC"
    return "NCHW"


def static_dim(value: Any) -> Optional[int]:
    """An int dimension, or None for a symbolic/unknown one ('batch', -1, None, 0)."""
    return int(value) if isinstance(value, (int, np.integer)) and int(value) > 0 else None


def check_batch(
    batch: Any, dtype: Any, layout: str, spatial: Tuple[Optional[int], Optional[int]], who: str
) -> np.ndarray:
    """Return ``batch`` as a C-contiguous array of ``dtype`` or raise one clear DataError.

    Floats are accepted for a float model (cast to float32: lossless for what preprocessing makes);
    a uint8 model accepts only uint8 pixels, because casting normalised floats to bytes would
    silently feed it garbage.
    """
    array = np.asarray(batch)
    want = np.dtype(dtype)
    if array.ndim == 3:
        raise DataError(
            f"{who} needs a batch of 4 dims ({_describe(layout)}), got one image of shape "
            f"{tuple(array.shape)}; add a batch axis (x[None])"
        )
    if array.ndim != 4:
        raise DataError(f"{who} needs a 4-dim batch ({_describe(layout)}), got shape {tuple(array.shape)}")
    channels = array.shape[1] if layout == "NCHW" else array.shape[3]
    if channels != 3:
        raise DataError(f"{who} takes {_describe(layout)} with 3 channels, got shape {tuple(array.shape)}")
    hw = array.shape[2:4] if layout == "NCHW" else array.shape[1:3]
    for got, expected, axis in zip(hw, spatial, ("height", "width")):
        if expected is not None and got != expected:
            raise DataError(
                f"{who} takes {axis} {expected}, got {got} (shape {tuple(array.shape)}); "
                "preprocess with the model's Preprocess spec"
            )
    if want == np.uint8:
        if array.dtype != np.uint8:
            raise DataError(
                f"{who} takes uint8 pixels ({_describe(layout)}), got {array.dtype}; pass "
                "Preprocess.to_uint8 output, not normalised floats"
            )
    elif want.kind == "f":
        if array.dtype.kind != "f":
            raise DataError(
                f"{who} takes normalised float32 {_describe(layout)}, got {array.dtype}; pass "
                "Preprocess.to_array output"
            )
    return np.ascontiguousarray(array, dtype=want)


def _describe(layout: str) -> str:
    return "N,3,H,W" if layout == "NCHW" else "N,H,W,3"


def as_logits(output: Any, batch_size: int, who: str) -> np.ndarray:
    """A runtime's output as float32 (batch, classes); anything else is a broken artifact."""
    logits = np.asarray(output, dtype=np.float32)
    if logits.ndim > 2:
        logits = logits.reshape(logits.shape[0], -1)
    if logits.ndim != 2 or logits.shape[0] != batch_size:
        raise DataError(
            f"{who} returned shape {tuple(logits.shape)} for a batch of {batch_size}; "
            "expected (batch, classes) logits"
        )
    return logits
