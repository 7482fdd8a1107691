"""prepare_for_quantization: ONNX Runtime's pre-processing leaves nothing in the working directory and its
bare ``Exception`` becomes one ModelError line (seen on torchvision's Swin: "Incomplete symbolic shape
inference", with ``sym_shape_infer_temp.onnx`` and a ``<uuid>.data`` left in the current directory)."""

from __future__ import annotations

import os

import onnx
import pytest
from onnx import TensorProto, helper

from edgexfer.errors import ModelError
from edgexfer.quant import ort_quantize


def _tiny_model(path):
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_real_pre_processing_writes_the_prepared_model(tmp_path, monkeypatch):
    _tiny_model(tmp_path / "m.onnx")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    out = ort_quantize.prepare_for_quantization(tmp_path / "m.onnx", tmp_path / "prepared.onnx")
    assert onnx.load(str(out)).graph.node[0].op_type == "Relu"
    assert os.getcwd() == str(cwd) and list(cwd.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "m.onnx", "prepared.onnx"]


def test_a_failing_shape_inference_is_one_line_and_leaves_no_scratch(tmp_path, monkeypatch):
    import onnxruntime.quantization.shape_inference as shape_inference

    def failing(source, target, **_):  # what onnxruntime does on Swin: scratch in the cwd, then a bare Exception
        open("sym_shape_infer_temp.onnx", "wb").write(b"x" * 10)
        raise Exception("Incomplete symbolic shape inference")

    monkeypatch.setattr(shape_inference, "quant_pre_process", failing)
    _tiny_model(tmp_path / "m.onnx")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    with pytest.raises(ModelError) as info:
        ort_quantize.prepare_for_quantization(tmp_path / "m.onnx", tmp_path / "prepared.onnx")
    message = str(info.value)
    assert "\n" not in message and "Incomplete symbolic shape inference" in message and "m.onnx" in message
    assert "without --int8" in message
    assert os.getcwd() == str(cwd) and list(cwd.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "m.onnx"]  # the scratch folder went with it
