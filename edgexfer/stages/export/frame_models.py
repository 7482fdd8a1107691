"""Raw-frame models (``export --uint8-input --frame HxW``): the float model and each INT8 model with the
camera frame's preprocessing in front (:func:`edgexfer.onnxedit.with_frame_input`), checked against the
host preprocessing before they are kept, and recorded with the frame in metadata and manifest.

Parity: each held-out parity image is made into a frame of the model's size (:func:`fit_to_frame`), in
the chosen channel order. The host path is Pillow's resize + centre crop of that frame and the one
normalisation (:meth:`Preprocess.to_array`), fed to the source model; the frame model gets the raw frame.
Compared: the normalised pixels (the graph's ``normalized`` tensor vs the host's), and the logits.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

from edgexfer.backends.onnxruntime import session_logits
from edgexfer.compare import Tolerance, compare_logits
from edgexfer.errors import ParityError
from edgexfer.fsutil import atomic_path
from edgexfer.manifest import Manifest
from edgexfer.onnxmeta import OnnxMeta, read_metadata, set_metadata
from edgexfer.stages.export.config import STAGE, ExportConfig

# Measured (tests/integration/test_frames.py, benchmarks/raw_frames.py): with bilinear or bicubic the
# graph's pixels are within 1 grey level of Pillow's on downscales (2-8 on bicubic upscales, where Pillow
# clips its first pass), logits' cosine >= 0.9999. A broken graph is far outside: wrong channel order,
# no crop or another mean moves pixels by tens of grey levels. The bound is in grey levels, divided by
# 255 * std into normalised units.
MAX_GREY_LEVELS = 3.0
LOGIT_TOLERANCE = {
    "fp32": Tolerance(min_mean_cosine=0.999, min_agreement=0.9),
    "int8": Tolerance(min_mean_cosine=0.99, min_agreement=0.85),  # input rounding moves INT8 more
}


def frame_model(config: ExportConfig, meta: Any, eval_slice: Any, float_path: Path
                ) -> Tuple[str, Path, Dict[str, Any]]:
    """Write ``model_frame_<H>x<W>_<format>.onnx`` (``onnx_frame``) after checking it against the host."""
    spec = config.frame_spec
    path = config.run_dir / "export" / f"model_frame_{spec.text}_{spec.channel_order}.onnx"
    metrics = _write_frame_variant(config, meta, float_path, path, "fp32", eval_slice.images)
    with Manifest.update(config.run_dir) as manifest:
        manifest.add_artifact("onnx_frame", path, kind="onnx", stage=STAGE, inputs=["checkpoint", "onnx"],
                              config=_recipe(config), metrics=metrics)
    return "onnx_frame", path, metrics


def int8_frame_models(config: ExportConfig, meta: Any, eval_slice: Any, int8_paths: Dict[str, Path]
                      ) -> Dict[str, Tuple[Path, Dict[str, Any]]]:
    """``<name>_frame`` of every INT8 model just written, each checked against its INT8 source."""
    spec = config.frame_spec
    written = {}
    for name, source_path in int8_paths.items():
        path = source_path.with_name(f"{source_path.stem}_frame_{spec.text}_{spec.channel_order}.onnx")
        metrics = _write_frame_variant(config, meta, source_path, path, "int8", eval_slice.images)
        with Manifest.update(config.run_dir) as manifest:
            manifest.add_artifact(f"{name}_frame", path, kind="onnx-qdq", stage=STAGE, inputs=["checkpoint", name],
                                  config=dict(_recipe(config), source=name), metrics=metrics)
        written[f"{name}_frame"] = (path, metrics)
    return written


def _recipe(config: ExportConfig) -> Dict[str, Any]:
    return {"frame": config.frame, "frame_format": config.frame_format, "opset": config.opset,
            "made_by": "edgexfer.onnxedit.with_frame_input"}


def _write_frame_variant(config: ExportConfig, meta: Any, source_path: Path, path: Path, precision: str,
                         images: List[Any]) -> Dict[str, Any]:
    import onnx

    from edgexfer.onnxedit import with_frame_input

    spec = config.frame_spec
    source_meta = read_metadata(source_path)
    model = with_frame_input(onnx.load(os.fspath(source_path)), meta.preprocess, spec)
    set_metadata(model, OnnxMeta(arch=meta.arch, class_names=list(meta.class_names), preprocess=meta.preprocess,
                                 input_format=spec.input_format, precision=source_meta.precision,
                                 target=source_meta.target, extra={"frame": spec.text}))
    with atomic_path(path) as tmp:
        onnx.save(model, os.fspath(tmp))
        metrics = frame_parity(source_path, tmp, meta.preprocess, spec, images, config.batch_size,
                               LOGIT_TOLERANCE[precision], f"the {spec.text} {spec.channel_order} frame model")
    metrics.update(input_format=spec.input_format, frame=spec.to_dict())
    return metrics


def frame_parity(source_path: Path, frame_path: Path, preprocess: Any, spec: Any, images: List[Any],
                 batch_size: int, tolerance: Tolerance, what: str) -> Dict[str, Any]:
    """Host preprocessing + source model vs frame model on ``images`` made into frames; the report's
    metrics; :class:`ParityError` when the pixels or the logits are out of bounds."""
    from edgexfer.framegraph import host_reference
    from edgexfer.frames import image_to_frame

    frames = np.stack([image_to_frame(image, spec) for image in images])
    host = np.stack([host_reference(frame, preprocess, spec.channel_order) for frame in frames])
    graph_pixels = graph_normalized(frame_path, frames, batch_size)
    pixel_diff = float(np.abs(graph_pixels - host).max())
    bound = MAX_GREY_LEVELS / (255.0 * min(preprocess.std))
    reference = session_logits(source_path, host, batch_size)
    comparison = compare_logits(reference, session_logits(frame_path, frames, batch_size))
    failed = tolerance.failures(comparison)
    if pixel_diff > bound:
        failed.insert(0, f"normalised pixels differ by up to {pixel_diff:.3f} "
                         f"({pixel_diff * 255 * min(preprocess.std):.1f} grey levels; bound {MAX_GREY_LEVELS:g})")
    if failed:
        raise ParityError(f"{what} differs from the host preprocessing on {len(frames)} images: "
                          f"{'; '.join(failed)}; the exported model is not kept")
    return {
        "images": len(frames),
        "max_abs_pixel_diff": round(pixel_diff, 6),
        "max_grey_levels": round(pixel_diff * 255 * min(preprocess.std), 2),
        "pixel_bound": round(bound, 6),
        "mean_cosine": comparison.mean_cosine,
        "min_cosine": comparison.min_cosine,
        "top1_agreement": comparison.top1_agreement,
        "max_abs_diff": comparison.max_abs_diff,
        "reference": "host preprocessing (Pillow resize + crop of the frame, Preprocess.normalize) + "
                     + Path(source_path).name,
    }


def graph_normalized(frame_path: Path, frames: np.ndarray, batch_size: int) -> np.ndarray:
    """The frame model's own preprocessed input (its ``normalized`` tensor, exposed as an output)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(os.fspath(frame_path))
    tensor = next(n.output[0] for n in model.graph.node if n.output[0].endswith("normalized"))
    model.graph.output.insert(0, onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep the tensor
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run([tensor], {name: frames[i:i + batch_size]})[0]
                           for i in range(0, len(frames), batch_size)])
