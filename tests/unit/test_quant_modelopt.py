"""ModelOpt's ONNX PTQ as a TensorRT candidate: runs on the CPU and passes edgexfer's TensorRT rules.

Skipped where nvidia-modelopt[onnx] is not installed (``pip install 'edgexfer[modelopt]'``)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from edgexfer.quant.candidates import QuantizeRequest, get_quantizer
from edgexfer.quant.modelopt_quantizer import ModelOptQuantizer

pytest.importorskip("torch")


def test_modelopt_availability_names_what_is_missing():
    import importlib.util

    ok, reason = ModelOptQuantizer().availability()
    if importlib.util.find_spec("modelopt") is None:
        assert (ok, reason) == (False, "nvidia-modelopt is not installed")
    else:
        assert ok == (importlib.util.find_spec("onnx_graphsurgeon") is not None), reason


def test_modelopt_candidate_follows_the_tensorrt_rules(tmp_path):
    pytest.importorskip("modelopt.onnx.quantization", reason="nvidia-modelopt[onnx] is not installed")
    import onnx_factory
    from edgexfer.backends.onnxruntime import session_logits
    from edgexfer.quant.ort_quantize import prepare_for_quantization
    from edgexfer.quant.recipes import recipe_for
    from edgexfer.quant.rules import check_rules

    float_path = onnx_factory.export_float(onnx_factory.tiny_net(), tmp_path / "float.onnx")
    prepared = prepare_for_quantization(float_path, tmp_path / "prepared.onnx")
    calib = np.concatenate(onnx_factory.calibration_batches(size=32, count=16))
    request = QuantizeRequest(float_path=float_path, prepared=prepared, work_dir=tmp_path,
                              calib=SimpleNamespace(arrays=calib), eval_inputs=calib, eval_labels=np.zeros(16, int),
                              float_logits=np.zeros((16, 3), np.float32))
    candidate = get_quantizer("modelopt").quantize("tensorrt", request)
    rules = recipe_for("tensorrt").rules
    assert check_rules(candidate.model, rules, candidate.excluded) == []
    assert candidate.details["opset"] <= rules.max_opset and candidate.details["qdq"]["quantized_weighted_ops"] >= 2
    float_logits, int8_logits = session_logits(float_path, calib), session_logits(candidate.model, calib)
    assert np.mean(float_logits.argmax(1) == int8_logits.argmax(1)) >= 0.8
