"""Export building blocks: ONNX metadata, the float export, parity, the uint8-input variant, options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgexfer.errors import ArtifactError, ConfigError, ParityError
from edgexfer.onnxmeta import OnnxMeta, parse_props, read_metadata, set_metadata
from edgexfer.preprocess import Preprocess
from edgexfer.onnxedit import with_uint8_input as uint8_variant
from edgexfer.stages.export import ExportConfig, export_float, parity

SPEC = Preprocess(size=32, resize_size=36, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), augment="none")


class _Meta:
    arch = "resnet18"
    class_names = ["red", "green", "blue"]
    preprocess = SPEC


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """resnet18 (3 classes, random init, BN statistics made non-trivial) exported at 32x32."""
    import torch

    from edgexfer.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet18", 3).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("export") / "model.onnx"
    proto = export_float(model, _Meta, path, 17)
    return model, path, proto


def test_metadata_roundtrip_keeps_foreign_props(tmp_path):
    import onnx

    model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    other = model.metadata_props.add()
    other.key, other.value = "author", "someone"
    meta = OnnxMeta(
        arch="mobilenet_v3_small",
        class_names=["a", "b"],
        preprocess=SPEC,
        input_format="uint8_nhwc",
        precision="int8",
        target="tensorrt",
    )
    set_metadata(model, meta)
    set_metadata(model, meta)  # idempotent: no duplicated keys
    onnx.save(model, str(tmp_path / "m.onnx"))
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert len(props) == 7 and props["author"] == "someone"
    assert json.loads(props["edgexfer.class_names"]) == ["a", "b"]
    back = read_metadata(tmp_path / "m.onnx")
    assert back == meta and back.preprocess.mean == SPEC.mean and back.target == "tensorrt"


def test_metadata_errors_are_one_line():
    with pytest.raises(ArtifactError, match="no edgexfer metadata"):
        parse_props({"edgexfer.arch": "x"}, "m.onnx")
    with pytest.raises(ArtifactError, match="malformed"):
        parse_props({"edgexfer.arch": "x", "edgexfer.class_names": "[oops", "edgexfer.preprocess": "{}"})
    with pytest.raises(ConfigError, match="unknown precision"):
        OnnxMeta(arch="x", class_names=["a"], preprocess=SPEC, precision="fp8")
    with pytest.raises(ArtifactError, match="does not exist"):
        read_metadata("/nonexistent/model.onnx")


def test_float_export_contract(exported):
    import onnxruntime as ort
    import torch

    model, path, proto = exported
    assert [i.name for i in proto.graph.input] == ["input"] and [o.name for o in proto.graph.output] == [
        "logits"
    ]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, 32, 32]
    assert next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == 17
    ops = {n.op_type for n in proto.graph.node}
    assert "BatchNormalization" not in ops and "Conv" in ops  # BN folded into the convolutions
    meta = read_metadata(path)
    assert meta.arch == "resnet18" and meta.class_names == ["red", "green", "blue"]
    assert meta.preprocess == SPEC and meta.input_format == "float_nchw" and meta.precision == "fp32"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):  # dynamic batch
        x = np.random.default_rng(batch).normal(size=(batch, 3, 32, 32)).astype(np.float32)
        with torch.no_grad():
            reference = model(torch.from_numpy(x)).numpy()
        out = session.run(None, {"input": x})[0]
        assert out.shape == (batch, 3) and np.max(np.abs(out - reference)) < 1e-4


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_uint8_variant_matches_float_on_pixels(exported, layout):
    import onnxruntime as ort
    from PIL import Image

    _, path, proto = exported
    variant = uint8_variant(proto, SPEC, layout)
    prefix = ["Transpose"] if layout == "NHWC" else []
    assert [n.op_type for n in variant.graph.node[: len(prefix) + 3]] == prefix + ["Cast", "Mul", "Add"]
    assert len(variant.graph.node) == len(proto.graph.node) + len(prefix) + 3
    info = variant.graph.input[0]
    assert info.name == "input" and info.type.tensor_type.elem_type == 2  # uint8
    rng = np.random.default_rng(3)
    images = [Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)) for _ in range(4)]
    floats = np.stack([SPEC.to_array(im) for im in images])
    pixels = np.stack([SPEC.to_uint8(im, layout) for im in images])
    float_out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"input": floats}
    )[0]
    u8_out = ort.InferenceSession(variant.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"input": pixels}
    )[0]
    assert np.max(np.abs(float_out - u8_out)) < 1e-4


def test_uint8_variant_stays_quantizable(exported, tmp_path):
    """quantize_static calibrates the folded normalisation like any activation; the INT8 model still agrees."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from edgexfer.calibration import make_reader

    proto = exported[2]
    src = tmp_path / "u8.onnx"
    onnx.save(uint8_variant(proto, SPEC, "NHWC"), str(src))
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 32, 3), dtype=np.uint8)
    quantize_static(
        str(src),
        str(tmp_path / "u8_int8.onnx"),
        make_reader(pixels, 8),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    q = onnx.load(str(tmp_path / "u8_int8.onnx"))
    assert sum(n.op_type == "QuantizeLinear" for n in q.graph.node) > 10
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"input": pixels})[0]
    out = ort.InferenceSession(str(tmp_path / "u8_int8.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"input": pixels}
    )[0]
    cosine = np.sum(ref * out, 1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(out, axis=1)
    assert cosine.min() > 0.98


def test_parity_gate():
    ref = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.9]], np.float32)
    ok = parity(ref, ref + 1e-5, atol=1e-3, rtol=0.0, what="x")
    assert ok["top1_agreement"] == 1.0 and ok["max_abs_diff"] == pytest.approx(1e-5, rel=1e-2)
    with pytest.raises(ParityError, match="max abs logit difference"):
        parity(ref, ref + np.array([[0, 0, 0], [0, 0, 0.5]], np.float32), atol=1e-3, rtol=0.0, what="x")
    flipped = ref.copy()
    flipped[0] = [1.0, 3.0, 0.0]
    with pytest.raises(ParityError, match="top-1 agreement 0.5000"):
        parity(ref, flipped, atol=1e-3, rtol=1e-3, what="x")
    with pytest.raises(ParityError):
        parity(ref, np.full_like(ref, np.nan), atol=1e-3, rtol=0.0, what="x")


def test_export_config_validation(tmp_path):
    assert ExportConfig(run_dir=tmp_path, int8=True).targets == ("cpu", "tensorrt")
    assert ExportConfig(run_dir=tmp_path, calib_method="auto").methods == ("minmax", "entropy", "percentile")
    assert ExportConfig(run_dir=tmp_path, uint8_layout="nchw").uint8_layout == "NCHW"
    with pytest.raises(ConfigError, match="TensorRT 8.5/8.6"):
        ExportConfig(run_dir=tmp_path, int8=True, target="tensorrt", opset=18)
    assert ExportConfig(run_dir=tmp_path, int8=True, target="cpu", opset=18).opset == 18
    for bad in (
        {"opset": 11},
        {"target": "gpu"},
        {"calib_method": "kl"},
        {"calib_size": 0},
        {"max_drop": -1.0},
        {"uint8_layout": "HWC"},
    ):
        with pytest.raises(ConfigError):
            ExportConfig(run_dir=Path(tmp_path), **bad)
