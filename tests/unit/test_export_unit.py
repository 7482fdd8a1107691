"""Export building blocks: ONNX metadata, the float export, parity, the uint8-input variant, options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgexfer.compare import Tolerance
from edgexfer.errors import ArtifactError, ConfigError, ParityError
from edgexfer.onnxedit import with_uint8_input
from edgexfer.onnxmeta import OnnxMeta, parse_props, read_metadata, set_metadata
from edgexfer.preprocess import Preprocess
from edgexfer.stages.export.config import ExportConfig
from edgexfer.stages.export.onnx_models import export_float, parity

SPEC = Preprocess(size=32, resize_size=36, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), augment="none")
REAL_IMAGES = Path(__file__).resolve().parents[2] / "calibration" / "fashion-mnist"


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


def _pixels_and_floats(layout):
    """Decoded photos (the repository's Fashion-MNIST calibration set, grey) plus two random colour images,
    as uint8 pixels in ``layout`` and as the float inputs the float model takes."""
    from PIL import Image

    files = sorted(REAL_IMAGES.rglob("*.png"))[::97][:5]
    assert len(files) == 5, "the repository's calibration images are missing"
    images = [Image.open(f).convert("RGB") for f in files]
    rng = np.random.default_rng(3)
    images += [Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)) for _ in range(2)]
    return np.stack([SPEC.to_uint8(im, layout) for im in images]), np.stack([SPEC.to_array(im) for im in images])


def _logits(model, x):
    import onnxruntime as ort

    source = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_uint8_variant_matches_float_on_pixels(exported, layout):
    _, path, proto = exported
    variant = with_uint8_input(proto, SPEC, layout)
    info = variant.graph.input[0]
    assert info.name == "input" and info.type.tensor_type.elem_type == 2  # uint8
    dims = [d.dim_param or d.dim_value for d in info.type.tensor_type.shape.dim]
    assert dims == (["batch", 32, 32, 3] if layout == "NHWC" else ["batch", 3, 32, 32])
    # TensorRT: only a Cast may touch the uint8 input (no Transpose on uint8; 8.5 casts only inputs)
    consumers = [n for n in variant.graph.node if "input" in n.input]
    assert [n.op_type for n in consumers] == ["Cast"] and variant.graph.node[0] is consumers[0]
    added = ["Cast"] + (["Transpose"] if layout == "NHWC" else []) + ["Mul", "Add"]
    assert [n.op_type for n in variant.graph.node[: len(added)]] == added
    assert len(variant.graph.node) == len(proto.graph.node) + len(added)
    assert {(p.key, p.value) for p in variant.metadata_props} == {(p.key, p.value) for p in proto.metadata_props}
    pixels, floats = _pixels_and_floats(layout)
    np.testing.assert_allclose(_logits(variant, pixels), _logits(path, floats), atol=1e-4, rtol=0)


def test_uint8_variant_of_a_model_that_uses_its_names(exported, tmp_path):
    """A QDQ model already has ``input_scale`` (its input's quantization scale); more names that an
    implementation might pick for the added nodes are taken here too. The variant still computes the
    source model's function."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from edgexfer.quant.calibration import make_reader

    _, path, proto = exported
    _, floats = _pixels_and_floats("NCHW")
    quantize_static(
        str(path),
        str(tmp_path / "int8.onnx"),
        make_reader(floats, 4),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    qdq = onnx.load(str(tmp_path / "int8.onnx"))
    names = {i.name for i in qdq.graph.initializer}
    assert "input_scale" in names
    taken = ["input_shift", "input_float", "input_nchw", "input_scaled", "input_normalized", "uint8_input/scale"]
    renames = dict(zip([n.output[0] for n in qdq.graph.node if n.op_type in ("Conv", "Relu")], taken))
    for node in qdq.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for info in qdq.graph.value_info:
        info.name = renames.get(info.name, info.name)
    onnx.checker.check_model(qdq)
    for layout in ("NCHW", "NHWC"):
        variant = with_uint8_input(qdq, SPEC, layout)
        pixels, floats = _pixels_and_floats(layout)
        np.testing.assert_allclose(_logits(variant, pixels), _logits(qdq, floats), atol=1e-4, rtol=0)


def test_uint8_variant_stays_quantizable(exported, tmp_path):
    """quantize_static calibrates the folded normalisation like any activation; the INT8 model still agrees."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from edgexfer.quant.calibration import make_reader

    proto = exported[2]
    src = tmp_path / "u8.onnx"
    onnx.save(with_uint8_input(proto, SPEC, "NHWC"), str(src))
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
    ok = parity(ref, ref + 1e-5, Tolerance(atol=1e-3), what="x")
    assert ok["top1_agreement"] == 1.0 and ok["max_abs_diff"] == pytest.approx(1e-5, rel=1e-2)
    assert ok["tolerance"] == pytest.approx(1e-3) and ok["images"] == 2
    # the bound is atol + rtol * max|reference| = 1e-3 + 0.1 * 3
    assert parity(ref, ref + 0.3, Tolerance(atol=1e-3, rtol=0.1), "x")["tolerance"] == pytest.approx(0.301)
    with pytest.raises(ParityError, match="max abs logit difference 0.5 > 0.001.*not kept"):
        parity(ref, ref + np.array([[0, 0, 0], [0, 0, 0.5]], np.float32), Tolerance(atol=1e-3), what="x")
    flipped = ref.copy()
    flipped[0] = [1.0, 3.0, 0.0]
    with pytest.raises(ParityError, match=r"top-1 agreement 50.0%"):
        parity(ref, flipped, Tolerance(atol=1e-3, rtol=1e-3), what="x")
    with pytest.raises(ParityError, match="NaN"):
        parity(ref, np.full_like(ref, np.nan), Tolerance(atol=1e-3), what="x")


def test_export_config_validation(tmp_path):
    assert ExportConfig(run_dir=tmp_path, int8=True).targets == ("cpu", "tensorrt", "openvino")
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
        {"parity_atol": -1.0},
        {"parity_rtol": float("nan")},
        {"max_fallback": -1},
        {"quantizer": "bogus"},
    ):
        with pytest.raises(ConfigError):
            ExportConfig(run_dir=Path(tmp_path), **bad)


def test_every_export_option_maps_to_the_config(tmp_path):
    """config_from_params: every CLI option reaches an ExportConfig field (YAML keys = CLI options)."""
    import dataclasses

    import click

    from edgexfer.commands.export import config_from_params, export
    from edgexfer.quant.ranges import METHOD_CHOICES
    from edgexfer.stages.export.config import TARGET_CHOICES

    def params(*args):
        return export.make_context("export", [str(tmp_path), *args]).params

    fields = {f.name for f in dataclasses.fields(ExportConfig)}
    flags = {"no_shared_cache": "shared_cache", "no_progress": "progress"}
    assert set(params()) - set(flags) <= fields and set(flags.values()) <= fields
    assert fields - set(params()) - set(flags.values()) == set()  # and every field has an option
    assert config_from_params(params(), progress=True) == ExportConfig(run_dir=tmp_path)
    changed = {
        "opset": 13, "uint8_input": True, "uint8_layout": "NCHW", "int8": True, "target": "cpu",
        "calib": tmp_path / "c", "calib_size": 7, "calib_method": "entropy", "max_drop": 0.5,
        "max_fallback": 2, "eval_data": tmp_path / "e", "eval_size": 9, "auto_eval_size": 8,
        "parity_images": 3, "parity_atol": 0.1, "parity_rtol": 0.2, "seed": 5, "batch_size": 4,
        "cache_dir": tmp_path / "cache",
    }  # fmt: skip
    argv = []
    for name, value in changed.items():
        option = "--" + name.replace("_", "-")
        argv += [option] if value is True else [option, str(value).lower() if name == "uint8_layout" else str(value)]
    config = config_from_params(params(*argv, "--no-shared-cache"), progress=True)
    for name, value in changed.items():
        assert getattr(config, name) == value, name
    assert config.shared_cache is False and config.progress is True
    assert config_from_params(params("--no-progress"), progress=True).progress is False
    assert config_from_params(params(), progress=False).progress is False
    # the CLI's choices are the stage's
    choices = {p.name: list(p.type.choices) for p in export.params if isinstance(p.type, click.Choice)}
    assert choices["target"] == list(TARGET_CHOICES) and choices["calib_method"] == list(METHOD_CHOICES)
