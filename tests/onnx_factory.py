"""Small real ONNX models for backend tests, made the way the export stage makes them.

The names follow docs/contracts.md: input ``input`` (NCHW float, dynamic batch ``batch``), output
``logits``, edgexfer metadata props. INT8 models come from onnxruntime's quantize_static with real
calibration images, U8 activations / S8 per-channel weights (the CPU recipe).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

CLASSES = ["red", "green", "blue"]


def tiny_net(num_classes: int = 3, seed: int = 0):
    """A small conv net (Conv-BN-ReLU x2, residual-free, pool, Linear) with fixed random weights."""
    import torch
    import torch.nn as nn

    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, num_classes),
    )
    with torch.no_grad():  # non-trivial BN statistics so folding is exercised
        for module in net:
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return net.eval()


def metadata(
    class_names: List[str],
    size: int,
    precision: str = "fp32",
    target: Optional[str] = None,
    input_format: str = "float_nchw",
    arch: str = "tiny",
) -> Dict[str, str]:
    """edgexfer metadata props for a test model."""
    from edgexfer.preprocess import Preprocess

    props = {
        "edgexfer.arch": arch,
        "edgexfer.class_names": json.dumps(class_names),
        "edgexfer.preprocess": json.dumps(Preprocess(size=size, resize_size=size, augment="none").to_dict()),
        "edgexfer.input_format": input_format,
        "edgexfer.precision": precision,
    }
    if target:
        props["edgexfer.target"] = target
    return props


def set_metadata(path: Path, props: Dict[str, str]) -> None:
    """Write metadata props into an ONNX file in place."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))


def export_float(
    model, path: Path, size: int = 32, class_names: List[str] = CLASSES, arch: str = "tiny"
) -> Path:
    """torch.onnx.export (legacy exporter, opset 17, dynamic batch) plus edgexfer metadata."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(2, 3, size, size)
    torch.onnx.export(
        model,
        dummy,
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    set_metadata(path, metadata(class_names, size, arch=arch))
    return path


def calibration_batches(size: int = 32, count: int = 16, seed: int = 1) -> List[np.ndarray]:
    """Normalised float images like the conftest ones: coloured squares on noise."""
    from edgexfer.preprocess import Preprocess

    rng = np.random.default_rng(seed)
    spec = Preprocess(size=size, resize_size=size, augment="none")
    from PIL import Image

    batches = []
    colours = [(200, 40, 40), (40, 190, 60), (40, 60, 200)]
    for i in range(count):
        pixels = rng.integers(0, 90, size=(size, size, 3), dtype=np.uint8)
        lo, hi = size // 4, 3 * size // 4
        pixels[lo:hi, lo:hi] = colours[i % 3]
        batches.append(spec.to_array(Image.fromarray(pixels))[None])
    return batches


def quantize_cpu(float_path: Path, out_path: Path, size: int = 32, symmetric: bool = False) -> Path:
    """INT8 QDQ via onnxruntime.quantization: U8 activations / S8 per-channel weights (CPU recipe), or
    with ``symmetric`` S8/S8 symmetric (the TensorRT recipe)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"input": b} for b in calibration_batches(size)])

        def get_next(self):
            return next(self.items, None)

    extra = (
        {
            "ActivationSymmetric": True,
            "WeightSymmetric": True,
            "QuantizeBias": False,
            "DedicatedQDQPair": True,
            "AddQDQPairToWeight": True,
        }
        if symmetric
        else {}
    )
    quantize_static(
        str(float_path),
        str(out_path),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        extra_options=extra,
        op_types_to_quantize=["Conv", "Gemm", "MatMul"] if symmetric else None,
    )
    import onnx

    props = {p.key: p.value for p in onnx.load(str(float_path)).metadata_props}
    props["edgexfer.precision"] = "int8"
    props["edgexfer.target"] = "tensorrt" if symmetric else "cpu"
    set_metadata(out_path, props)
    return out_path


def exported_run(
    run_dir: Path,
    int8: bool = True,
    tensorrt_int8: bool = False,
    size: int = 32,
    seed: int = 0,
) -> Path:
    """A run directory with a random-init resnet18 checkpoint, exported by the real export stage.

    ``run_export`` writes and records ``onnx`` and, as asked, ``onnx_int8_cpu`` / ``onnx_int8_tensorrt``
    (minmax calibration on a small generated image folder, which also serves as the parity data). There
    is deliberately no other way: a broken export stage must fail the tests that build on it.
    """
    from conftest import make_image_folder, make_run_dir
    from edgexfer.stages.export import ExportConfig, run_export

    make_run_dir(run_dir, size=size, seed=seed)
    targets = [t for t, wanted in (("cpu", int8), ("tensorrt", tensorrt_int8)) if wanted]
    images = make_image_folder(run_dir / "_export_images", per_class=6, size=40, seed=5)
    run_export(
        ExportConfig(
            run_dir=run_dir,
            progress=False,
            eval_data=images,
            eval_size=18,
            parity_images=8,
            calib=images,
            calib_size=18,
            calib_method="minmax",
            int8=bool(targets),
            target=targets[0] if len(targets) == 1 else "all",
        )
    )
    return run_dir


def colour_model(path: Path, size: int = 32, class_names: List[str] = CLASSES, gain: float = 4.0) -> Path:
    """A float ONNX classifier made without torch (onnx.helper): GlobalAveragePool -> Flatten -> Gemm
    with ``gain`` x identity weights, so the logit of class i is the mean of normalised channel i and
    a red / green / blue square (conftest images) is classified red / green / blue. Same names, dynamic
    batch and edgexfer metadata as the export stage's models (docs/contracts.md)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array((gain * np.eye(3, dtype=np.float32))[: len(class_names)], "weight")
    bias = numpy_helper.from_array(np.zeros(len(class_names), dtype=np.float32), "bias")
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "weight", "bias"], ["logits"], transB=1),
        ],
        "colour",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(class_names)])],
        initializer=[weights, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime edgexfer supports (>= 1.16)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    set_metadata(path, metadata(class_names, size, arch="colour"))
    return path
