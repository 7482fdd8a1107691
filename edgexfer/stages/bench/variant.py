"""The uint8-pixel-input variant of an INT8 QDQ model, for timing INT8 with preprocessing folded in.

The export stage writes a uint8 variant of the float model only; the bench makes ``<source>_uint8`` of an
INT8 export with :func:`edgexfer.onnxedit.with_uint8_input`, checks it against ``source`` on real
calibration images with :mod:`edgexfer.compare`, and records it (stage ``bench``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from edgexfer.compare import Tolerance

# Folding (x/255 - mean)/std into Mul+Add in front of the input's QuantizeLinear computes the same
# quantized input up to float rounding; measured on 32 calibration images for the three bench models:
# identical logits (max abs difference 0). The bounds leave room for a rounding step at a tie.
VARIANT_TOLERANCE = Tolerance(min_cosine=0.999, min_agreement=0.9)
VARIANT_CHECK_IMAGES = 16


def uint8_int8_variant(run_dir: Path, source: str, calibration: Path) -> str:
    """``<source>_uint8`` (NHWC uint8 input) made, checked on ``calibration`` images and recorded, unless
    it is recorded and fresh already; returns its manifest name."""
    import onnx

    from edgexfer.fsutil import atomic_path
    from edgexfer.manifest import Manifest
    from edgexfer.onnxedit import with_uint8_input
    from edgexfer.onnxmeta import read_metadata

    name = f"{source}_uint8"
    manifest = Manifest.open(run_dir)
    if manifest.has(name) and manifest.is_fresh(name):
        return name
    source_path = manifest.path_of(source)
    preprocess = read_metadata(source_path).preprocess
    model = onnx.load(os.fspath(source_path))
    model = with_uint8_input(model, preprocess, "NHWC")
    _set_input_format(model, "uint8_nhwc")
    pixels = _calibration_pixels(calibration, preprocess)
    path = run_dir / "export" / f"{Path(source_path).stem}_uint8_nhwc.onnx"
    with atomic_path(path) as tmp:
        onnx.save(model, os.fspath(tmp))
        comparison = _check(source_path, tmp, pixels, preprocess, source)
    with Manifest.update(run_dir) as fresh:
        fresh.add_artifact(
            name,
            path,
            kind="onnx-qdq",
            stage="bench",
            inputs=[source],
            config={"layout": "NHWC", "made_by": "edgexfer.onnxedit.with_uint8_input"},
            metrics={"vs_float_input": comparison.to_dict()},
        )
    return name


def _calibration_pixels(calibration: Path, preprocess: Any) -> np.ndarray:
    """uint8 NCHW pixels of up to VARIANT_CHECK_IMAGES real images spread over the calibration folder."""
    from edgexfer.quant.calibration import image_files

    files = image_files(calibration)
    indices = np.unique(np.linspace(0, len(files) - 1, min(VARIANT_CHECK_IMAGES, len(files))).round().astype(int))
    return np.stack([preprocess.to_uint8(preprocess.open(files[int(i)]), "NCHW") for i in indices])


def _check(source_path: Path, variant_path: Path, pixels: np.ndarray, preprocess: Any, source: str) -> Any:
    """Compare the variant on uint8 pixels with the source model on the same pixels normalised."""
    from edgexfer.backends.onnxruntime import session_logits
    from edgexfer.compare import check

    want = session_logits(source_path, preprocess.normalize(pixels, "NCHW"), 8)
    got = session_logits(variant_path, np.ascontiguousarray(pixels.transpose(0, 2, 3, 1)), 8)
    return check(want, got, VARIANT_TOLERANCE, f"the uint8-input variant of '{source}'")


def _set_input_format(model: Any, input_format: str) -> None:
    """Record the new input format in the model's edgexfer metadata (other entries kept)."""
    entry = {p.key: p.value for p in model.metadata_props}
    entry["edgexfer.input_format"] = input_format
    del model.metadata_props[:]
    for key, value in entry.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value

